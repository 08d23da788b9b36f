"""Real rows to prefill the predict form: 4 of each cover type, from data/covertype-sample.csv.

A module rather than a data file so the wheel carries it with no package-data rule; the values
are in app.covertype.COLUMNS order, Cover_Type last (what the row really is).
tests/test_ui_examples.py checks every row is in the sample and within the data contract.
"""

from __future__ import annotations

import random
from typing import Final

from app.covertype import COLUMNS, FEATURE_COLUMNS, TARGET_COLUMN

_ROWS: Final[tuple[tuple[int | str, ...], ...]] = (
    (3095, 13, 8, 95, 8, 3684, 212, 223, 148, 1498, "Rawah", "C7745", 1),
    (3174, 96, 18, 67, -14, 2643, 246, 211, 87, 2576, "Rawah", "C7746", 1),
    (3081, 35, 30, 283, 62, 3280, 201, 160, 76, 1672, "Commanche", "C7755", 1),
    (2862, 357, 23, 402, 49, 3254, 177, 191, 146, 2432, "Commanche", "C4703", 1),
    (2982, 53, 14, 240, 63, 5756, 227, 209, 112, 3880, "Rawah", "C7745", 2),
    (2940, 340, 9, 313, 79, 3109, 201, 227, 165, 2270, "Rawah", "C7745", 2),
    (2778, 250, 34, 201, 132, 1032, 129, 240, 236, 1548, "Commanche", "C4758", 2),
    (2585, 39, 12, 201, 49, 2605, 220, 213, 126, 666, "Commanche", "C4704", 2),
    (2027, 196, 20, 42, 10, 592, 211, 252, 167, 402, "Cache", "C2702", 3),
    (2247, 350, 39, 240, 122, 1036, 124, 147, 141, 1200, "Cache", "C4703", 3),
    (2662, 126, 16, 382, 22, 787, 245, 227, 106, 497, "Commanche", "C2703", 3),
    (2531, 112, 28, 390, 123, 361, 254, 197, 51, 1252, "Commanche", "C2705", 3),
    (2047, 101, 5, 30, 1, 900, 228, 233, 139, 541, "Cache", "C6102", 4),
    (2289, 190, 21, 277, 108, 1182, 215, 251, 160, 1148, "Cache", "C2704", 4),
    (2269, 194, 22, 170, 89, 1149, 211, 251, 164, 1153, "Cache", "C2704", 4),
    (2339, 38, 17, 0, 0, 830, 218, 202, 114, 1061, "Cache", "C4703", 4),
    (2596, 51, 3, 258, 0, 510, 221, 232, 148, 6279, "Rawah", "C7745", 5),
    (2909, 139, 5, 0, 0, 4884, 228, 238, 144, 1772, "Rawah", "C7202", 5),
    (2750, 40, 12, 474, 30, 60, 221, 214, 126, 720, "Commanche", "C6102", 5),
    (2705, 158, 14, 268, 56, 3278, 235, 241, 134, 1812, "Commanche", "C4758", 5),
    (2641, 312, 26, 210, 82, 1084, 142, 211, 205, 648, "Commanche", "C7757", 6),
    (2126, 352, 24, 30, 8, 601, 172, 192, 153, 872, "Cache", "C4703", 6),
    (2443, 276, 20, 150, 58, 1455, 162, 240, 215, 594, "Cache", "C4703", 6),
    (2407, 209, 6, 0, 0, 1201, 215, 246, 167, 960, "Commanche", "C6101", 6),
    (3341, 92, 20, 360, 19, 3372, 246, 205, 79, 1731, "Rawah", "C7745", 7),
    (3417, 36, 13, 319, 68, 3031, 219, 211, 126, 1381, "Commanche", "C8771", 7),
    (3430, 180, 12, 474, 105, 4205, 224, 247, 154, 3074, "Commanche", "C7757", 7),
    (3281, 3, 4, 540, 11, 3661, 214, 232, 155, 1036, "Commanche", "C7790", 7),
)

EXAMPLES: Final[tuple[dict[str, int | str], ...]] = tuple(
    dict(zip(COLUMNS, row, strict=True)) for row in _ROWS
)


def features(example: dict[str, int | str]) -> dict[str, int | str]:
    """The 12 feature columns of an example (what /predict takes)."""
    return {column: example[column] for column in FEATURE_COLUMNS}


def matching(values: dict[str, object]) -> dict[str, int | str] | None:
    """The example whose 12 features `values` holds (numbers compare as numbers), if any."""
    return next((e for e in EXAMPLES if all(values.get(c) == e[c] for c in FEATURE_COLUMNS)), None)


def actual_cover_type(example: dict[str, int | str]) -> int:
    return int(example[TARGET_COLUMN])


def random_example(
    rng: random.Random, exclude: dict[str, int | str] | None = None
) -> dict[str, int | str]:
    """A random example, other than `exclude` (so the button always changes the form)."""
    choices = [e for e in EXAMPLES if e != exclude] or list(EXAMPLES)
    return rng.choice(choices)
