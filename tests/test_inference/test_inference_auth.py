"""Who may do what on the inference API (app/inference/auth.py), against the real app serving a
real registered version: the admin token for every request that changes state, API keys for
/predict when switched on, and an OpenAPI spec that says so."""

from __future__ import annotations

import httpx
import pytest
from litestar.testing import TestClient

from app.inference.app import create_app
from app.settings import InferenceSettings
from tests.test_inference.support import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    Frames,
    Versions,
    api_client,
    api_process,
    record,
    settings_for,
    wait_until,
)


def _anonymous(client: TestClient) -> TestClient:
    client.headers.pop("Authorization", None)
    return client


def test_reload_needs_the_admin_token(production_on_forest: Versions, tracking_uri: str) -> None:
    with api_client(settings_for(tracking_uri, production_on_forest.name)) as api:
        _anonymous(api)
        missing = api.post("/model/reload")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        for wrong in (f"Bearer {ADMIN_TOKEN[:-1]}x", "Bearer x", f"Basic {ADMIN_TOKEN}"):
            answer = api.post("/model/reload", headers={"Authorization": wrong})
            # A token of another scheme is no token at all.
            assert answer.status_code == (401 if wrong.startswith("Basic") else 403), wrong
            assert ADMIN_TOKEN not in answer.text
        # Refused before any work: the pinned version did not change.
        refused = api.post(
            "/model/reload", params={"version": production_on_forest.boosting.version}
        )
        assert refused.status_code == 401
        assert api.get("/model").json()["version"] == production_on_forest.forest.version

        right = api.post("/model/reload", headers=ADMIN_HEADERS)
        assert right.status_code == 200 and right.json()["outcome"] == "unchanged"
        # What changes nothing stays open.
        assert api.get("/model").status_code == 200
        assert api.get("/ready").status_code == 200
        assert api.get("/health").status_code == 200


def test_without_a_configured_token_every_reload_is_refused(
    production_on_forest: Versions, tracking_uri: str
) -> None:
    settings = settings_for(tracking_uri, production_on_forest.name, admin_token=None)
    with api_client(settings) as api:
        _anonymous(api)
        assert api.post("/model/reload").status_code == 401
        assert api.post("/model/reload", headers=ADMIN_HEADERS).status_code == 403
        assert api.post("/model/reload", headers={"Authorization": "Bearer "}).status_code == 401


def test_predict_is_open_by_default(serving: TestClient, frames: Frames) -> None:
    _anonymous(serving)
    assert serving.post("/predict", json=record(frames.holdout)).status_code == 200


def test_predict_needs_an_api_key_when_switched_on(
    production_on_forest: Versions, tracking_uri: str, frames: Frames
) -> None:
    settings = settings_for(
        tracking_uri,
        production_on_forest.name,
        require_api_key=True,
        api_keys=("k1" * 16, "k2" * 16),
    )
    body = record(frames.holdout)
    with api_client(settings) as api:
        _anonymous(api)
        missing = api.post("/predict", json=body)
        assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
        assert api.post("/predict", json=body, headers={"X-API-Key": "k3" * 16}).status_code == 403
        for key in ("k1" * 16, "k2" * 16, ADMIN_TOKEN):
            assert api.post("/predict", json=body, headers={"X-API-Key": key}).status_code == 200
        # The admin token also works as a bearer token; an API key does not open reloads.
        assert api.post("/predict", json=body, headers=ADMIN_HEADERS).status_code == 200
        key_as_bearer = {"Authorization": f"Bearer {'k1' * 16}"}
        assert api.post("/model/reload", headers=key_as_bearer).status_code == 403
        spec = api.get("/schema/openapi.json").json()
    predict = spec["paths"]["/predict"]["post"]
    assert predict["security"] == [{"apiKey": []}, {"adminToken": []}]
    assert {"401", "403"} <= set(predict["responses"])


def test_openapi_documents_the_security_schemes(serving: TestClient) -> None:
    spec = serving.get("/schema/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["adminToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["adminToken"]["description"],
    }
    assert (schemes["apiKey"]["type"], schemes["apiKey"]["in"], schemes["apiKey"]["name"]) == (
        "apiKey",
        "header",
        "X-API-Key",
    )
    reload = spec["paths"]["/model/reload"]["post"]
    assert reload["security"] == [{"adminToken": []}]
    assert {"401", "403"} <= set(reload["responses"])
    # Open by default: no security requirement, no 401 on /predict or the read-only routes.
    assert "security" not in spec["paths"]["/predict"]["post"]
    assert "401" not in spec["paths"]["/predict"]["post"]["responses"]
    assert "security" not in spec["paths"]["/model"]["get"]


def test_the_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCE_API_TOKEN", "t" * 30)
    monkeypatch.setenv("INFERENCE_REQUIRE_API_KEY", "true")
    monkeypatch.setenv("INFERENCE_API_KEYS", " a1 , b2,,")
    settings = InferenceSettings()
    assert settings.admin_token == "t" * 30
    assert settings.require_api_key is True
    assert settings.api_keys == ("a1", "b2")
    monkeypatch.delenv("INFERENCE_API_TOKEN")
    monkeypatch.delenv("INFERENCE_REQUIRE_API_KEY")
    assert InferenceSettings().admin_token is None
    assert InferenceSettings().require_api_key is False
    # An app without a token builds (and refuses every reload, above).
    assert create_app(InferenceSettings(mlflow_tracking_uri="http://127.0.0.1:9"))


def test_the_process_takes_its_token_from_the_environment(
    production_on_forest: Versions, tracking_uri: str, tmp_path
) -> None:  # noqa: ANN001
    token = "p" * 40
    env = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_REGISTERED_MODEL": production_on_forest.name,
        "INFERENCE_API_TOKEN": token,
    }
    with api_process(env, tmp_path / "inference-api.log") as url:
        wait_until(lambda: httpx.get(f"{url}/ready").status_code == 200, "the API to be ready")
        assert httpx.post(f"{url}/model/reload", timeout=60).status_code == 401
        assert httpx.post(f"{url}/model/reload", headers=ADMIN_HEADERS).status_code == 403
        ok = httpx.post(
            f"{url}/model/reload", headers={"Authorization": f"Bearer {token}"}, timeout=120
        )
        assert ok.status_code == 200
    # The token never reaches the log.
    assert token not in (tmp_path / "inference-api.log").read_text()
