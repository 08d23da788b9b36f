"""Issue 9 §3 on the serving side: the alias moves to a version whose stored objects are gone
(deleted from the S3 store behind the real MLflow server); the API keeps serving the model it
has, says so in /model, and follows the alias again once it points at something servable."""

from __future__ import annotations

import mlflow
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from tests.test_inference.models import Registered, register, small_boosting, small_forest
from tests.test_inference.support import (
    Frames,
    api_client,
    record,
    settings_for,
    unique_name,
    wait_until,
)


def _delete_stored_objects(tracking_uri: str, version: Registered) -> None:
    """Delete the version's model and ONNX objects through MLflow's artifact proxy (the
    objects go from the S3 bucket; the registry still lists the version)."""
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    model_uri = client.get_model_version_download_uri(version.name, version.version)
    run_uri = client.get_run(version.run_id).info.artifact_uri
    get_artifact_repository(model_uri).delete_artifacts()
    get_artifact_repository(run_uri).delete_artifacts("onnx")
    assert client.list_artifacts(version.run_id, "onnx") == []
    assert get_artifact_repository(model_uri).list_artifacts() == []


def test_alias_on_a_version_whose_objects_are_gone(tracking_uri: str, frames: Frames) -> None:
    name = unique_name()
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    client.create_registered_model(name)
    forest = small_forest().fit(frames.train, frames.train_labels)
    good = register(tracking_uri, name, forest, frames.train, frames.holdout, alias="production")
    boosting = small_boosting().fit(frames.train, frames.train_labels)
    gone = register(tracking_uri, name, boosting, frames.train, frames.holdout)
    _delete_stored_objects(tracking_uri, gone)
    row = record(frames.holdout, 7)
    expected = int(forest.predict(frames.holdout.iloc[7:8])[0])

    with api_client(settings_for(tracking_uri, name)) as api:
        info = api.get("/model").json()
        assert (info["version"], info["alias_version"], info["notice"]) == (
            good.version,
            good.version,
            None,
        )
        client.set_registered_model_alias(name, "production", gone.version)
        wait_until(lambda: api.get("/model").json()["last_error"] is not None, "the failed load")
        info = api.get("/model").json()
        assert info["version"] == good.version
        assert info["alias_version"] == gone.version
        notice = info["notice"]
        assert notice.startswith(
            f"alias production points to version {gone.version}, which could not be loaded ("
        )
        assert notice.endswith(f"; still serving version {good.version}")
        assert info["last_error"] and info["last_error"] in notice
        assert api.get("/ready").status_code == 200
        answer = api.post("/predict", json=row)
        assert answer.status_code == 200
        assert answer.json()["model_version"] == good.version
        assert answer.json()["predictions"][0]["cover_type"] == expected

        # Still unservable on the watcher's later rounds (its backoff), still serving.
        wait_until(lambda: api.get("/model").json()["last_check_at"] != info["last_check_at"],
                   "another watcher round")  # fmt: skip
        assert api.get("/model").json()["version"] == good.version

        # Back to a servable version: the notice goes away.
        client.set_registered_model_alias(name, "production", good.version)
        wait_until(lambda: api.get("/model").json()["notice"] is None, "the notice to clear")
        info = api.get("/model").json()
        assert (info["version"], info["alias_version"], info["last_error"]) == (
            good.version,
            good.version,
            None,
        )
