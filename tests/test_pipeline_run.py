"""A whole pipeline run against the real MLflow server (MySQL backend, S3 artifacts)."""

from __future__ import annotations

import json
import os

import boto3
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from app.pipeline import (
    RunMetadata,
    TrainedRun,
    TrainingResult,
    register_and_promote,
    run_training,
    train_and_log,
)
from app.pipeline.evaluate import score
from app.pipeline.tracking import tracking_uri
from app.settings import MlflowSettings, TrainingSettings
from tests.mlflow_server import ARTIFACT_BUCKET, MlflowServer


@pytest.fixture(scope="module")
def settings(mlflow_server: MlflowServer) -> MlflowSettings:
    return MlflowSettings(
        tracking_uri=mlflow_server.tracking_uri,
        experiment_name="forest_cover-pipeline-run",
        registered_model_name="forest-cover-pipeline-run",
        production_alias="production",
    )


# A tracking URI the caller of run_training had chosen; the run must give it back untouched.
CALLER_URI = "http://callers-own-setting.invalid:5000"
GLOBALS_AFTER_RUN: dict[str, object] = {}


@pytest.fixture(scope="module")
def finished_run(covertype_frames, settings, small_candidates) -> TrainingResult:
    train, holdout = covertype_frames
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", CALLER_URI)
        mlflow.set_tracking_uri(CALLER_URI)
        result = run_training(
            train,
            holdout,
            RunMetadata(group_number=3, data_fingerprint="f" * 64, dag_run_id="manual__2026-01-01"),
            mlflow_settings=settings,
            training_settings=TrainingSettings(),
            candidates=small_candidates,
        )
        GLOBALS_AFTER_RUN.update(
            env=os.environ.get("MLFLOW_TRACKING_URI"),
            uri=mlflow.get_tracking_uri(),
            active_run=mlflow.active_run(),
        )
        mlflow.set_tracking_uri(None)
    return result


def test_run_logs_parent_and_one_child_per_candidate(finished_run, settings, small_candidates):
    client = MlflowClient(settings.tracking_uri)
    parent = client.get_run(finished_run.parent_run_id)
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["group_number"] == "3"
    assert tags["batches"] == ",".join(str(b) for b in range(1, 11))
    assert tags["data_fingerprint"] == "f" * 64
    assert tags["dag_run_id"] == "manual__2026-01-01"
    assert tags["champion"] == finished_run.champion.candidate
    assert tags["model_version"] == finished_run.model_version
    assert tags["promotion_decision"] == "promoted"
    assert "candidates.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    experiment = client.get_experiment_by_name(settings.experiment_name)
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert sorted(c.data.tags["candidate"] for c in children) == sorted(
        c.name for c in small_candidates
    )
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["data_fingerprint"] == "f" * 64
        metrics = child.data.metrics
        for key in ("accuracy", "macro_f1", "fit_seconds", "predict_row_ms", "model_size_bytes"):
            assert key in metrics, key
        assert {f"f1_class_{n}" for n in range(1, 8)} <= set(metrics)
        assert metrics["train_rows"] == 4000 and metrics["holdout_rows"] == 1000
        assert metrics["batches"] == 10
        assert 0.3 < metrics["accuracy"] <= 1.0
        files = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"confusion_matrix.svg", "evaluation.json"} <= files
        with open(client.download_artifacts(child.info.run_id, "confusion_matrix.svg")) as fh:
            assert fh.read().startswith("<svg")
    by_name = {c.data.tags["candidate"]: c for c in children}
    assert by_name["random_forest"].data.params["n_estimators"] == "8"
    assert by_name["logistic_regression"].data.params["max_iter"] == "200"


def test_champion_registered_with_signature_and_alias_set(finished_run, settings, covertype_frames):
    client = MlflowClient(settings.tracking_uri)
    name = settings.registered_model_name
    version = client.get_model_version_by_alias(name, "production")
    assert version.version == finished_run.model_version
    assert version.tags["promotion_decision"] == "promoted"
    assert version.tags["candidate"] == finished_run.champion.candidate
    assert version.tags["data_fingerprint"] == "f" * 64
    assert version.run_id == finished_run.champion_run_id

    with tracking_uri(settings.tracking_uri):
        model = mlflow.pyfunc.load_model(f"models:/{name}@production")
        served = mlflow.sklearn.load_model(f"models:/{name}@production")
    inputs = model.metadata.get_input_schema().input_names()
    assert len(inputs) == 12 and inputs[-2:] == ["Wilderness_Area", "Soil_Type"]
    # What the registry serves is the model that was measured: same score on the same rows.
    _, holdout = covertype_frames
    assert score(served, holdout) == finished_run.champion.scores


def test_the_run_leaves_no_global_mlflow_setting_behind(finished_run, settings):
    assert settings.tracking_uri != CALLER_URI
    assert GLOBALS_AFTER_RUN == {"env": CALLER_URI, "uri": CALLER_URI, "active_run": None}


def test_model_artifacts_land_in_s3_through_the_proxy(finished_run, settings, s3):
    # The test process has no S3 credentials: whatever is in the bucket came via the server.
    assert boto3.Session().get_credentials() is None
    assert "MLFLOW_S3_ENDPOINT_URL" not in os.environ
    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(finished_run.champion_run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    keys: list[str] = []
    for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=ARTIFACT_BUCKET):
        keys += [o["Key"] for o in page.get("Contents", [])]
    model_id = finished_run.model_uri.removeprefix("models:/")
    model_keys = [k for k in keys if f"/models/{model_id}/" in k]
    assert any(k.endswith("/MLmodel") for k in model_keys), keys[:20]
    assert any(k.endswith("/model.pkl") for k in model_keys), model_keys
    assert any(k.endswith(f"{run.info.run_id}/artifacts/confusion_matrix.svg") for k in keys)


