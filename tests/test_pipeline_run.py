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


def _mapped_settings(small_candidates, training_tasks: int) -> TrainingSettings:
    from tests.conftest import SMALL_CANDIDATE_PARAMS

    return TrainingSettings(
        seed=7,
        n_jobs=1,
        candidates=",".join(c.name for c in small_candidates),
        param_overrides=json.dumps(SMALL_CANDIDATE_PARAMS),
        training_tasks=training_tasks,
    )


def _through_json(results):
    from app.pipeline.mapped import CandidateResult

    return [CandidateResult.from_dict(json.loads(json.dumps(r.to_dict()))) for r in results]


def _broken(job, name: str, bad: dict[str, object]):
    """The job with a parameter value sklearn refuses only when the model is fitted."""
    from app.pipeline.mapped import TrainingJob

    overrides = {**job.overrides, name: {**job.overrides[name], **bad}}
    return TrainingJob.from_dict({**job.to_dict(), "overrides": overrides})


def _children_by_name(client: MlflowClient, parent_run_id: str, experiment_id: str):
    children = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'"
    )
    return {c.data.tags["candidate"]: c for c in children}


def test_mapped_steps_train_each_candidate_in_its_own_child_run_as_one_process_would(
    finished_run, covertype_frames, mlflow_settings, small_candidates
):
    """The DAG's split with one task per candidate (TRAINING_TASKS >= candidates), each step
    through JSON as XCom carries it: the same rows and seed give every candidate the scores
    the one-process run measured, a retried step reuses its run, every model is logged and
    the picker's rule picks the same champion."""
    from app.pipeline.candidates import parse_overrides
    from app.pipeline.mapped import TrainingJob, open_parent_run, pick_champion, train_job
    from app.pipeline.run import CandidateFailedError
    from tests.mlflow_server import runs_with_a_logged_model

    train, holdout = covertype_frames
    settings = _mapped_settings(small_candidates, training_tasks=len(small_candidates))
    metadata = RunMetadata(group_number=3, data_fingerprint="e" * 64, dag_run_id="mapped__1")
    kwargs = {"mlflow_settings": mlflow_settings, "training_settings": settings}
    jobs = open_parent_run(train, holdout, metadata, **kwargs)
    assert [j.candidates for j in jobs] == [[c.name] for c in small_candidates]
    assert not any(j.whole_run for j in jobs)
    overrides = parse_overrides(settings.param_overrides)
    for j in jobs:
        assert j.overrides == {j.name: overrides[j.name]} and j.seed == 7
    # A retried prepare step finds the parent run its first try made.
    again = open_parent_run(train, holdout, metadata, **kwargs)
    assert {j.parent_run_id for j in again} == {jobs[0].parent_run_id}

    # A first try of random_forest fails inside the fit; its retry resumes the same child run.
    # Alone in its job, it fails the task on the last try too.
    rf = next(j for j in jobs if j.candidates == ["random_forest"])
    broken = _broken(rf, "random_forest", {"n_estimators": 0})
    for last_try in (False, True):
        with pytest.raises(CandidateFailedError, match="random_forest"):
            train_job(broken, train, holdout, last_try=last_try, **kwargs)
    results = [
        r
        for j in jobs
        for r in _through_json(
            train_job(TrainingJob.from_dict(j.to_dict()), train, holdout, **kwargs)
        )
    ]
    one_process = {e.candidate: e for e in finished_run.evaluations}
    for result in results:
        assert result.scores == one_process[result.candidate].scores, result.candidate
        assert result.model_uri, f"{result.candidate}: with several jobs every model is logged"
    # A retry of a task whose child run FINISHED reuses it: the same result, not a new fit.
    assert train_job(rf, train, holdout, **kwargs) == [results[2]]

    # The random_forest result handed over twice (as a confused retry might) counts once.
    trained = pick_champion(jobs, [*results, results[2]], holdout, **kwargs)
    assert trained.champion == finished_run.champion.candidate
    assert trained.failed_candidates == []
    client = MlflowClient(mlflow_settings.tracking_uri)
    parent = client.get_run(trained.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["champion"] == trained.champion
    assert parent.data.params["training_tasks"] == str(len(small_candidates))
    by_name = _children_by_name(client, parent.info.run_id, parent.info.experiment_id)
    assert sorted(by_name) == sorted(one_process)
    assert by_name["random_forest"].data.tags["attempts"] == "3"
    assert {by_name[n].data.tags["attempts"] for n in by_name if n != "random_forest"} == {"1"}
    assert "failure" not in by_name["random_forest"].data.tags
    assert {c.info.status for c in by_name.values()} == {"FINISHED"}
    assert by_name[trained.champion].data.tags["champion"] == "true"
    assert runs_with_a_logged_model(
        mlflow_settings.tracking_uri, parent.info.experiment_id
    ) == sorted(c.info.run_id for c in by_name.values())
    decision = register_and_promote(trained, holdout, mlflow_settings=mlflow_settings)
    assert decision.version == "1" and decision.decision.promoted


def test_one_training_task_trains_every_candidate_and_logs_only_the_champions_model(
    finished_run, covertype_frames, mlflow_settings, small_candidates
):
    """TRAINING_TASKS=1: one job with every candidate; its task applies the rule and logs only
    the champion's model, as the one-process run does."""
    from app.pipeline.mapped import open_parent_run, pick_champion, train_job
    from tests.mlflow_server import runs_with_a_logged_model

    train, holdout = covertype_frames
    settings = _mapped_settings(small_candidates, training_tasks=1)
    metadata = RunMetadata(group_number=3, data_fingerprint="d" * 64, dag_run_id="mapped__2")
    kwargs = {"mlflow_settings": mlflow_settings, "training_settings": settings}
    (job,) = open_parent_run(train, holdout, metadata, **kwargs)
    assert job.whole_run and job.candidates == [c.name for c in small_candidates]
    assert job.name == "+".join(c.name for c in small_candidates)
    results = _through_json(train_job(job, train, holdout, **kwargs))
    assert [r.candidate for r in results] == job.candidates
    one_process = {e.candidate: e for e in finished_run.evaluations}
    assert {r.candidate: r.scores for r in results} == {n: e.scores for n, e in one_process.items()}
    champion = finished_run.champion.candidate
    assert [r.candidate for r in results if r.model_uri] == [champion]
    trained = pick_champion([job], results, holdout, **kwargs)
    assert trained.champion == champion
    runs = runs_with_a_logged_model(mlflow_settings.tracking_uri, job.experiment_id)
    assert runs == [trained.champion_run_id]

    # With TRAINING_LOG_ALL_MODELS every candidate's model is logged, as in one process.
    logging_all = TrainingSettings(**{**settings.__dict__, "log_all_models": True})
    metadata = RunMetadata(group_number=3, data_fingerprint="d" * 64, dag_run_id="mapped__3")
    (job,) = open_parent_run(train, holdout, metadata, **kwargs)
    results = train_job(job, train, holdout, **{**kwargs, "training_settings": logging_all})
    assert all(r.model_uri for r in results)
    runs = runs_with_a_logged_model(mlflow_settings.tracking_uri, job.experiment_id)
    assert sorted(set(runs) - {trained.champion_run_id}) == sorted(r.run_id for r in results)


def test_a_failing_candidate_in_a_task_lets_the_others_train_and_raises_until_the_last_try(
    covertype_frames, mlflow_settings, small_candidates
):
    """One task, four candidates, random_forest failing in every try: not the last try, the
    task raises after training the others; the retry (the last) trains only random_forest
    again, reuses the others' finished child runs, and returns their results; the picker
    names random_forest as failed."""
    from app.pipeline.mapped import open_parent_run, pick_champion, train_job
    from app.pipeline.run import CandidateFailedError
    from app.pipeline.selection import choose_by_settings
    from tests.mlflow_server import runs_with_a_logged_model

    train, holdout = covertype_frames
    settings = _mapped_settings(small_candidates, training_tasks=1)
    metadata = RunMetadata(group_number=3, data_fingerprint="c" * 64, dag_run_id="mapped__4")
    kwargs = {"mlflow_settings": mlflow_settings, "training_settings": settings}
    (job,) = open_parent_run(train, holdout, metadata, **kwargs)
    broken = _broken(job, "random_forest", {"n_estimators": 0})
    with pytest.raises(CandidateFailedError, match="random_forest.*a retry trains them again"):
        train_job(broken, train, holdout, last_try=False, **kwargs)
    client = MlflowClient(mlflow_settings.tracking_uri)
    first = _children_by_name(client, job.parent_run_id, job.experiment_id)
    others = [n for n in job.candidates if n != "random_forest"]
    assert first["random_forest"].info.status == "FAILED"
    assert {first[n].info.status for n in others} == {"FINISHED"}
    # Nothing chosen, so no model logged while the task is to be retried.
    assert runs_with_a_logged_model(mlflow_settings.tracking_uri, job.experiment_id) == []

    results = train_job(broken, train, holdout, last_try=True, **kwargs)
    assert [r.candidate for r in results] == others
    later = _children_by_name(client, job.parent_run_id, job.experiment_id)
    assert later["random_forest"].info.status == "FAILED"
    assert later["random_forest"].data.tags["attempts"] == "2"
    champion = choose_by_settings(results, settings)
    assert [r.candidate for r in results if r.model_uri] == [champion.candidate]
    for name in others:
        if name == champion.candidate:
            # Its model was never logged and no process holds it: it alone is fitted again
            # (same rows and seed, same scores), in its own child run, to log the model.
            assert later[name].data.tags["attempts"] == "2"
            assert later[name].data.metrics["accuracy"] == first[name].data.metrics["accuracy"]
        else:
            # Reused, not trained again: the metrics of the first try (fit time included).
            assert later[name].data.tags["attempts"] == "1"
            assert later[name].data.metrics == first[name].data.metrics, name
    assert runs_with_a_logged_model(mlflow_settings.tracking_uri, job.experiment_id) == [
        champion.run_id
    ]
    trained = pick_champion([job], results, holdout, **kwargs)
    assert trained.champion == champion.candidate
    assert trained.failed_candidates == ["random_forest"]
    parent = client.get_run(job.parent_run_id)
    assert parent.data.tags["failed_candidates"] == "random_forest"
