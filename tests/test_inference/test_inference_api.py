"""Every endpoint of the inference API and every kind of bad input, in-process (Litestar's
TestClient) on models registered in the real MLflow server."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from litestar.testing import TestClient
from mlflow.tracking import MlflowClient

from app.covertype import COVER_TYPES, FEATURE_COLUMNS, NUMERIC_RANGES, SOIL_TYPES, WILDERNESS_AREAS
from app.onnx_model import export_onnx, verification_rows
from tests.test_inference.models import register, small_boosting, small_forest
from tests.test_inference.support import (
    Frames,
    Versions,
    api_client,
    record,
    records,
    settings_for,
    unique_name,
)

CLASS_NAMES = [COVER_TYPES[k] for k in sorted(COVER_TYPES)]


def _check_prediction(prediction: dict, expected_label: int) -> None:
    assert prediction["cover_type"] == expected_label
    assert prediction["cover_type_name"] == COVER_TYPES[expected_label]
    probabilities = prediction["probabilities"]
    assert list(probabilities) == CLASS_NAMES
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert max(probabilities, key=probabilities.get) == COVER_TYPES[expected_label]


# --- predictions -----------------------------------------------------------------------------


def test_predict_one_record(serving: TestClient, versions: Versions, frames: Frames) -> None:
    response = serving.post("/predict", json=record(frames.holdout, 0))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == versions.name
    assert body["model_version"] == versions.forest.version
    assert body["model_alias"] == "production"
    assert body["backend"] == "onnx"
    assert len(body["predictions"]) == 1
    expected = int(versions.forest.pipeline.predict(frames.holdout.iloc[:1])[0])
    _check_prediction(body["predictions"][0], expected)
    sklearn_probabilities = versions.forest.pipeline.predict_proba(frames.holdout.iloc[:1])[0]
    answered = body["predictions"][0]["probabilities"]
    for cls, p in zip(versions.forest.pipeline.classes_, sklearn_probabilities, strict=True):
        assert answered[COVER_TYPES[int(cls)]] == pytest.approx(p, abs=1e-5)


def test_predict_a_list_matches_the_registered_model(
    serving: TestClient, versions: Versions, frames: Frames
) -> None:
    rows = frames.holdout.iloc[:500]
    response = serving.post("/predict", json=records(rows))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == versions.forest.version
    expected = versions.forest.pipeline.predict(rows)
    assert [p["cover_type"] for p in body["predictions"]] == expected.tolist()
    for prediction, label in zip(body["predictions"][:50], expected, strict=False):
        _check_prediction(prediction, int(label))


def test_predict_accepts_the_row_limit_exactly(
    production_on_forest: Versions, tracking_uri: str, frames: Frames
) -> None:
    settings = settings_for(tracking_uri, production_on_forest.name, max_rows=25)
    with api_client(settings) as client:
        ok = client.post("/predict", json=records(frames.holdout.iloc[:25]))
        assert ok.status_code == 200
        assert len(ok.json()["predictions"]) == 25
        too_many = client.post("/predict", json=records(frames.holdout.iloc[:26]))
        assert too_many.status_code == 400
        assert "too many rows: at most 25" in too_many.json()["detail"]


# --- bad input -------------------------------------------------------------------------------


def _good(frames: Frames) -> dict[str, object]:
    return record(frames.holdout, 0)


def _without(data: dict, key: str) -> dict:
    return {k: v for k, v in data.items() if k != key}


BAD_RECORDS = [
    # (case id, change to a good record, field named, words the reason must contain)
    ("missing field", lambda r: _without(r, "Slope"), "Slope", "missing required field"),
    ("string for a number", lambda r: {**r, "Elevation": "high"}, "Elevation",
     "expected an integer 0..5000, got string 'high'"),
    ("fraction", lambda r: {**r, "Aspect": 12.5}, "Aspect",
     "expected an integer 0..360, got number 12.5"),
    ("boolean", lambda r: {**r, "Hillshade_9am": True}, "Hillshade_9am", "expected an integer"),
    ("null", lambda r: {**r, "Hillshade_3pm": None}, "Hillshade_3pm", "expected an integer"),
    ("above range", lambda r: {**r, "Elevation": 5001}, "Elevation", "5001 is out of range"),
    ("below range", lambda r: {**r, "Vertical_Distance_To_Hydrology": -1001},
     "Vertical_Distance_To_Hydrology", "-1001 is out of range"),
    ("unknown wilderness", lambda r: {**r, "Wilderness_Area": "Yosemite"}, "Wilderness_Area",
     "unknown value 'Yosemite'; allowed values: " + ", ".join(WILDERNESS_AREAS)),
    ("unknown soil", lambda r: {**r, "Soil_Type": "C9999"}, "Soil_Type",
     "unknown value 'C9999'; allowed values: " + ", ".join(SOIL_TYPES)),
    ("number for a category", lambda r: {**r, "Soil_Type": 29}, "Soil_Type",
     "expected a string, got number; allowed values: C2702"),
    ("unknown field", lambda r: {**r, "Cover_Type": 2}, "Cover_Type", "unknown field"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [case[1:] for case in BAD_RECORDS],
    ids=[case[0] for case in BAD_RECORDS],
)
@pytest.mark.parametrize("as_list", [False, True], ids=["object", "list"])
def test_bad_record_is_a_400_naming_field_and_reason(
    serving: TestClient, frames: Frames, change, field: str, reason: str, as_list: bool
) -> None:
    bad = change(_good(frames))
    body = [_good(frames), _good(frames), bad] if as_list else bad
    response = serving.post("/predict", json=body)
    assert response.status_code == 400, response.text
    answer = response.json()
    (problem,) = answer["extra"]
    assert problem["key"] == field
    assert reason in problem["message"]
    assert field in answer["detail"] and reason in answer["detail"]
    if as_list:
        assert problem["row"] == 2
        assert "row 2" in answer["detail"]
    else:
        assert "row" not in problem


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", "empty list: send at least one record"),
        (b"", "malformed JSON: empty body"),
        (b'{"Elevation": 2596,', "malformed JSON"),
        (b"{bad json}", "malformed JSON"),
        (b"null", "expected a record (JSON object) or a list of them"),
        (b"42", "expected a record (JSON object) or a list of them"),
        (b'"text"', "expected a record (JSON object) or a list of them"),
        (b"[1, 2]", "expected a record (JSON object)"),
        (b"[[]]", "expected a record (JSON object)"),
        # Both were 500s until the fuzzing of issue 9 found them.
        (b'{"\x80levation": 2596}', "malformed JSON: a string is not valid UTF-8"),
        (b'[{"Soil_Type": "C77\xff45"}]', "malformed JSON: a string is not valid UTF-8"),
    ],
    ids=["empty list", "empty body", "truncated", "not json", "null", "number", "string",
         "list of numbers", "list of lists", "bad utf-8 key", "bad utf-8 value"],
)  # fmt: skip
def test_bad_body_is_a_400(serving: TestClient, body: bytes, reason: str) -> None:
    response = serving.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    (problem,) = response.json()["extra"]
    assert problem["key"] == "body"
    assert reason in problem["message"]


def test_whole_number_floats_are_integers(serving: TestClient, frames: Frames) -> None:
    # JSON Schema's "integer" includes 2596.0; the answer is the same as for 2596.
    as_ints = _good(frames)
    as_floats = {k: float(v) if isinstance(v, int) else v for k, v in as_ints.items()}
    first = serving.post("/predict", json=as_ints).json()["predictions"]
    second = serving.post("/predict", json=as_floats).json()["predictions"]
    assert first == second


def test_a_number_too_large_for_a_float_is_a_400(serving: TestClient, frames: Frames) -> None:
    body = json.dumps(_good(frames)).replace('"Slope": ', '"Slope": 1e400, "x": ', 1)
    response = serving.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    (problem,) = response.json()["extra"]
    assert problem == {
        "key": "Slope",
        "message": "number out of range; allowed: integer 0..90",
        "source": "body",
    }


def test_a_deeply_nested_value_is_a_400_naming_the_field(
    serving: TestClient, frames: Frames
) -> None:
    """Found by fuzzing: re-reading the body to name the bad value hit msgspec's depth limit
    (RecursionError, a 500)."""
    body = json.dumps(_good(frames)).replace('"Slope": ', '"Slope": ' + "[" * 5000 + ', "x": ', 1)
    response = serving.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    (problem,) = response.json()["extra"]
    assert problem == {
        "key": "Slope",
        "message": "expected an integer 0..90, got array",
        "source": "body",
    }


def test_too_many_rows_is_a_400(serving: TestClient, frames: Frames) -> None:
    # The default limit (10,000) plus one.
    body = [_good(frames)] * 10_001
    response = serving.post("/predict", json=body)
    assert response.status_code == 400
    assert response.json()["extra"][0]["message"] == (
        "too many rows: at most 10000 records per request"
    )


def test_every_numeric_bound_is_enforced(serving: TestClient, frames: Frames) -> None:
    for column, (low, high) in NUMERIC_RANGES.items():
        for value, ok in ((low, True), (high, True), (low - 1, False), (high + 1, False)):
            response = serving.post("/predict", json={**_good(frames), column: value})
            assert (response.status_code == 200) is ok, (column, value, response.text)
            if not ok:
                assert response.json()["extra"][0]["key"] == column


def test_every_known_category_is_accepted(serving: TestClient, frames: Frames) -> None:
    body = [{**_good(frames), "Soil_Type": s} for s in SOIL_TYPES]
    body += [{**_good(frames), "Wilderness_Area": w} for w in WILDERNESS_AREAS]
    response = serving.post("/predict", json=body)
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == len(SOIL_TYPES) + len(WILDERNESS_AREAS)


def test_wrong_method_and_unknown_path_are_4xx(serving: TestClient) -> None:
    assert serving.get("/predict").status_code == 405
    assert serving.get("/nope").status_code == 404


# --- model, health, readiness, docs --------------------------------------------------------


def test_model_describes_the_served_version(serving: TestClient, versions: Versions) -> None:
    info = serving.get("/model").json()
    assert info["name"] == versions.name
    assert info["alias"] == "production"
    assert info["pinned_version"] is None
    assert info["loaded"] is True
    assert info["version"] == versions.forest.version
    assert info["loaded_from"] == "alias production"
    assert info["run_id"] == versions.forest.run_id
    assert info["metrics"] == {"accuracy": 0.81, "macro_f1": 0.7}
    assert info["trained_batches"] == 4
    assert info["trained_rows"] == 4000
    assert info["training_info"] == {"batches_used": "4", "train_rows": "4000"}
    assert info["backend"] == "onnx"
    assert (
        "reproduced the sklearn model's labels on all 1000 verification rows"
        in (info["backend_reason"])
    )
    assert datetime.fromisoformat(info["loaded_at"]).tzinfo is not None
    assert datetime.fromisoformat(info["last_check_at"]).tzinfo is not None
    assert info["last_error"] is None
    assert info["poll_interval_seconds"] == 0.2


def test_health_and_ready(serving: TestClient, versions: Versions) -> None:
    assert serving.get("/health").json() == {"status": "alive"}
    ready = serving.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert ready.json()["version"] == versions.forest.version


def test_openapi_documents_the_predict_body(serving: TestClient) -> None:
    spec = serving.get("/schema/openapi.json").json()
    assert set(spec["paths"]) == {"/predict", "/model", "/model/reload", "/health", "/ready"}
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    one, many = sorted(body["schema"]["anyOf"], key=lambda s: s.get("type") == "array")
    assert many["type"] == "array" and (many["minItems"], many["maxItems"]) == (1, 10_000)
    assert many["items"] == one
    assert one["required"] == list(FEATURE_COLUMNS)
    assert one["additionalProperties"] is False
    assert sorted(one["properties"]["Soil_Type"]["enum"]) == sorted(SOIL_TYPES)
    assert one["properties"]["Elevation"] == {
        "type": "integer",
        "minimum": 0,
        "maximum": NUMERIC_RANGES["Elevation"][1],
        "description": "integer, 0..5000",
    }
    responses = spec["paths"]["/predict"]["post"]["responses"]
    assert {"200", "400", "503"} <= set(responses)
    assert {"200", "400", "404", "502", "503"} <= set(
        spec["paths"]["/model/reload"]["post"]["responses"]
    )
    assert {"200", "503"} <= set(spec["paths"]["/ready"]["get"]["responses"])
    docs = serving.get("/schema")
    assert docs.status_code == 200 and "html" in docs.headers["content-type"]


# --- backends --------------------------------------------------------------------------------


def _register_single(tracking_uri: str, frames: Frames, **kwargs) -> tuple[str, object]:
    name = unique_name()
    MlflowClient(tracking_uri, registry_uri=tracking_uri).create_registered_model(name)
    pipeline = small_forest().fit(frames.train, frames.train_labels)
    registered = register(
        tracking_uri, name, pipeline, frames.train, frames.holdout, alias="production", **kwargs
    )
    return name, registered


def test_without_onnx_artifacts_it_serves_sklearn_and_says_why(
    tracking_uri: str, frames: Frames
) -> None:
    name, registered = _register_single(tracking_uri, frames, with_onnx=False)
    with api_client(settings_for(tracking_uri, name)) as client:
        info = client.get("/model").json()
        assert info["backend"] == "sklearn"
        assert "has no onnx/ artifacts" in info["backend_reason"]
        rows = frames.holdout.iloc[:200]
        response = client.post("/predict", json=records(rows))
        assert response.status_code == 200
        assert response.json()["backend"] == "sklearn"
        expected = registered.pipeline.predict(rows).tolist()
        assert [p["cover_type"] for p in response.json()["predictions"]] == expected
        one = client.post("/predict", json=record(rows, 3)).json()["predictions"][0]
        assert one["cover_type"] == expected[3]


def test_backend_setting_sklearn_skips_the_onnx_form(
    versions: Versions, tracking_uri: str, production_on_forest
) -> None:
    with api_client(settings_for(tracking_uri, versions.name, backend="sklearn")) as client:
        info = client.get("/model").json()
        assert (info["backend"], info["backend_reason"]) == ("sklearn", "INFERENCE_BACKEND=sklearn")


def test_backend_setting_onnx_refuses_a_version_without_it(
    tracking_uri: str, frames: Frames
) -> None:
    name, _ = _register_single(tracking_uri, frames, with_onnx=False)
    settings = settings_for(tracking_uri, name, backend="onnx")
    with api_client(settings, wait_ready=False) as client:
        from tests.test_inference.support import wait_until

        wait_until(lambda: client.get("/model").json()["last_error"] is not None, "a load error")
        info = client.get("/model").json()
        assert info["loaded"] is False
        assert "INFERENCE_BACKEND=onnx but run" in info["last_error"]
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert "INFERENCE_BACKEND=onnx" in ready.json()["detail"]


def test_an_onnx_form_that_disagrees_at_load_time_is_not_served(
    tracking_uri: str, frames: Frames
) -> None:
    """The run's ONNX file is not the registered model's (a mix-up): the labels logged with it
    give it away when the API loads it, and the API serves the sklearn model instead."""
    name = unique_name()
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    client.create_registered_model(name)
    registered = register(
        tracking_uri,
        name,
        small_forest().fit(frames.train, frames.train_labels),
        frames.train,
        frames.holdout,
        alias="production",
        with_onnx=False,
    )
    other = small_boosting().fit(frames.train.iloc[:300], frames.train_labels.iloc[:300])
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model.onnx").write_bytes(export_onnx(other, frames.holdout))
        verification_rows(registered.pipeline, frames.holdout).to_csv(
            Path(tmp) / "verification.csv", index=False
        )
        client.log_artifacts(registered.run_id, tmp, "onnx")
    disagreeing = int(
        np.count_nonzero(
            other.predict(frames.holdout) != registered.pipeline.predict(frames.holdout)
        )
    )
    assert disagreeing > 0

    with api_client(settings_for(tracking_uri, name)) as api:
        info = api.get("/model").json()
        assert info["backend"] == "sklearn"
        assert (
            f"disagreed with the sklearn labels on {disagreeing} of 1000 verification rows"
            in info["backend_reason"]
        )
        rows = frames.holdout.iloc[:100]
        answered = [
            p["cover_type"] for p in api.post("/predict", json=records(rows)).json()["predictions"]
        ]
        assert answered == registered.pipeline.predict(rows).tolist()


def test_the_pipeline_mismatch_tag_means_sklearn(tracking_uri: str, frames: Frames) -> None:
    from tests.test_inference.models import native_categorical_boosting

    name = unique_name()
    MlflowClient(tracking_uri, registry_uri=tracking_uri).create_registered_model(name)
    pipeline = native_categorical_boosting().fit(frames.train, frames.train_labels)
    registered = register(
        tracking_uri, name, pipeline, frames.train, frames.holdout, alias="production"
    )
    assert registered.onnx is not None and registered.onnx.status == "mismatch"
    with api_client(settings_for(tracking_uri, name)) as api:
        info = api.get("/model").json()
        assert info["backend"] == "sklearn"
        assert "onnx_status=mismatch" in info["backend_reason"]
        rows = frames.holdout.iloc[:100]
        body = api.post("/predict", json=records(rows)).json()
        assert [p["cover_type"] for p in body["predictions"]] == pipeline.predict(rows).tolist()


def test_probabilities_cover_all_seven_classes_even_if_the_model_saw_fewer(
    tracking_uri: str, frames: Frames
) -> None:
    keep = frames.train_labels.isin([1, 2, 5])
    train = frames.train[keep].reset_index(drop=True)
    labels = frames.train_labels[keep].reset_index(drop=True)
    name = unique_name()
    MlflowClient(tracking_uri, registry_uri=tracking_uri).create_registered_model(name)
    pipeline = small_forest().fit(train, labels)
    register(tracking_uri, name, pipeline, train, frames.holdout, alias="production")
    with api_client(settings_for(tracking_uri, name)) as api:
        body = api.post("/predict", json=records(frames.holdout.iloc[:20])).json()
        assert body["backend"] == "onnx"
        for prediction in body["predictions"]:
            probabilities = prediction["probabilities"]
            assert list(probabilities) == CLASS_NAMES
            assert all(probabilities[COVER_TYPES[c]] == 0.0 for c in (3, 4, 6, 7))
            assert prediction["cover_type"] in (1, 2, 5)


def test_responses_are_json(serving: TestClient, frames: Frames) -> None:
    response = serving.post("/predict", json=record(frames.holdout))
    assert response.headers["content-type"].startswith("application/json")
    assert json.loads(response.content)["predictions"]
    frame = pd.DataFrame([record(frames.holdout)])
    assert list(frame.columns) == list(FEATURE_COLUMNS)


# --- settings --------------------------------------------------------------------------------


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import InferenceSettings, SettingsError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    monkeypatch.setenv("MLFLOW_PRODUCTION_ALIAS", "champion")
    monkeypatch.setenv("INFERENCE_POLL_SECONDS", "2.5")
    monkeypatch.setenv("INFERENCE_MAX_ROWS", "500")
    monkeypatch.setenv("INFERENCE_BACKEND", "SKLEARN")
    monkeypatch.setenv("INFERENCE_BATCH_THREADS", "3")
    settings = InferenceSettings()
    assert settings.batch_threads == 3
    assert settings.mlflow_tracking_uri == "http://mlflow.example:5000"
    assert (settings.model_name, settings.model_alias) == ("forest-cover", "champion")
    assert (settings.poll_interval_seconds, settings.max_rows) == (2.5, 500)
    assert settings.backend == "sklearn"
    monkeypatch.setenv("INFERENCE_BACKEND", "tensorflow")
    with pytest.raises(SettingsError, match="INFERENCE_BACKEND must be one of auto, onnx, sklearn"):
        InferenceSettings()
    monkeypatch.setenv("INFERENCE_BACKEND", "auto")
    monkeypatch.setenv("INFERENCE_MAX_ROWS", "0")
    with pytest.raises(SettingsError, match="INFERENCE_MAX_ROWS must be >= 1"):
        InferenceSettings()


def test_configure_mlflow_client_keeps_what_the_operator_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from app.inference.registry import configure_mlflow_client
    from app.settings import InferenceSettings

    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "7"
    monkeypatch.setattr(os, "environ", environ)
    configure_mlflow_client(InferenceSettings(mlflow_http_retries=3))
    assert environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    assert environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    assert environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
