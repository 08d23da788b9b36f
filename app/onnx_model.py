"""A compiled (ONNX) form of a trained feature pipeline, and the proof that it predicts the same.

The pipeline logs `onnx/model.onnx` next to the sklearn model in the same MLflow run, plus
`onnx/verification.csv`: held-out rows with the labels the sklearn model gave them. The
inference API serves the ONNX form only if it reproduces those labels when it loads it, so a
converter bug can never change an answer.

Input layout of the ONNX graph: one [N, 1] input per feature column, named as the column;
a pipeline that starts with the derived terrain features (app.terrain, the step named
app.terrain.PIPELINE_STEP) is compiled from the step after it, and its graph also takes one
input per derived feature, which OnnxPredictor computes from the raw columns with the same
app.terrain definitions training used (every derived value is exact in float32, see there).
Float32 for the numeric columns (every value in app.covertype.NUMERIC_RANGES is an integer far
below 2**24, so float32 holds it exactly, and sklearn's split thresholds on integer data are
half-integers, also exact) and string for Wilderness_Area and Soil_Type. Outputs: `label`
(int64, the class number) and `probabilities` ([N, n_classes] float32, columns in the order of
the `classes` metadata entry).

skl2onnx (and onnx) are needed only to export; serving needs onnxruntime alone, so they are
imported inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from app import terrain
from app.covertype import CATEGORICAL_COLUMNS, FEATURE_COLUMNS, NUMERIC_COLUMNS

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

log = logging.getLogger(__name__)

ARTIFACT_DIR = "onnx"
MODEL_FILE = "model.onnx"
VERIFICATION_FILE = "verification.csv"
# The sklearn model's predicted label for each verification row.
EXPECTED_LABEL_COLUMN = "expected_label"
MAX_VERIFICATION_ROWS = 1000
CLASSES_METADATA_KEY = "classes"
# A graph compiled after the column layout takes one float matrix, FEATURES_INPUT, whose
# columns (raw numeric and derived, in order) this metadata entry names.
FEATURES_INPUT = "features"
COLUMNS_METADATA_KEY = "feature_columns"
# Up to this many rows the features matrix is built row by row in Python (see _features):
# measured, 1 row costs 22 us that way against 106 us through numpy, 3 rows 91 against 110,
# 4 rows 118 against 109.
SCALAR_ROWS = 3

LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"

_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(string)": np.object_,
}


class Comparison(NamedTuple):
    """How far the ONNX form is from the sklearn model on the same rows."""

    n_rows: int
    n_mismatched_labels: int
    max_abs_proba_diff: float


@dataclass(frozen=True)
class OnnxLogResult:
    """What log_onnx_artifacts did; the same facts are tags on the run."""

    status: str  # "ok", "mismatch" or "export_failed"
    comparison: Comparison | None
    size_bytes: int | None = None
    error: str | None = None


# skl2onnx 1.20 passes a Python bool for a leaf's "missing value goes left" flag of
# HistGradientBoosting trees, and onnx >= 1.19 refuses bools in an integer list attribute
# ("Expected an int, got a boolean"). The flag is meaningless on a leaf; casting it to int is
# what the converter meant (see its own comment "cannot use boolean in onnx").
_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _hist_gradient_boosting_fix() -> Iterator[None]:
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
        return original(
            *args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs
        )

    with _PATCH_LOCK:
        tree_ensemble.add_node = add_node
        try:
            yield
        finally:
            tree_ensemble.add_node = original


def _matrix_columns(pipeline: Pipeline) -> list[str] | None:
    """The columns, in order, of the float matrix that the steps after the column layout take,
    when everything before them is computable outside the graph: a terrain step, then a layout
    that only passes numeric and derived columns through (the "codes" layout). None otherwise.

    Such a pipeline is compiled from the step after the layout, with that matrix as its one
    input: ONNX Runtime then answers a single row 4.5x faster (85 against 386 us, 200 rounds
    of boosting) than a graph that takes one input per column and concatenates them."""
    from sklearn.compose import ColumnTransformer

    if len(pipeline.steps) < 3 or pipeline.steps[0][0] != terrain.PIPELINE_STEP:
        return None
    layout = pipeline.steps[1][1]
    if not isinstance(layout, ColumnTransformer):
        return None
    # The constructor's spec: the fitted transformers_ show passthrough as a FunctionTransformer.
    used = [(t, cols) for _, t, cols in layout.transformers if not _is_drop(t, cols)]
    if (
        not _is_drop(layout.remainder, [None])
        or len(used) != 1
        or not _is(used[0][0], "passthrough")
    ):
        return None
    columns = [str(c) for c in used[0][1]]
    known = set(NUMERIC_COLUMNS) | set(terrain.BY_NAME)
    return columns if set(columns) <= known else None


def _is(transformer: Any, word: str) -> bool:
    return isinstance(transformer, str) and transformer == word


def _is_drop(transformer: Any, columns: Any) -> bool:
    return _is(transformer, "drop") or len(columns) == 0


def _compiled_part(pipeline: Pipeline) -> tuple[Pipeline, list[tuple[str, Any]], dict[str, str]]:
    """The part of `pipeline` the graph holds, its inputs, and metadata for OnnxPredictor.
    A leading terrain step stays outside: its features are inputs, computed at serving."""
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.pipeline import Pipeline

    columns = _matrix_columns(pipeline)
    if columns is not None:
        inputs = [(FEATURES_INPUT, FloatTensorType([None, len(columns)]))]
        return Pipeline(pipeline.steps[2:]), inputs, {COLUMNS_METADATA_KEY: json.dumps(columns)}
    name, step = pipeline.steps[0]
    derived: tuple[str, ...] = ()
    if name == terrain.PIPELINE_STEP:
        pipeline, derived = Pipeline(pipeline.steps[1:]), tuple(step.names)
    inputs = (
        [(c, FloatTensorType([None, 1])) for c in NUMERIC_COLUMNS]
        + [(c, FloatTensorType([None, 1])) for c in derived]
        + [(c, StringTensorType([None, 1])) for c in CATEGORICAL_COLUMNS]
    )
    return pipeline, inputs, {}


def export_onnx(pipeline: Pipeline, sample: pd.DataFrame) -> bytes:
    """Convert a fitted feature pipeline ([terrain step +] ColumnTransformer + classifier) to
    ONNX bytes.

    `sample` (a few feature rows) is used to check that the graph runs; the input types come
    from the data contract, not from the sample's dtypes."""
    from skl2onnx import convert_sklearn

    compiled, initial_types, metadata = _compiled_part(pipeline)
    classifier = pipeline.steps[-1][1]
    with _hist_gradient_boosting_fix():
        model = convert_sklearn(
            compiled,
            initial_types=initial_types,
            # Probabilities as one [N, n_classes] tensor instead of a list of dicts.
            options={id(classifier): {"zipmap": False}},
        )
    outputs = [o.name for o in model.graph.output]
    if outputs != [LABEL_OUTPUT, PROBABILITIES_OUTPUT]:
        raise ValueError(f"unexpected ONNX outputs {outputs}")
    classes = [int(c) for c in pipeline.classes_]
    for key, value in {CLASSES_METADATA_KEY: json.dumps(classes), **metadata}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    data = model.SerializeToString()
    rows = _frame_columns(sample)
    labels, probabilities = OnnxPredictor(data).run_columns(rows)
    if _compact_trees(model):
        compact = model.SerializeToString()
        compact_labels, compact_probabilities = OnnxPredictor(compact).run_columns(rows)
        # Adding a zero weight changes no sum, but the form that ships must prove it.
        if np.array_equal(labels, compact_labels) and np.array_equal(
            probabilities, compact_probabilities
        ):
            return compact
        log.warning("compacted ONNX trees answered differently; keeping the converter's form")
    return data


