"""The confusion matrix as an SVG image.

SVG because the pipeline's venv has mlflow-skinny without matplotlib or Pillow, and the MLflow
UI's artifact viewer shows .svg files as images.
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape

CELL = 56
LEFT = 150  # room for the true-class names
TOP = 120  # room for the title and the rotated predicted-class names


def _fill(share: float) -> str:
    # White to dark blue by the share of the true class's rows in this cell.
    level = max(0.0, min(1.0, share))
    r = round(255 - level * (255 - 8))
    g = round(255 - level * (255 - 48))
    b = round(255 - level * (255 - 107))
    return f"rgb({r},{g},{b})"


def confusion_matrix_svg(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str) -> str:
    """Rows are true classes, columns predicted ones; each cell shows its count and is shaded
    by the row's share, so small classes are as readable as big ones."""
    n = len(labels)
    if len(matrix) != n or any(len(row) != n for row in matrix):
        raise ValueError(f"confusion matrix must be {n}x{n}")
    width, height = LEFT + n * CELL + 20, TOP + n * CELL + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
        f'<text x="{LEFT + n * CELL / 2}" y="{height - 10}" text-anchor="middle">predicted</text>',
        f'<text x="14" y="{TOP + n * CELL / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {TOP + n * CELL / 2})">true</text>',
    ]
    for j, label in enumerate(labels):
        x = LEFT + j * CELL + CELL / 2
        rotate = f"rotate(-45 {x} {TOP - 6})"
        parts.append(f'<text x="{x}" y="{TOP - 6}" transform="{rotate}">{escape(label)}</text>')
    for i, (label, row) in enumerate(zip(labels, matrix, strict=True)):
        y = TOP + i * CELL
        total = sum(row) or 1
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + CELL / 2 + 4}" text-anchor="end">{escape(label)}</text>'
        )
        for j, count in enumerate(row):
            share = count / total
            x = LEFT + j * CELL
            ink = "white" if share > 0.5 else "black"
            parts.append(
                f'<rect x="{x}" y="{y}" width="{CELL}" height="{CELL}" '
                f'fill="{_fill(share)}" stroke="#ccc"/>'
                f'<text x="{x + CELL / 2}" y="{y + CELL / 2 + 4}" text-anchor="middle" '
                f'fill="{ink}">{int(count)}</text>'
            )
    parts.append("</svg>")
    return "\n".join(parts)
