"""Derived terrain features of a Covertype row: the one definition that training and serving share.

Training adds them with app.pipeline.features.TerrainFeatures (the first step of every candidate
pipeline); the inference API's compiled (ONNX) form computes them with `derive` from the same
table before the compiled model runs, so no feature is ever written twice.

Every value lands on a grid that float32 holds exactly (integers, or multiples of 1/8 or 1/4096
far below 2**24): the ONNX graph takes float32 inputs and its trees compare against float32
thresholds, while sklearn computes in float64. On such a grid a split threshold (a midpoint of
two grid values) and every value survive the cast unchanged, so both forms take the same branch
on every row, not merely on the rows checked.

The categorical columns also get numeric codes: their position in the data contract, and the two
leading digits of the soil's ELU code (climatic and geologic zone, USFS). Trees split on those
ranges directly: boosting on 25 such columns fitted 2.5x faster than on the 54 one-hot columns
and scored the same (measured on the course's 10 batches, docs/benchmarks.md). A value outside
the contract becomes NaN (missing); the APIs refuse such rows before they get here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from app.covertype import SOIL_TYPES, WILDERNESS_AREAS

# Name of the step that adds them in a candidate pipeline; a compiled form starts after it.
PIPELINE_STEP: Final = "terrain"

HYDROLOGY_H = "Horizontal_Distance_To_Hydrology"
HYDROLOGY_V = "Vertical_Distance_To_Hydrology"
ROADWAYS = "Horizontal_Distance_To_Roadways"
FIRE_POINTS = "Horizontal_Distance_To_Fire_Points"
HILLSHADES = ("Hillshade_9am", "Hillshade_Noon", "Hillshade_3pm")


class _Vector:
    """Array math for whole columns (training, and batches at serving)."""

    sqrt, sin, cos, deg2rad, rint = np.sqrt, np.sin, np.cos, np.deg2rad, np.rint

    @staticmethod
    def lookup(table: Mapping[str, float], values: np.ndarray) -> np.ndarray:
        return np.array([table.get(v, np.nan) for v in values.tolist()], dtype=np.float64)


class _Scalar:
    """The same operations on one row's Python floats: on a single row each numpy call costs
    microseconds, ten times the arithmetic. Both give the same bits: sqrt and IEEE arithmetic
    are exact, math.radians multiplies by the same pi/180 as np.deg2rad, Python's round is
    half-to-even like np.rint, and sin/cos agree after the grid (checked for every aspect
    0..360 in tests/test_features.py)."""

    sqrt, sin, cos, deg2rad = math.sqrt, math.sin, math.cos, math.radians

    @staticmethod
    def rint(value: float) -> float:
        return float(round(value))

    @staticmethod
    def lookup(table: Mapping[str, float], value: str) -> float:
        return table.get(value, math.nan)


Math = type[_Vector] | type[_Scalar]


def _on_grid(xp: Math, values: Any, bits: int) -> Any:
    scale = float(2**bits)
    return xp.rint(values * scale) / scale


def _lookup(table: Mapping[str, float]) -> Callable[[Math, Any], Any]:
    def code(xp: Math, values: Any) -> Any:
        return xp.lookup(table, values)

    return code


@dataclass(frozen=True)
class DerivedFeature:
    name: str
    inputs: tuple[str, ...]
    # compute(xp, *inputs): xp is the math namespace (_Vector for float64 arrays, with object
    # arrays of strings for a categorical input; _Scalar for one row's floats and strings).
    compute: Callable[..., Any]
    categorical: bool = False


_CATEGORICAL_INPUTS: Final = frozenset({"Wilderness_Area", "Soil_Type"})

DERIVED_FEATURES: Final[tuple[DerivedFeature, ...]] = (
    # Straight-line distance to water; 1/8 m is finer than any real distinction.
    DerivedFeature(
        "Distance_To_Hydrology",
        (HYDROLOGY_H, HYDROLOGY_V),
        # Not np.hypot: sqrt is correctly rounded everywhere, so any runtime gets these bits.
        lambda xp, h, v: _on_grid(xp, xp.sqrt(h * h + v * v), 3),
    ),
    # Elevation of the nearest water: separates valley floors from ridges.
    DerivedFeature("Elevation_Of_Hydrology", ("Elevation", HYDROLOGY_V), lambda xp, e, v: e - v),
    DerivedFeature(
        "Hydrology_Plus_Fire_Points", (HYDROLOGY_H, FIRE_POINTS), lambda xp, a, b: a + b
    ),
    DerivedFeature(
        "Hydrology_Minus_Fire_Points", (HYDROLOGY_H, FIRE_POINTS), lambda xp, a, b: a - b
    ),
    DerivedFeature("Hydrology_Plus_Roadways", (HYDROLOGY_H, ROADWAYS), lambda xp, a, b: a + b),
    DerivedFeature("Hydrology_Minus_Roadways", (HYDROLOGY_H, ROADWAYS), lambda xp, a, b: a - b),
    DerivedFeature("Fire_Points_Plus_Roadways", (FIRE_POINTS, ROADWAYS), lambda xp, a, b: a + b),
    DerivedFeature("Fire_Points_Minus_Roadways", (FIRE_POINTS, ROADWAYS), lambda xp, a, b: a - b),
    # Aspect is an angle: 359 and 1 degrees face the same way.
    DerivedFeature(
        "Aspect_Sin", ("Aspect",), lambda xp, a: _on_grid(xp, xp.sin(xp.deg2rad(a)), 12)
    ),
    DerivedFeature(
        "Aspect_Cos", ("Aspect",), lambda xp, a: _on_grid(xp, xp.cos(xp.deg2rad(a)), 12)
    ),
    DerivedFeature("Hillshade_Sum", HILLSHADES, lambda xp, a, b, c: a + b + c),
    DerivedFeature(
        "Wilderness_Code",
        ("Wilderness_Area",),
        _lookup({w: float(i) for i, w in enumerate(WILDERNESS_AREAS)}),
        categorical=True,
    ),
    DerivedFeature(
        "Soil_Code",
        ("Soil_Type",),
        _lookup({s: float(i) for i, s in enumerate(SOIL_TYPES)}),
        categorical=True,
    ),
    # ELU codes read "C" + climatic zone + geologic zone + two digits of soil family.
    DerivedFeature(
        "Soil_Climatic_Zone",
        ("Soil_Type",),
        _lookup({s: float(s[1]) for s in SOIL_TYPES}),
        categorical=True,
    ),
    DerivedFeature(
        "Soil_Geologic_Zone",
        ("Soil_Type",),
        _lookup({s: float(s[2]) for s in SOIL_TYPES}),
        categorical=True,
    ),
)
BY_NAME: Final[dict[str, DerivedFeature]] = {f.name: f for f in DERIVED_FEATURES}
DERIVED_NAMES: Final[tuple[str, ...]] = tuple(BY_NAME)
# The derived features made from numeric columns only (what the one-hot layout adds).
NUMERIC_DERIVED_NAMES: Final[tuple[str, ...]] = tuple(
    f.name for f in DERIVED_FEATURES if not f.categorical
)


def _column(columns: Mapping[str, Any], name: str) -> np.ndarray:
    values = columns[name]
    if name in _CATEGORICAL_INPUTS:
        return np.asarray(values, dtype=object).reshape(-1)
    if isinstance(values, np.ndarray) and values.dtype == np.float64 and values.ndim == 1:
        return values  # already what the definitions take (a serving hot path)
    return np.asarray(values, dtype=np.float64).reshape(-1)


def derive(
    columns: Mapping[str, Any], names: Sequence[str] = DERIVED_NAMES
) -> dict[str, np.ndarray]:
    """The derived features `names` (float64, one entry per row) from raw feature columns:
    a DataFrame, or a mapping of column name to a sequence of values."""
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise KeyError(f"unknown derived feature(s): {', '.join(unknown)}")
    inputs: dict[str, np.ndarray] = {}
    out: dict[str, np.ndarray] = {}
    for name in names:
        feature = BY_NAME[name]
        for column in feature.inputs:
            if column not in inputs:
                inputs[column] = _column(columns, column)
        out[name] = feature.compute(_Vector, *(inputs[c] for c in feature.inputs))
    return out


def derive_row(row: Mapping[str, Any], names: Sequence[str]) -> list[float]:
    """The derived features `names` of one row (raw column name -> a float or a string), by
    the same definitions as `derive`, in Python floats: the serving path for a few rows."""
    return row_deriver(names)(row)


def row_deriver(names: Sequence[str]) -> Callable[[Mapping[str, Any]], list[float]]:
    """derive_row for a fixed list of names, with the name lookups done once: a served model
    makes one and calls it per row (half the cost of derive_row's lookups per call)."""
    plan = [(BY_NAME[n].compute, BY_NAME[n].inputs) for n in names]

    def derive(row: Mapping[str, Any]) -> list[float]:
        return [float(compute(_Scalar, *[row[c] for c in inputs])) for compute, inputs in plan]

    return derive
