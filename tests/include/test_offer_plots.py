"""The report plots carry a title and both axis labels, drawn where a reader looks for them."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from include.offers.plots import PAD, SIZE, line_plot_png, text_mask


def _decode(png: bytes) -> np.ndarray:
    """The (h, w, 3) pixels of a PNG written by encode_png (one IDAT, filter 0 on every row)."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    length = struct.unpack(">I", png[33:37])[0]
    assert png[37:41] == b"IDAT"
    raw = np.frombuffer(zlib.decompress(png[41 : 41 + length]), dtype=np.uint8).reshape(height, 1 + width * 3)
    assert not raw[:, 0].any()
    return raw[:, 1:].reshape(height, width, 3)


def _ink(pixels: np.ndarray) -> int:
    return int((pixels == 0).all(axis=-1).sum())


def test_title_and_axis_labels_are_drawn_in_their_bands():
    x = np.linspace(0, 1, 20)
    title, xlabel, ylabel = "ROC v3 (AUC 0.812)", "False positive rate", "True positive rate"
    pixels = _decode(line_plot_png(x, np.sqrt(x), title=title, xlabel=xlabel, ylabel=ylabel))
    assert pixels.shape == (SIZE, SIZE, 3)
    # every lit pixel of each text is on the canvas, in its band outside the axis box
    assert _ink(pixels[: PAD - 8]) == text_mask(title).sum()
    assert _ink(pixels[SIZE - 18 :, PAD + 8 : SIZE - PAD - 8]) == text_mask(xlabel).sum()
    assert _ink(pixels[PAD + 8 : SIZE - PAD - 8, : PAD - 8]) == text_mask(ylabel).sum()
    # another title draws other pixels: the text is not a fixed decoration
    other = _decode(line_plot_png(x, np.sqrt(x), title="Calibration v3", xlabel=xlabel, ylabel=ylabel))
    assert not np.array_equal(other[: PAD - 8], pixels[: PAD - 8])


def test_every_plot_needs_a_title_and_labels():
    with pytest.raises(TypeError):
        line_plot_png([0, 1], [0, 1])  # type: ignore[call-arg]


def test_unknown_characters_are_drawn_as_question_marks():
    assert np.array_equal(text_mask("é"), text_mask("?"))
    assert text_mask("a").shape == (14, 12) and np.array_equal(text_mask("a"), text_mask("A"))
