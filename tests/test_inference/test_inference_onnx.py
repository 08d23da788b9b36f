"""The ONNX contract the pipeline calls (app/onnx_model.py), against real models and a real
MLflow server."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.dummy import DummyClassifier
from sklearn.pipeline import Pipeline

from app import onnx_model
from app.onnx_model import OnnxPredictor, compare, export_onnx, log_onnx_artifacts
from tests.test_inference.models import (
    EXPERIMENT,
    feature_pipeline,
    native_categorical_boosting,
    small_boosting,
    small_forest,
)
from tests.test_inference.support import Frames


@pytest.fixture(scope="module")
def forest(frames: Frames) -> Pipeline:
    return small_forest().fit(frames.train, frames.train_labels)


@pytest.fixture(scope="module")
def boosting(frames: Frames) -> Pipeline:
    return small_boosting().fit(frames.train, frames.train_labels)


@pytest.mark.parametrize("which", ["forest", "boosting"])
def test_onnx_form_gives_the_same_labels_and_probabilities(
    which: str, request: pytest.FixtureRequest, frames: Frames
) -> None:
    pipeline: Pipeline = request.getfixturevalue(which)
    data = export_onnx(pipeline, frames.holdout)
    n_rows, mismatched, max_diff = compare(pipeline, data, frames.holdout)
    assert n_rows == len(frames.holdout) == 1000
    assert mismatched == 0
    # float32 arithmetic in onnxruntime against float64 in sklearn; boosting sums 40 rounds.
    assert max_diff < 1e-3

    predictor = OnnxPredictor(data)
    assert predictor.classes == tuple(int(c) for c in pipeline.classes_)
    np.testing.assert_array_equal(
        predictor.predict(frames.holdout), pipeline.predict(frames.holdout)
    )
    np.testing.assert_allclose(
        predictor.predict_proba(frames.holdout), pipeline.predict_proba(frames.holdout), atol=1e-3
    )


def test_onnx_inputs_are_one_column_each_with_the_contract_types(
    forest: Pipeline, frames: Frames
) -> None:
    predictor = OnnxPredictor(export_onnx(forest, frames.holdout.head(3)))
    assert predictor.input_types == {
        **{c: np.float32 for c in onnx_model.NUMERIC_COLUMNS},
        "Wilderness_Area": np.object_,
        "Soil_Type": np.object_,
    }
    # Plain per-column sequences, as the API passes them.
    columns = {c: list(frames.holdout[c].iloc[:4]) for c in frames.holdout.columns}
    labels, probabilities = predictor.run_columns(columns)
    np.testing.assert_array_equal(labels, forest.predict(frames.holdout.iloc[:4]))
    assert probabilities.shape == (4, len(forest.classes_))


def test_the_hist_gradient_boosting_workaround_is_scoped(
    boosting: Pipeline, frames: Frames
) -> None:
    from skl2onnx.common import tree_ensemble

    before = tree_ensemble.add_node
    export_onnx(boosting, frames.holdout.head(3))
    assert tree_ensemble.add_node is before


def test_a_model_without_a_converter_is_reported_not_raised(
    frames: Frames, tracking_uri: str
) -> None:
    pipeline = feature_pipeline(DummyClassifier()).fit(frames.train, frames.train_labels)
    with pytest.raises(Exception, match="DummyClassifier"):
        export_onnx(pipeline, frames.holdout)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run() as run:
        result = log_onnx_artifacts(pipeline, frames.holdout)
    assert result.status == "export_failed"
    assert "DummyClassifier" in (result.error or "")
    client = MlflowClient(tracking_uri)
    assert client.get_run(run.info.run_id).data.tags["onnx_status"] == "export_failed"
    assert client.list_artifacts(run.info.run_id, "onnx") == []


def test_log_onnx_artifacts_logs_model_and_verification_rows(
    boosting: Pipeline, frames: Frames, tracking_uri: str, tmp_path
) -> None:
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run() as run:
        pass
    # After the run ended too: the pipeline may call it with an explicit run id.
    result = log_onnx_artifacts(boosting, frames.holdout, run_id=run.info.run_id)
    assert result.status == "ok"
    assert result.comparison is not None and result.comparison.n_mismatched_labels == 0

    client = MlflowClient(tracking_uri)
    tags = client.get_run(run.info.run_id).data.tags
    assert tags["onnx_status"] == "ok"
    assert tags["onnx_rows_checked"] == "1000"
    assert tags["onnx_mismatched_labels"] == "0"
    names = sorted(f.path for f in client.list_artifacts(run.info.run_id, "onnx"))
    assert names == ["onnx/model.onnx", "onnx/verification.csv"]

    # What the API downloads at load time, through the server's artifact proxy.
    folder = client.download_artifacts(run.info.run_id, "onnx", str(tmp_path))
    model_bytes = (tmp_path / "onnx" / "model.onnx").read_bytes()
    assert int(tags["onnx_size_bytes"]) == len(model_bytes)
    rows = onnx_model.read_verification(tmp_path / "onnx" / "verification.csv")
    assert folder.endswith("onnx")
    assert len(rows) == 1000
    expected = boosting.predict(rows[list(onnx_model.FEATURE_COLUMNS)])
    np.testing.assert_array_equal(rows[onnx_model.EXPECTED_LABEL_COLUMN].to_numpy(), expected)
    result = onnx_model.verify(OnnxPredictor(model_bytes), rows)
    assert (result.n_rows, result.n_mismatched_labels) == (1000, 0)


def test_verification_rows_are_capped_at_1000(forest: Pipeline, frames: Frames) -> None:
    import pandas as pd

    big = pd.concat([frames.train, frames.holdout], ignore_index=True)
    rows = onnx_model.verification_rows(forest, big)
    assert len(rows) == onnx_model.MAX_VERIFICATION_ROWS
    small = onnx_model.verification_rows(forest, frames.holdout.head(10))
    assert len(small) == 10


def test_a_disagreeing_onnx_form_is_not_logged(frames: Frames, tracking_uri: str) -> None:
    # skl2onnx converts native categorical splits of HistGradientBoosting without error but
    # ignores them: a genuine converter disagreement, which must never reach serving.
    pipeline = native_categorical_boosting().fit(frames.train, frames.train_labels)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run() as run:
        result = log_onnx_artifacts(pipeline, frames.holdout)
    assert result.status == "mismatch"
    assert result.comparison is not None and result.comparison.n_mismatched_labels > 0
    client = MlflowClient(tracking_uri)
    tags = client.get_run(run.info.run_id).data.tags
    assert tags["onnx_status"] == "mismatch"
    assert int(tags["onnx_mismatched_labels"]) == result.comparison.n_mismatched_labels
    assert client.list_artifacts(run.info.run_id, "onnx") == []


def test_log_onnx_artifacts_needs_a_run(forest: Pipeline, frames: Frames) -> None:
    assert mlflow.active_run() is None
    with pytest.raises(ValueError, match="active MLflow run"):
        log_onnx_artifacts(forest, frames.holdout)


def test_the_forest_is_shipped_compact(forest: Pipeline, frames: Frames) -> None:
    """Zero leaf weights and default-valued node attributes are dropped; the answers are
    those of the converter's own form (compare above checks them against sklearn)."""
    import onnx

    model = onnx.load_from_string(export_onnx(forest, frames.holdout))
    (trees,) = [n for n in model.graph.node if n.op_type == "TreeEnsembleClassifier"]
    attributes = {a.name: a for a in trees.attribute}
    assert "nodes_hitrates" not in attributes
    weights = np.asarray(attributes["class_weights"].floats)
    assert len(weights) > 0 and np.all(weights != 0)
    assert len(attributes["class_ids"].ints) == len(weights)
    assert len(attributes["class_nodeids"].ints) == len(weights)