def _at_default(attribute: Any) -> bool:
    """An optional tree attribute that says nothing: every hit rate 1, no missing-value flag."""
    if attribute.name == "nodes_hitrates":
        return bool(np.all(np.asarray(attribute.floats) == 1.0))
    if attribute.name == "nodes_missing_value_tracks_true":
        return not np.any(np.asarray(attribute.ints))
    return False


def _compact_trees(model: Any) -> bool:
    """Shrink tree ensembles without changing a result: drop leaf class weights that are exactly
    0 (a fully grown forest's leaves are pure, so 6 of its 7 weights are 0) and optional node
    attributes left at their defaults. For a RandomForest(200) on 58k rows this takes the file
    from 258 to 105 MiB and onnxruntime's memory from 1.7 to 1.2 GiB. True if anything changed.
    """
    from onnx import helper

    changed = False
    for node in model.graph.node:
        if node.domain != "ai.onnx.ml" or node.op_type != "TreeEnsembleClassifier":
            continue
        attributes = {a.name: a for a in node.attribute}
        if "class_weights" not in attributes:
            continue
        weights = np.asarray(attributes["class_weights"].floats, dtype=np.float32)
        keep = weights != 0
        kept = []
        for attribute in node.attribute:
            name = attribute.name
            if name in ("class_ids", "class_nodeids", "class_treeids"):
                values = np.asarray(attribute.ints, dtype=np.int64)[keep]
                kept.append(helper.make_attribute(name, values.tolist()))
            elif name == "class_weights":
                kept.append(helper.make_attribute(name, weights[keep].tolist()))
            elif not _at_default(attribute):
                kept.append(attribute)
        if len(kept) != len(node.attribute) or not keep.all():
            del node.attribute[:]
            node.attribute.extend(kept)
            changed = True
    return changed


