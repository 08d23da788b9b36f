"""Fixtures for the inference API tests: real models registered in the shared real MLflow
server (MySQL backend, artifacts proxied to S3), and the API built on them.

Every test uses its own registered-model name, so tests never see each other's versions or
alias moves, nor those of the pipeline tests sharing the server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from litestar.testing import TestClient
from mlflow.tracking import MlflowClient

from tests.mlflow_server import MlflowServer
from tests.test_inference.models import load_frame, register, small_boosting, small_forest
from tests.test_inference.support import (
    SAMPLE_CSV,
    TRAIN_ROWS,
    Frames,
    Versions,
    api_client,
    settings_for,
    unique_name,
)


@pytest.fixture(scope="session")
def frames() -> Frames:
    features, labels = load_frame(SAMPLE_CSV)
    return Frames(
        features.iloc[:TRAIN_ROWS].reset_index(drop=True),
        labels.iloc[:TRAIN_ROWS].reset_index(drop=True),
        features.iloc[TRAIN_ROWS:].reset_index(drop=True),
        labels.iloc[TRAIN_ROWS:].reset_index(drop=True),
    )


@pytest.fixture(scope="session")
def tracking_uri(mlflow_server: MlflowServer) -> str:
    return mlflow_server.tracking_uri


@pytest.fixture(autouse=True)
def _fail_fast_mlflow_client(monkeypatch: pytest.MonkeyPatch) -> None:
    # What `python -m app.inference` sets (configure_mlflow_client): without it a refused
    # connection is retried for about two minutes before the watcher hears of it.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


@pytest.fixture(scope="session")
def versions(tracking_uri: str, frames: Frames) -> Versions:
    name = unique_name()
    MlflowClient(tracking_uri, registry_uri=tracking_uri).create_registered_model(name)
    forest = register(
        tracking_uri,
        name,
        small_forest().fit(frames.train, frames.train_labels),
        frames.train,
        frames.holdout,
        alias="production",
        metrics={"accuracy": 0.81, "macro_f1": 0.7},
        params={"batches_used": 4, "train_rows": TRAIN_ROWS, "model_type": "RandomForest"},
    )
    boosting = register(
        tracking_uri,
        name,
        small_boosting().fit(frames.train, frames.train_labels),
        frames.train,
        frames.holdout,
        metrics={"accuracy": 0.83, "macro_f1": 0.72},
        params={"batches_used": 5, "train_rows": TRAIN_ROWS},
    )
    assert forest.onnx is not None and forest.onnx.status == "ok"
    assert boosting.onnx is not None and boosting.onnx.status == "ok"
    return Versions(name, forest, boosting)


@pytest.fixture
def production_on_forest(versions: Versions, tracking_uri: str) -> Versions:
    """`versions` with alias production back on the forest (v1), whatever a test did before."""
    MlflowClient(tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(
        versions.name, "production", versions.forest.version
    )
    return versions


@pytest.fixture
def serving(production_on_forest: Versions, tracking_uri: str) -> Iterator[TestClient]:
    """The API serving the forest (v1) of `versions` from its ONNX form."""
    with api_client(settings_for(tracking_uri, production_on_forest.name)) as client:
        yield client
