"""How the served model changes: start before any model, follow the alias, explicit reloads,
failed loads, swaps under load, and MLflow going down and coming back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from litestar.testing import TestClient
from mlflow.tracking import MlflowClient

from tests.mlflow_server import MlflowServer
from tests.test_inference.models import EXPERIMENT, register, register_broken, small_forest
from tests.test_inference.support import (
    Frames,
    Versions,
    api_client,
    record,
    records,
    settings_for,
    unique_name,
    wait_until,
)


def _client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


def _served_version(api: TestClient) -> str | None:
    return api.get("/model").json()["version"]


def test_starts_before_any_model_exists_then_serves_it(tracking_uri: str, frames: Frames) -> None:
    name = unique_name()
    with api_client(settings_for(tracking_uri, name), wait_ready=False) as api:
        assert api.get("/health").json() == {"status": "alive"}
        wait_until(lambda: api.get("/model").json()["last_error"] is not None, "a first check")
        ready = api.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False
        predict = api.post("/predict", json=record(frames.holdout))
        assert predict.status_code == 503
        detail = predict.json()["detail"]
        assert f"no model loaded yet: waiting for {name} alias production" in detail
        assert "not found" in detail
        assert predict.headers["retry-after"]
        info = api.get("/model").json()
        assert info["loaded"] is False and info["version"] is None
        # Bad input is still a 400, model or not.
        assert api.post("/predict", json=[]).status_code == 400

        # A version without the alias is not enough.
        client = _client(tracking_uri)
        client.create_registered_model(name)
        pipeline = small_forest().fit(frames.train, frames.train_labels)
        registered = register(tracking_uri, name, pipeline, frames.train, frames.holdout)
        checked = api.get("/model").json()["last_check_at"]
        wait_until(lambda: api.get("/model").json()["last_check_at"] != checked, "another check")
        assert api.get("/ready").status_code == 503
        assert "alias production not found" in api.get("/model").json()["last_error"]

        client.set_registered_model_alias(name, "production", registered.version)
        wait_until(lambda: api.get("/ready").status_code == 200, "the model to load")
        answer = api.post("/predict", json=record(frames.holdout))
        assert answer.status_code == 200
        assert answer.json()["model_version"] == registered.version == "1"
        info = api.get("/model").json()
        assert info["last_error"] is None
        assert info["backend"] == "onnx"


def test_watcher_follows_the_alias(
    production_on_forest: Versions, tracking_uri: str, frames: Frames
) -> None:
    versions = production_on_forest
    rows = frames.holdout.iloc[:300]
    with api_client(settings_for(tracking_uri, versions.name)) as api:
        assert _served_version(api) == versions.forest.version
        _client(tracking_uri).set_registered_model_alias(
            versions.name, "production", versions.boosting.version
        )
        wait_until(lambda: _served_version(api) == versions.boosting.version, "the swap to v2")
        body = api.post("/predict", json=records(rows)).json()
        assert body["model_version"] == versions.boosting.version
        assert body["backend"] == "onnx"
        expected = versions.boosting.pipeline.predict(rows)
        assert [p["cover_type"] for p in body["predictions"]] == expected.tolist()
        info = api.get("/model").json()
        assert info["metrics"] == {"accuracy": 0.83, "macro_f1": 0.72}
        assert info["trained_batches"] == 5

        # And back: the alias is the truth, whichever way it moves.
        _client(tracking_uri).set_registered_model_alias(
            versions.name, "production", versions.forest.version
        )
        wait_until(lambda: _served_version(api) == versions.forest.version, "the swap back")


def test_reload_endpoint(production_on_forest: Versions, tracking_uri: str) -> None:
    versions = production_on_forest
    v1, v2 = versions.forest.version, versions.boosting.version
    with api_client(settings_for(tracking_uri, versions.name)) as api:
        same = api.post("/model/reload")
        assert same.status_code == 200
        assert same.json()["outcome"] == "unchanged"
        assert same.json()["model"]["version"] == v1

        pinned = api.post("/model/reload", params={"version": v2})
        assert pinned.status_code == 200
        assert pinned.json()["outcome"] == "loaded"
        assert pinned.json()["model"]["version"] == v2
        assert pinned.json()["model"]["pinned_version"] == v2
        assert pinned.json()["model"]["loaded_from"] == f"version {v2}"
        # The watcher does not undo an explicit version while the alias stays on v1.
        checked = api.get("/model").json()["last_check_at"]
        wait_until(lambda: api.get("/model").json()["last_check_at"] != checked, "a check")
        assert _served_version(api) == v2
        assert api.post("/predict", json=[]).status_code == 400

        # No parameters: back to following the configured alias.
        back = api.post("/model/reload")
        assert back.json()["outcome"] == "loaded"
        assert back.json()["model"]["version"] == v1
        assert back.json()["model"]["pinned_version"] is None

        missing = api.post("/model/reload", params={"version": 999})
        assert missing.status_code == 404
        assert "version 999" in missing.json()["detail"]
        assert _served_version(api) == v1

        no_alias = api.post("/model/reload", params={"alias": "staging"})
        assert no_alias.status_code == 404
        assert "alias staging not found" in no_alias.json()["detail"]
        assert _served_version(api) == v1

        _client(tracking_uri).set_registered_model_alias(versions.name, "challenger", v2)
        other_alias = api.post("/model/reload", params={"alias": "challenger"})
        assert other_alias.status_code == 200
        assert other_alias.json()["model"]["alias"] == "challenger"
        assert other_alias.json()["model"]["version"] == v2
        _client(tracking_uri).delete_registered_model_alias(versions.name, "challenger")

        for params in ({"version": 0}, {"version": "two"}, {"version": 1, "alias": "production"}):
            bad = api.post("/model/reload", params=params)
            assert bad.status_code == 400, (params, bad.text)
            assert bad.json()["extra"][0]["key"] == "version"


def test_a_failed_load_keeps_the_old_model_serving(tracking_uri: str, frames: Frames) -> None:
    name = unique_name()
    client = _client(tracking_uri)
    client.create_registered_model(name)
    pipeline = small_forest().fit(frames.train, frames.train_labels)
    good = register(tracking_uri, name, pipeline, frames.train, frames.holdout, alias="production")
    broken = register_broken(tracking_uri, name)
    with api_client(settings_for(tracking_uri, name)) as api:
        assert _served_version(api) == good.version
        client.set_registered_model_alias(name, "production", broken.version)
        wait_until(lambda: api.get("/model").json()["last_error"] is not None, "the failed load")
        info = api.get("/model").json()
        assert info["version"] == good.version
        assert f"version {broken.version} could not be loaded" in info["last_error"]
        assert api.get("/ready").status_code == 200
        answer = api.post("/predict", json=record(frames.holdout))
        assert answer.status_code == 200
        assert answer.json()["model_version"] == good.version

        explicit = api.post("/model/reload", params={"version": broken.version})
        assert explicit.status_code == 502
        assert "could not be loaded" in explicit.json()["detail"]
        assert _served_version(api) == good.version

        # A version whose files never reached the store: the store is broken (502), the
        # version is not unknown (404).
        empty_run = client.create_run(client.get_experiment_by_name(EXPERIMENT).experiment_id)
        client.set_terminated(empty_run.info.run_id)
        no_files = client.create_model_version(
            name, f"{empty_run.info.artifact_uri}/model", run_id=empty_run.info.run_id
        )
        gone = api.post("/model/reload", params={"version": no_files.version})
        assert gone.status_code == 502, gone.text
        assert "missing from the artifact store" in gone.json()["detail"]
        assert _served_version(api) == good.version

        client.set_registered_model_alias(name, "production", good.version)
        wait_until(lambda: api.get("/model").json()["last_error"] is None, "the error to clear")
        assert _served_version(api) == good.version


def test_a_swap_never_mixes_versions_within_a_request(
    production_on_forest: Versions, tracking_uri: str, frames: Frames
) -> None:
    """Batches keep arriving while the served version flips between v1 and v2; every answer is
    entirely one version's, and says which."""
    versions = production_on_forest
    rows = frames.holdout.iloc[:1000]
    expected = {
        versions.forest.version: versions.forest.pipeline.predict(rows).tolist(),
        versions.boosting.version: versions.boosting.pipeline.predict(rows).tolist(),
    }
    differing = np.count_nonzero(
        np.array(expected[versions.forest.version]) != np.array(expected[versions.boosting.version])
    )
    assert differing > 20
    body = records(rows)
    seen: dict[str, int] = {}
    failures: list[str] = []
    stop = threading.Event()

    with api_client(settings_for(tracking_uri, versions.name, backend="sklearn")) as api:

        def predict_forever() -> None:
            while not stop.is_set():
                response = api.post("/predict", json=body)
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                answer = response.json()
                version = answer["model_version"]
                labels = [p["cover_type"] for p in answer["predictions"]]
                if labels != expected[version]:
                    failures.append(f"rows of version {version} do not all match it")
                seen[version] = seen.get(version, 0) + 1

        workers = [threading.Thread(target=predict_forever) for _ in range(3)]
        for worker in workers:
            worker.start()
        try:
            for i in range(8):
                target = versions.boosting.version if i % 2 == 0 else versions.forest.version
                assert api.post("/model/reload", params={"version": target}).status_code == 200
                time.sleep(0.3)
        finally:
            stop.set()
            for worker in workers:
                worker.join(60)
    assert failures == []
    assert set(seen) == set(expected), seen


