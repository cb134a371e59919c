"""ROC and calibration curves as small PNG line plots, drawn with numpy and zlib.

A plot library would add a large dependency for two unit-square charts; these have an axis
box, a grey diagonal (chance for ROC, perfect calibration), the curve in blue, and a title,
axis labels and 0/1 ticks in a built-in 5x7 bitmap font (upper case).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIZE = 320
PAD = 36

# 5x7 glyphs, one 5-bit row per entry (most significant bit on the left)
_GLYPHS = {
    "A": "0E 11 11 1F 11 11 11", "B": "1E 11 11 1E 11 11 1E", "C": "0E 11 10 10 10 11 0E",
    "D": "1C 12 11 11 11 12 1C", "E": "1F 10 10 1E 10 10 1F", "F": "1F 10 10 1E 10 10 10",
    "G": "0E 11 10 17 11 11 0F", "H": "11 11 11 1F 11 11 11", "I": "0E 04 04 04 04 04 0E",
    "J": "07 02 02 02 02 12 0C", "K": "11 12 14 18 14 12 11", "L": "10 10 10 10 10 10 1F",
    "M": "11 1B 15 15 11 11 11", "N": "11 11 19 15 13 11 11", "O": "0E 11 11 11 11 11 0E",
    "P": "1E 11 11 1E 10 10 10", "Q": "0E 11 11 11 15 12 0D", "R": "1E 11 11 1E 14 12 11",
    "S": "0F 10 10 0E 01 01 1E", "T": "1F 04 04 04 04 04 04", "U": "11 11 11 11 11 11 0E",
    "V": "11 11 11 11 11 0A 04", "W": "11 11 11 15 15 15 0A", "X": "11 11 0A 04 0A 11 11",
    "Y": "11 11 11 0A 04 04 04", "Z": "1F 01 02 04 08 10 1F", "0": "0E 11 13 15 19 11 0E",
    "1": "04 0C 04 04 04 04 0E", "2": "0E 11 01 02 04 08 1F", "3": "1F 02 04 02 01 11 0E",
    "4": "02 06 0A 12 1F 02 02", "5": "1F 10 1E 01 01 11 0E", "6": "06 08 10 1E 11 11 0E",
    "7": "1F 01 02 04 08 08 08", "8": "0E 11 11 0E 11 11 0E", "9": "0E 11 11 0F 01 02 0C",
    " ": "00 00 00 00 00 00 00", ".": "00 00 00 00 00 0C 0C", ",": "00 00 00 00 0C 04 08",
    "(": "02 04 08 08 08 04 02", ")": "08 04 02 02 02 04 08", "-": "00 00 00 1F 00 00 00",
    ":": "00 0C 0C 00 0C 0C 00", "=": "00 00 1F 00 1F 00 00", "?": "0E 11 01 02 04 00 04",
}
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


def text_mask(text: str, scale: int = 2) -> np.ndarray:
    """The text as a boolean bitmap (7 x 6 cells per character, times `scale`), upper-cased;
    characters outside the font are drawn as '?'."""
    cells = []
    for char in text.upper():
        rows = [int(r, 16) for r in _GLYPHS.get(char, _GLYPHS["?"]).split()]
        glyph = np.array([[(r >> (4 - c)) & 1 for c in range(5)] + [0] for r in rows], dtype=bool)
        cells.append(glyph)
    mask = np.hstack(cells) if cells else np.zeros((7, 0), dtype=bool)
    return mask.repeat(scale, axis=0).repeat(scale, axis=1)


def _stamp(canvas: np.ndarray, mask: np.ndarray, top: int, center: int) -> None:
    """Paint `mask` black with its top edge at row `top`, centred on column `center`."""
    h, w = mask.shape
    left = max(0, min(SIZE - w, center - w // 2))
    region = canvas[top : top + h, left : left + w]
    region[mask[: region.shape[0], : region.shape[1]]] = BLACK


def line_plot_png(x, y, *, title: str, xlabel: str, ylabel: str) -> bytes:
    """A PNG of the curve (x, y) in the unit square, with its box, diagonal, 0/1 ticks, title
    (top), x-axis label (bottom) and y-axis label (left, reading upwards)."""
    canvas = np.full((SIZE, SIZE, 3), WHITE, dtype=np.uint8)
    _line(canvas, [0, 1], [0, 1], GREY, width=1)
    _line(canvas, [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], BLACK, width=1)
    _line(canvas, x, y, BLUE)
    _stamp(canvas, text_mask(title), 6, SIZE // 2)
    _stamp(canvas, text_mask(xlabel), SIZE - 16, SIZE // 2)
    label = np.rot90(text_mask(ylabel))  # reads bottom to top
    _stamp(canvas, label, (SIZE - label.shape[0]) // 2, 8 + label.shape[1] // 2)
    low, high = SIZE - 1 - PAD, PAD  # rows of y = 0 and y = 1
    _stamp(canvas, text_mask("0", 1), low + 3, PAD)  # x = 0
    _stamp(canvas, text_mask("1", 1), low + 3, SIZE - 1 - PAD)  # x = 1
    _stamp(canvas, text_mask("0", 1), low - 7, PAD - 6)  # y = 0
    _stamp(canvas, text_mask("1", 1), high, PAD - 6)  # y = 1
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