def test_two_steps_as_the_dag_runs_them(covertype_frames, mlflow_settings, small_candidates):
    """train_and_log in one task, its result through JSON (XCom), register_and_promote in
    the next task; a retried promotion step registers nothing new."""
    train, holdout = covertype_frames
    trained = train_and_log(
        train,
        holdout,
        RunMetadata(group_number=2, dag_run_id="scheduled__x"),
        mlflow_settings=mlflow_settings,
        candidates=small_candidates,
    )
    client = MlflowClient(mlflow_settings.tracking_uri)
    assert (
        client.search_registered_models(f"name = '{mlflow_settings.registered_model_name}'") == []
    )

    passed = json.loads(json.dumps(trained.to_dict()))
    restored = TrainedRun.from_dict(passed)
    assert restored == trained
    decision = register_and_promote(restored, holdout, mlflow_settings=mlflow_settings).to_dict()
    assert json.loads(json.dumps(decision)) == decision
    assert decision["promoted"] is True and decision["version"] == "1"
    # The challenger was loaded back from the registry and scored on these rows.
    assert decision["challenger"]["rows"] == len(holdout)
    assert decision["challenger"]["accuracy"] == pytest.approx(trained.accuracy)
    assert client.get_run(trained.parent_run_id).data.tags["model_version"] == "1"

    again = register_and_promote(restored, holdout, mlflow_settings=mlflow_settings).to_dict()
    assert again["promoted"] is True and again["version"] == "1"
    assert "already points to this version" in again["reason"]
    versions = client.search_model_versions(f"name = '{mlflow_settings.registered_model_name}'")
    assert [v.version for v in versions] == ["1"]


def test_trained_run_refuses_foreign_data():
    with pytest.raises(ValueError, match="not a TrainedRun: missing"):
        TrainedRun.from_dict({"champion": "x"})


def test_mapped_steps_train_each_candidate_in_its_own_child_run_as_one_process_would(
    finished_run, covertype_frames, mlflow_settings, small_candidates
):
    """The DAG's split (app.pipeline.mapped), each step through JSON as XCom carries it: the
    same rows and seed give every candidate the scores the one-process run measured, a
    retried step reuses its run, and the picker's rule picks the same champion."""
    from app.pipeline.candidates import parse_overrides
    from app.pipeline.mapped import (
        CandidateResult,
        TrainingJob,
        open_parent_run,
        pick_champion,
        train_job,
    )
    from app.pipeline.run import CandidateFailedError
    from tests.conftest import SMALL_CANDIDATE_PARAMS

    train, holdout = covertype_frames
    settings = TrainingSettings(
        seed=7,
        n_jobs=1,
        candidates=",".join(c.name for c in small_candidates),
        param_overrides=json.dumps(SMALL_CANDIDATE_PARAMS),
    )
    metadata = RunMetadata(group_number=3, data_fingerprint="e" * 64, dag_run_id="mapped__1")
    kwargs = {"mlflow_settings": mlflow_settings, "training_settings": settings}
    jobs = open_parent_run(train, holdout, metadata, **kwargs)
    assert [j.candidate for j in jobs] == [c.name for c in small_candidates]
    overrides = parse_overrides(settings.param_overrides)
    assert all(j.overrides == overrides[j.candidate] and j.seed == 7 for j in jobs)
    # A retried prepare step finds the parent run its first try made.
    again = open_parent_run(train, holdout, metadata, **kwargs)
    assert {j.parent_run_id for j in again} == {jobs[0].parent_run_id}

    # A first try of random_forest fails inside the fit; its retry resumes the same child run.
    rf = next(j for j in jobs if j.candidate == "random_forest")
    broken = TrainingJob.from_dict({**rf.to_dict(), "overrides": {"n_estimators": 0}})
    with pytest.raises(CandidateFailedError, match="random_forest"):
        train_job(broken, train, holdout, **kwargs)
    results = [
        CandidateResult.from_dict(
            json.loads(
                json.dumps(
                    train_job(
                        TrainingJob.from_dict(j.to_dict()), train, holdout, **kwargs
                    ).to_dict()
                )
            )  # fmt: skip
        )
        for j in jobs
    ]
    one_process = {e.candidate: e for e in finished_run.evaluations}
    for result in results:
        assert result.scores == one_process[result.candidate].scores, result.candidate

    # The random_forest result handed over twice (as a confused retry might) counts once.
    trained = pick_champion(jobs, [*results, results[2]], holdout, **kwargs)
    assert trained.champion == finished_run.champion.candidate
    assert trained.failed_candidates == []
    client = MlflowClient(mlflow_settings.tracking_uri)
    parent = client.get_run(trained.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["champion"] == trained.champion
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert sorted(c.data.tags["candidate"] for c in children) == sorted(one_process)
    by_name = {c.data.tags["candidate"]: c for c in children}
    assert by_name["random_forest"].data.tags["attempts"] == "2"
    assert "failure" not in by_name["random_forest"].data.tags
    assert {c.info.status for c in children} == {"FINISHED"}
    assert by_name[trained.champion].data.tags["champion"] == "true"
    decision = register_and_promote(trained, holdout, mlflow_settings=mlflow_settings)
    assert decision.version == "1" and decision.decision.promoted