@pytest.fixture
def restore_mlflow(mlflow_server: MlflowServer) -> Iterator[MlflowServer]:
    yield mlflow_server
    if not mlflow_server.running:
        mlflow_server.start()


def test_mlflow_down_at_start_and_again_later(
    restore_mlflow: MlflowServer, tracking_uri: str, frames: Frames
) -> None:
    server = restore_mlflow
    name = unique_name()
    _client(tracking_uri).create_registered_model(name)
    pipeline = small_forest().fit(frames.train, frames.train_labels)
    registered = register(
        tracking_uri, name, pipeline, frames.train, frames.holdout, alias="production"
    )

    server.stop()
    with api_client(settings_for(tracking_uri, name), wait_ready=False) as api:
        # Down at start: the API is up, says why it cannot predict, and keeps trying.
        assert api.get("/health").status_code == 200
        wait_until(lambda: api.get("/model").json()["last_error"] is not None, "a failed check")
        assert "Connection refused" in api.get("/model").json()["last_error"]
        assert api.get("/ready").status_code == 503
        refused = api.post("/predict", json=record(frames.holdout))
        assert refused.status_code == 503
        assert "Connection refused" in refused.json()["detail"]

        server.start()
        wait_until(lambda: api.get("/ready").status_code == 200, "the model after MLflow is back")
        assert api.post("/predict", json=record(frames.holdout)).json()["model_version"] == (
            registered.version
        )

        # Down while serving: predictions go on from memory; /model says MLflow is away.
        server.stop()
        wait_until(lambda: api.get("/model").json()["last_error"] is not None, "the outage")
        assert api.get("/ready").status_code == 200
        answer = api.post("/predict", json=records(frames.holdout.iloc[:50]))
        assert answer.status_code == 200
        assert answer.json()["model_version"] == registered.version
        reload = api.post("/model/reload")
        assert reload.status_code == 503
        assert "Connection refused" in reload.json()["detail"]

        server.start()
        wait_until(lambda: api.get("/model").json()["last_error"] is None, "MLflow to be back")
        assert api.get("/model").json()["version"] == registered.version
