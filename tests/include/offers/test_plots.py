"""The report plots carry a title and both axis labels, drawn where a reader looks for them."""

from __future__ import annotations

import io

import numpy as np
import pytest

from include.offers.plots import DPI, SIZE_INCHES, line_plot_png

LABELS = {
    "title": "ROC v3 (AUC 0.812)",
    "xlabel": "False positive rate",
    "ylabel": "True positive rate",
}


def _pixels(**labels: str) -> np.ndarray:
    import matplotlib.image

    x = np.linspace(0, 1, 20)
    return matplotlib.image.imread(
        io.BytesIO(line_plot_png(x, np.sqrt(x), **{**LABELS, **labels})), format="png"
    )


def _changed(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows and columns where two renderings differ."""
    diff = (a != b).any(axis=-1)
    return np.flatnonzero(diff.any(axis=1)), np.flatnonzero(diff.any(axis=0))


def test_a_png_of_the_stated_size():
    assert _pixels().shape[:2] == (SIZE_INCHES * DPI, SIZE_INCHES * DPI)


def test_title_and_axis_labels_are_drawn_in_their_bands():
    base, size = _pixels(), SIZE_INCHES * DPI
    rows, _ = _changed(base, _pixels(title="Calibration v3"))
    assert rows.size and rows.max() < size * 0.15  # the title: the top band only
    rows, _ = _changed(base, _pixels(xlabel="Predicted probability"))
    assert rows.size and rows.min() > size * 0.85  # the x label: the bottom band only
    _, cols = _changed(base, _pixels(ylabel="Observed redemption rate"))
    assert cols.size and cols.max() < size * 0.15  # the y label: the left band only


def test_every_plot_needs_a_title_and_labels():
    with pytest.raises(TypeError):
        line_plot_png([0, 1], [0, 1])  # type: ignore[call-arg]