class OnnxPredictor:
    """An onnxruntime session over bytes made by export_onnx. Thread-safe (ORT sessions are)."""

    def __init__(self, model: bytes, intra_op_threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One thread per call: a single row gains nothing from a pool, and concurrent requests
        # already use the cores. Large batches may ask for more.
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            model, sess_options=options, providers=["CPUExecutionProvider"]
        )
        meta = self._session.get_modelmeta().custom_metadata_map
        if CLASSES_METADATA_KEY not in meta:
            raise ValueError("ONNX model has no 'classes' metadata: not made by export_onnx")
        self.classes: tuple[int, ...] = tuple(
            int(c) for c in json.loads(meta[CLASSES_METADATA_KEY])
        )
        self.input_types: dict[str, type] = {}
        for node in self._session.get_inputs():
            if node.type not in _NUMPY_TYPES:
                raise ValueError(f"ONNX input {node.name} has unsupported type {node.type}")
            self.input_types[node.name] = _NUMPY_TYPES[node.type]
        self._matrix: list[str] | None = None
        if FEATURES_INPUT in self.input_types:
            self._matrix = json.loads(meta.get(COLUMNS_METADATA_KEY, "null"))
            known = set(NUMERIC_COLUMNS) | set(terrain.BY_NAME)
            if not isinstance(self._matrix, list) or not set(self._matrix) <= known:
                raise ValueError(f"ONNX model's {COLUMNS_METADATA_KEY} metadata is not usable")
            if self.input_types[FEATURES_INPUT] is not np.float32 or len(self.input_types) != 1:
                raise ValueError(f"ONNX model with a {FEATURES_INPUT} matrix has other inputs")
            derived = [c for c in self._matrix if c in terrain.BY_NAME]
            self._raw: list[tuple[str, type]] = []
        else:
            unknown = set(self.input_types) - set(FEATURE_COLUMNS) - set(terrain.BY_NAME)
            if unknown:
                raise ValueError(f"ONNX model has inputs that are no feature: {sorted(unknown)}")
            derived = [n for n in self.input_types if n in terrain.BY_NAME]
            self._raw = [(n, t) for n, t in self.input_types.items() if n not in terrain.BY_NAME]
        # Computed here, from the raw columns, by the definitions training used.
        self.derived: tuple[str, ...] = tuple(derived)
        self._derive_row = terrain.row_deriver(self.derived)
        self._outputs = [LABEL_OUTPUT, PROBABILITIES_OUTPUT]

    def run_columns(self, columns: Mapping[str, Sequence[Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Labels and probabilities from plain per-column sequences (the API's hot path: no
        DataFrame). Each value of `columns` holds one entry per row of every feature column."""
        if self._matrix is not None:
            feeds = {FEATURES_INPUT: self._features(columns)}
        else:
            feeds = {
                name: np.asarray(columns[name], dtype=dtype).reshape(-1, 1)
                for name, dtype in self._raw
            }
            if self.derived:
                for name, values in terrain.derive(columns, self.derived).items():
                    feeds[name] = values.astype(np.float32).reshape(-1, 1)
        labels, probabilities = self._session.run(self._outputs, feeds)
        return labels, probabilities

    def _features(self, columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """The FEATURE_COLUMNS matrix. float64 first, as in training: every value is exact
        there and, by app.terrain's grids, in float32 too.

        A few rows are computed row by row in Python floats (app.terrain.row_deriver): numpy
        calls on one-element arrays cost microseconds each, and the derived features took
        longer than ONNX Runtime itself (137 against 52 us for one row). More rows go through
        numpy, the numeric columns converted as one block."""
        assert self._matrix is not None
        rows = len(columns[FEATURE_COLUMNS[0]])
        if rows <= SCALAR_ROWS:
            return np.array([self._row(columns, i) for i in range(rows)], dtype=np.float32)
        block = np.array([columns[c] for c in NUMERIC_COLUMNS], dtype=np.float64)
        values: dict[str, Any] = dict(zip(NUMERIC_COLUMNS, block, strict=True))
        if self.derived:
            inputs = {**values, **{c: columns[c] for c in CATEGORICAL_COLUMNS}}
            values |= terrain.derive(inputs, self.derived)
        return np.vstack([values[c] for c in self._matrix]).T.astype(np.float32)

    def _row(self, columns: Mapping[str, Sequence[Any]], i: int) -> list[float]:
        row: dict[str, Any] = {c: float(columns[c][i]) for c in NUMERIC_COLUMNS}
        row |= {c: columns[c][i] for c in CATEGORICAL_COLUMNS}
        row |= zip(self.derived, self._derive_row(row), strict=True)
        assert self._matrix is not None
        return [row[c] for c in self._matrix]

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.run_columns(_frame_columns(frame))[0]

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.run_columns(_frame_columns(frame))[1]


def _frame_columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {c: frame[c].to_numpy() for c in FEATURE_COLUMNS}


def compare(pipeline: Pipeline, onnx_bytes: bytes, frame: pd.DataFrame) -> Comparison:
    """Predict `frame` with both forms: rows, label mismatches, largest probability gap."""
    predictor = OnnxPredictor(onnx_bytes)
    features = frame[list(FEATURE_COLUMNS)]
    labels, probabilities = predictor.run_columns(_frame_columns(features))
    expected_labels = pipeline.predict(features)
    expected_probabilities = pipeline.predict_proba(features)
    mismatched = int(
        np.count_nonzero(_mismatched_rows(predictor, features, labels, expected_labels))
    )
    diff = float(np.max(np.abs(probabilities - expected_probabilities))) if len(frame) else 0.0
    return Comparison(len(frame), mismatched, diff)


# Rows also checked one request at a time: up to SCALAR_ROWS rows take another code path to
# the graph (Python floats, see OnnxPredictor._features), and it must prove itself too.
SINGLE_ROW_CHECKS = 100


def _mismatched_rows(
    predictor: OnnxPredictor, features: pd.DataFrame, labels: np.ndarray, expected: np.ndarray
) -> np.ndarray:
    """Which rows disagree, in the batch call or, for the first SINGLE_ROW_CHECKS rows, when
    predicted one at a time (the single-row path is a different code path): a row counts once."""
    wrong = np.asarray(labels) != np.asarray(expected)
    checked = min(SINGLE_ROW_CHECKS, len(features))
    single = [predictor.predict(features.iloc[i : i + 1])[0] for i in range(checked)]
    wrong[:checked] |= np.asarray(single) != np.asarray(expected[:checked])
    return wrong


def verify(predictor: OnnxPredictor, verification: pd.DataFrame) -> Comparison:
    """Check an ONNX predictor against the labels the sklearn model gave the verification rows
    (the file log_onnx_artifacts wrote). Probabilities are not in the file: max diff is NaN."""
    labels = predictor.predict(verification)
    expected = verification[EXPECTED_LABEL_COLUMN].to_numpy()
    mismatched = int(np.count_nonzero(_mismatched_rows(predictor, verification, labels, expected)))
    return Comparison(len(verification), mismatched, float("nan"))


def verification_rows(pipeline: Pipeline, holdout: pd.DataFrame) -> pd.DataFrame:
    """Up to MAX_VERIFICATION_ROWS held-out rows (a fixed-seed sample, so it spans every batch)
    with the sklearn model's predicted labels."""
    features = holdout[list(FEATURE_COLUMNS)]
    if len(features) > MAX_VERIFICATION_ROWS:
        features = features.sample(MAX_VERIFICATION_ROWS, random_state=0)
    rows = features.reset_index(drop=True)
    rows[EXPECTED_LABEL_COLUMN] = pipeline.predict(rows).astype(np.int64)
    return rows


def read_verification(path: Path) -> pd.DataFrame:
    dtypes: dict[str, Any] = {c: "int64" for c in NUMERIC_COLUMNS}
    dtypes |= {c: str for c in CATEGORICAL_COLUMNS}
    dtypes[EXPECTED_LABEL_COLUMN] = "int64"
    return pd.read_csv(path, dtype=dtypes, keep_default_na=False)


def log_onnx_artifacts(
    pipeline: Pipeline,
    holdout_frame: pd.DataFrame,
    run_id: str | None = None,
    tracking_uri: str | None = None,
) -> OnnxLogResult:
    """Export `pipeline` to ONNX and log it to the run (default: the active run) as
    onnx/model.onnx plus onnx/verification.csv, only if it gives the same label as the sklearn
    model on every verification row. Otherwise tag the run onnx_status=mismatch (or
    export_failed) with the numbers and log nothing: the API then serves the sklearn model.

    Never raises for a conversion problem: a model without an ONNX form is still a model."""
    import mlflow
    from mlflow.tracking import MlflowClient

    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            raise ValueError("log_onnx_artifacts needs run_id or an active MLflow run")
        run_id = active.info.run_id
    client = MlflowClient(tracking_uri=tracking_uri)
    rows = verification_rows(pipeline, holdout_frame)
    try:
        onnx_bytes = export_onnx(pipeline, rows)
        comparison = compare(pipeline, onnx_bytes, rows)
    except Exception as exc:  # noqa: BLE001 - any converter failure means "no ONNX form"
        log.warning("ONNX export failed for run %s: %s", run_id, exc)
        error = f"{type(exc).__name__}: {exc}"[:500]
        client.set_tag(run_id, "onnx_status", "export_failed")
        client.set_tag(run_id, "onnx_error", error)
        return OnnxLogResult("export_failed", None, error=error)

    tags = {
        "onnx_rows_checked": str(comparison.n_rows),
        "onnx_mismatched_labels": str(comparison.n_mismatched_labels),
        "onnx_max_abs_proba_diff": f"{comparison.max_abs_proba_diff:.3g}",
    }
    if comparison.n_mismatched_labels:
        log.warning("ONNX form of run %s disagrees with sklearn: %s", run_id, comparison)
        for key, value in {"onnx_status": "mismatch", **tags}.items():
            client.set_tag(run_id, key, value)
        return OnnxLogResult("mismatch", comparison)

    with tempfile.TemporaryDirectory(prefix="onnx-") as tmp:
        folder = Path(tmp)
        (folder / MODEL_FILE).write_bytes(onnx_bytes)
        rows.to_csv(folder / VERIFICATION_FILE, index=False)
        client.log_artifacts(run_id, str(folder), ARTIFACT_DIR)
    tags["onnx_size_bytes"] = str(len(onnx_bytes))
    for key, value in {"onnx_status": "ok", **tags}.items():
        client.set_tag(run_id, key, value)
    return OnnxLogResult("ok", comparison, size_bytes=len(onnx_bytes))
