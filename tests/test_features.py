"""The derived terrain features (app/terrain.py): their values, their float32 exactness, one
definition for training and serving, and the compiled (ONNX) form of every candidate that uses
them. No server needed."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from app import terrain
from app.covertype import FEATURE_COLUMNS, NUMERIC_RANGES, SOIL_TYPES, TARGET_COLUMN
from app.onnx_model import FEATURES_INPUT, OnnxPredictor, compare, export_onnx
from app.pipeline.candidates import CANDIDATE_NAMES, default_candidates
from app.pipeline.features import TERRAIN_STEP, TerrainFeatures
from app.settings import TrainingSettings

BASE = {
    "Elevation": 2596,
    "Aspect": 51,
    "Slope": 3,
    "Horizontal_Distance_To_Hydrology": 258,
    "Vertical_Distance_To_Hydrology": 0,
    "Horizontal_Distance_To_Roadways": 510,
    "Hillshade_9am": 221,
    "Hillshade_Noon": 232,
    "Hillshade_3pm": 148,
    "Horizontal_Distance_To_Fire_Points": 6279,
    "Wilderness_Area": "Rawah",
    "Soil_Type": "C7745",
}


def _frame(*changes: dict[str, object]) -> pd.DataFrame:
    return pd.DataFrame([{**BASE, **c} for c in changes])


def test_values_of_a_known_row() -> None:
    d = terrain.derive(_frame({}))
    got = {k: float(v[0]) for k, v in d.items()}
    assert got["Distance_To_Hydrology"] == 258.0
    assert got["Elevation_Of_Hydrology"] == 2596.0
    assert got["Hydrology_Plus_Fire_Points"] == 258 + 6279
    assert got["Hydrology_Minus_Fire_Points"] == 258 - 6279
    assert got["Hydrology_Plus_Roadways"] == 258 + 510
    assert got["Hydrology_Minus_Roadways"] == 258 - 510
    assert got["Fire_Points_Plus_Roadways"] == 6279 + 510
    assert got["Fire_Points_Minus_Roadways"] == 6279 - 510
    assert got["Hillshade_Sum"] == 221 + 232 + 148
    assert got["Aspect_Sin"] == pytest.approx(np.sin(np.deg2rad(51)), abs=2**-13)
    assert got["Aspect_Cos"] == pytest.approx(np.cos(np.deg2rad(51)), abs=2**-13)
    assert got["Wilderness_Code"] == 0.0
    assert got["Soil_Code"] == float(SOIL_TYPES.index("C7745"))
    assert (got["Soil_Climatic_Zone"], got["Soil_Geologic_Zone"]) == (7.0, 7.0)


def test_geometry_of_the_derived_values() -> None:
    rows = _frame(
        {"Horizontal_Distance_To_Hydrology": 3, "Vertical_Distance_To_Hydrology": -4},
        {"Horizontal_Distance_To_Hydrology": 1, "Vertical_Distance_To_Hydrology": 1},
        {"Aspect": 90, "Vertical_Distance_To_Hydrology": 120},
        {"Aspect": 0},
        {"Aspect": 360},
        {"Aspect": 180, "Soil_Type": "C2702", "Wilderness_Area": "Cache"},
    )
    d = terrain.derive(rows)
    # sqrt(2) on the 1/8 grid.
    assert d["Distance_To_Hydrology"][:2].tolist() == [5.0, 1.375]
    assert d["Elevation_Of_Hydrology"][2] == 2596 - 120
    assert d["Aspect_Sin"][2:].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert d["Aspect_Cos"][2:].tolist() == [0.0, 1.0, 1.0, -1.0]
    assert d["Soil_Code"][5] == 0.0 and d["Wilderness_Code"][5] == 3.0
    assert (d["Soil_Climatic_Zone"][5], d["Soil_Geologic_Zone"][5]) == (2.0, 7.0)


def test_unknown_category_is_missing_and_unknown_feature_is_refused() -> None:
    d = terrain.derive(_frame({"Soil_Type": "C9999", "Wilderness_Area": "Nowhere"}))
    for name in ("Soil_Code", "Soil_Climatic_Zone", "Soil_Geologic_Zone", "Wilderness_Code"):
        assert np.isnan(d[name][0]), name
    with pytest.raises(KeyError, match="Slope_Squared"):
        terrain.derive(_frame({}), ["Slope_Squared"])
    with pytest.raises(ValueError, match="Slope_Squared"):
        TerrainFeatures(["Slope_Squared"]).fit(_frame({}))


def _contract_extremes() -> pd.DataFrame:
    """Every combination of each numeric column's bounds and a few inner values."""
    columns = {
        c: sorted({low, high, (low + high) // 2, low + 1, high - 1})
        for c, (low, high) in NUMERIC_RANGES.items()
    }
    rows = []
    for aspect, h, v in itertools.product(
        range(0, 361),
        columns["Horizontal_Distance_To_Hydrology"],
        columns["Vertical_Distance_To_Hydrology"],
    ):
        rows.append({"Aspect": aspect, "Horizontal_Distance_To_Hydrology": h,
                     "Vertical_Distance_To_Hydrology": v})  # fmt: skip
    frame = _frame(*rows)
    for c in ("Elevation", "Horizontal_Distance_To_Roadways", "Horizontal_Distance_To_Fire_Points"):
        frame[c] = np.resize(columns[c], len(frame))
    return frame


def test_every_value_and_every_midpoint_is_exact_in_float32(covertype_frames) -> None:
    """The compiled form takes float32 and compares with float32 thresholds; sklearn uses
    float64. Values and midpoints (where trees put thresholds) that float32 holds exactly make
    both take the same branch on every row."""
    train, holdout = covertype_frames
    frame = pd.concat([train, holdout, _contract_extremes()], ignore_index=True)
    for name, values in terrain.derive(frame[list(FEATURE_COLUMNS)]).items():
        distinct = np.unique(values)
        midpoints = (distinct[1:] + distinct[:-1]) / 2
        for what, v in (("value", distinct), ("midpoint", midpoints)):
            exact = v.astype(np.float32).astype(np.float64) == v
            assert exact.all(), (name, what, v[~exact][:5])


def test_one_definition_for_frames_and_the_apis_columns(covertype_frames) -> None:
    _, holdout = covertype_frames
    rows = holdout[list(FEATURE_COLUMNS)].head(50)
    # What the inference API hands over: per-column tuples of plain Python values.
    columns = {
        c: tuple(v if isinstance(v, str) else float(v) for v in rows[c]) for c in FEATURE_COLUMNS
    }
    from_frame, from_columns = terrain.derive(rows), terrain.derive(columns)
    assert from_frame.keys() == from_columns.keys() == set(terrain.DERIVED_NAMES)
    for name in terrain.DERIVED_NAMES:
        np.testing.assert_array_equal(from_frame[name], from_columns[name], err_msg=name)
    added = TerrainFeatures().fit(rows).transform(rows)
    assert list(added.columns) == [*rows.columns, *terrain.DERIVED_NAMES]
    for name in terrain.DERIVED_NAMES:
        np.testing.assert_array_equal(added[name].to_numpy(), from_frame[name], err_msg=name)


def test_one_row_in_python_floats_gives_the_same_bits(covertype_frames) -> None:
    """derive_row (serving a few rows) against derive (training, batches): every aspect the
    contract allows, every sample row, and the contract's extremes."""
    train, holdout = covertype_frames
    frame = pd.concat([train, holdout, _contract_extremes()], ignore_index=True)
    frame = frame[list(FEATURE_COLUMNS)]
    vector = terrain.derive(frame)
    rows = frame.to_dict("records")
    for i in range(0, len(rows), 7 if len(rows) > 20000 else 1):
        row = {k: (v if isinstance(v, str) else float(v)) for k, v in rows[i].items()}
        scalar = terrain.derive_row(row, terrain.DERIVED_NAMES)
        expected = [vector[n][i] for n in terrain.DERIVED_NAMES]
        assert scalar == expected, (rows[i], scalar, expected)
    for aspect in range(0, 361):
        row = {**{k: float(v) for k, v in BASE.items() if not isinstance(v, str)}, "Aspect": aspect}
        scalar = terrain.derive_row(row, ["Aspect_Sin", "Aspect_Cos"])
        vector_row = terrain.derive(_frame({"Aspect": aspect}), ["Aspect_Sin", "Aspect_Cos"])
        assert scalar == [vector_row["Aspect_Sin"][0], vector_row["Aspect_Cos"][0]], aspect


def _small(name: str) -> dict[str, object]:
    return {
        "hist_gradient_boosting": {"max_iter": 30},
        "hist_gradient_boosting_native": {"max_iter": 30},
        "extra_trees": {"n_estimators": 4},
        "random_forest": {"n_estimators": 4},
        "logistic_regression": {"max_iter": 100},
    }[name]


@pytest.fixture(scope="module")
def fitted(covertype_frames) -> dict[str, object]:
    train, _ = covertype_frames
    candidates = default_candidates(
        CANDIDATE_NAMES, seed=1, n_jobs=1, overrides={n: _small(n) for n in CANDIDATE_NAMES}
    )
    x, y = train[list(FEATURE_COLUMNS)], train[TARGET_COLUMN]
    return {c.name: c.build().fit(x, y) for c in candidates}


def test_every_default_candidate_starts_with_the_terrain_step(fitted) -> None:
    for name in TrainingSettings().candidates.split(","):
        steps = fitted[name].named_steps
        assert TERRAIN_STEP in steps and list(steps)[0] == TERRAIN_STEP, name


@pytest.mark.parametrize(
    "name", ["hist_gradient_boosting", "extra_trees", "random_forest", "logistic_regression"]
)
def test_the_compiled_form_covers_the_terrain_step(fitted, covertype_frames, name) -> None:
    _, holdout = covertype_frames
    pipeline = fitted[name]
    data = export_onnx(pipeline, holdout.head(20))
    predictor = OnnxPredictor(data)
    # The graph takes the derived features as inputs, computed by app.terrain at serving.
    assert set(pipeline.named_steps[TERRAIN_STEP].names) == set(predictor.derived)
    if name != "logistic_regression":
        # The codes layout only passes columns through: the graph takes one float matrix.
        assert list(predictor.input_types) == [FEATURES_INPUT]
    result = compare(pipeline, data, holdout)
    assert result.n_rows == len(holdout)
    assert result.n_mismatched_labels == 0, result
    assert result.max_abs_proba_diff < 1e-4, result
    # The API's single-row path (Python floats): each row alone, as /predict sends it.
    columns = {c: tuple(v if isinstance(v, str) else float(v) for v in holdout[c])
               for c in FEATURE_COLUMNS}  # fmt: skip
    expected = pipeline.predict(holdout[list(FEATURE_COLUMNS)])
    for i in range(0, len(holdout), 5):
        one = {c: values[i : i + 1] for c, values in columns.items()}
        assert predictor.run_columns(one)[0][0] == expected[i], i


def test_native_categorical_boosting_stays_off_the_compiled_path(fitted, covertype_frames) -> None:
    """skl2onnx ignores categorical bitsets: the compiled form disagrees, so that candidate is
    not in the default set (and log_onnx_artifacts would refuse to log it)."""
    _, holdout = covertype_frames
    native = fitted["hist_gradient_boosting_native"]
    result = compare(native, export_onnx(native, holdout.head(20)), holdout)
    assert result.n_mismatched_labels > 0
    assert "hist_gradient_boosting_native" not in TrainingSettings().candidates.split(",")
