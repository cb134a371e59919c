"""ROC and calibration curves as small PNG line plots, drawn with numpy and zlib.

A plot library would add a large dependency for two unit-square charts; these have an axis
box, a grey diagonal (chance for ROC, perfect calibration) and the curve in blue.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIZE = 320
PAD = 24
WHITE, BLACK, GREY, BLUE = (255, 255, 255), (0, 0, 0), (170, 170, 170), (31, 90, 200)


def _pixel(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    span = SIZE - 2 * PAD - 1
    cols = PAD + np.clip(np.asarray(x, dtype=float), 0, 1) * span
    rows = SIZE - 1 - PAD - np.clip(np.asarray(y, dtype=float), 0, 1) * span
    return rows.round().astype(int), cols.round().astype(int)


def _line(canvas: np.ndarray, x, y, color, width: int = 2) -> None:
    """A polyline through unit-square points, densified so no segment leaves gaps."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2:
        return
    steps = np.linspace(0, len(x) - 1, (len(x) - 1) * SIZE + 1)
    xs, ys = np.interp(steps, np.arange(len(x)), x), np.interp(steps, np.arange(len(y)), y)
    rows, cols = _pixel(xs, ys)
    for dr in range(width):
        for dc in range(width):
            canvas[np.clip(rows + dr, 0, SIZE - 1), np.clip(cols + dc, 0, SIZE - 1)] = color


def line_plot_png(x, y) -> bytes:
    """A PNG of the curve (x, y) in the unit square, with its box and diagonal."""
    canvas = np.full((SIZE, SIZE, 3), WHITE, dtype=np.uint8)
    _line(canvas, [0, 1], [0, 1], GREY, width=1)
    _line(canvas, [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], BLACK, width=1)
    _line(canvas, x, y, BLUE)
    return encode_png(canvas)


def encode_png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of an (h, w, 3) uint8 array."""
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def report_markdown(version: int, metrics: dict, decision: str) -> str:
    """The metrics table stored next to the plots."""
    rows = [
        ("ROC AUC", metrics["auc"]),
        ("log loss", metrics["log_loss"]),
        ("Brier score", metrics["brier"]),
        ("prediction std", metrics["prediction_std"]),
        ("validation rows", metrics["rows"]),
        ("positive rate", metrics["positive_rate"]),
        ("policy ROI (cents/impression)", metrics.get("policy_roi_cents_per_impression")),
    ]
    table = "\n".join(
        f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |"
        for name, value in rows
    )
    return (
        f"# offer model v{version}\n\n| metric | value |\n| --- | --- |\n{table}\n\n"
        f"Decision: {decision}\n\n![ROC](roc.png) ![calibration](calibration.png)\n"
    )
