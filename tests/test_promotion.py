"""Registry and promotion against the real MLflow server: who gets alias `production`, and
that every failure leaves it where it was."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sklearn.base import BaseEstimator, ClassifierMixin

from app.pipeline import CandidateFailedError, MlflowUnavailableError, RunMetadata, run_training
from app.pipeline.candidates import Candidate, default_candidates
from app.pipeline.evaluate import score
from app.pipeline.tracking import tracking_uri
from app.settings import MlflowSettings, TrainingSettings
from tests.mlflow_server import ARTIFACT_BUCKET, MlflowServer

ALIAS = "production"
# The deliberately weak model stops before converging.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def strong() -> list[Candidate]:
    return default_candidates(
        ["random_forest"],
        seed=1,
        n_jobs=1,
        overrides={"random_forest": {"n_estimators": 10, "max_depth": 14}},
    )


def weak() -> list[Candidate]:
    # So regularized it predicts little more than the majority class.
    return default_candidates(
        ["logistic_regression"],
        seed=1,
        n_jobs=1,
        overrides={"logistic_regression": {"C": 1e-5, "max_iter": 50}},
    )


class ExplodingClassifier(ClassifierMixin, BaseEstimator):
    def __init__(self, message: str = "out of memory (simulated)") -> None:
        self.message = message

    def fit(self, x, y):  # noqa: ANN001, ANN201
        raise RuntimeError(self.message)


class CallbackClassifier(ClassifierMixin, BaseEstimator):
    """Runs `on_fit` while training, then predicts the first class."""

    def __init__(self, on_fit=None) -> None:  # noqa: ANN001
        self.on_fit = on_fit

    def fit(self, x, y):  # noqa: ANN001, ANN201
        if self.on_fit is not None:
            self.on_fit()
        self.classes_ = np.unique(y)
        return self

    def predict(self, x):  # noqa: ANN001, ANN201
        return np.full(len(x), self.classes_[0])


def train(
    frames,
    settings: MlflowSettings,
    candidates: list[Candidate],
    holdout=None,
    **training: object,
):
    train_rows, default_holdout = frames
    return run_training(
        train_rows,
        default_holdout if holdout is None else holdout,
        RunMetadata(group_number=1),
        mlflow_settings=settings,
        training_settings=TrainingSettings(**training),
        candidates=candidates,
    )


def alias_version(settings: MlflowSettings) -> str | None:
    model = MlflowClient(settings.tracking_uri).get_registered_model(settings.registered_model_name)
    return model.aliases.get(ALIAS)


def versions(settings: MlflowSettings) -> list[str]:
    client = MlflowClient(settings.tracking_uri)
    found = client.search_model_versions(f"name = '{settings.registered_model_name}'")
    return sorted((v.version for v in found), key=int)


def version_tags(settings: MlflowSettings, version: str) -> dict[str, str]:
    client = MlflowClient(settings.tracking_uri)
    return client.get_model_version(settings.registered_model_name, version).tags


def test_first_version_is_promoted_when_there_is_no_production(covertype_frames, mlflow_settings):
    result = train(covertype_frames, mlflow_settings, weak())
    assert result.decision.promoted
    assert alias_version(mlflow_settings) == result.model_version
    tags = version_tags(mlflow_settings, result.model_version)
    assert tags["promotion_decision"] == "promoted"
    assert "no version had alias" in tags["promotion_reason"]


def test_better_challenger_is_promoted_after_rescoring_production_on_current_rows(
    covertype_frames, mlflow_settings
):
    train_rows, holdout = covertype_frames
    first = train(covertype_frames, mlflow_settings, weak(), holdout=holdout.iloc[:400])
    second = train(covertype_frames, mlflow_settings, strong(), holdout=holdout)

    assert second.decision.promoted, second.decision.reason
    assert alias_version(mlflow_settings) == second.model_version
    tags = version_tags(mlflow_settings, second.model_version)
    assert tags["promotion_decision"] == "promoted"
    assert tags["promotion_compared_to_version"] == first.model_version
    assert "better by at least the margin" in tags["promotion_reason"]
    # Production was scored again on today's 1,000 held-out rows, not on the 400 it was
    # measured on when it was trained.
    with tracking_uri(mlflow_settings.tracking_uri):
        old = mlflow.sklearn.load_model(
            f"models:/{mlflow_settings.registered_model_name}/{first.model_version}"
        )
    rescored = score(old, holdout)
    assert tags["promotion_holdout_rows"] == "1000"
    assert float(tags["promotion_production_accuracy"]) == pytest.approx(rescored.accuracy)
    assert second.decision.production == rescored


def test_worse_challenger_is_not_promoted_and_the_version_says_why(
    covertype_frames, mlflow_settings
):
    first = train(covertype_frames, mlflow_settings, strong())
    second = train(covertype_frames, mlflow_settings, weak())

    assert not second.decision.promoted
    assert alias_version(mlflow_settings) == first.model_version
    tags = version_tags(mlflow_settings, second.model_version)
    assert tags["promotion_decision"] == "not_promoted"
    assert tags["promotion_compared_to_version"] == first.model_version
    assert "worse by more than the margin" in tags["promotion_reason"]
    assert f"production version {first.model_version}" in tags["promotion_reason"]


def test_within_the_margin_the_smaller_model_wins(covertype_frames, mlflow_settings):
    # A margin of 1.0 makes every pair of scores a tie: size alone decides.
    big = train(covertype_frames, mlflow_settings, strong(), promotion_margin=1.0)
    small = train(covertype_frames, mlflow_settings, weak(), promotion_margin=1.0)
    assert small.champion.size_bytes < big.champion.size_bytes
    assert small.decision.promoted
    assert "tie within the margin and smaller" in small.decision.reason
    assert alias_version(mlflow_settings) == small.model_version

    big_again = train(covertype_frames, mlflow_settings, strong(), promotion_margin=1.0)
    assert not big_again.decision.promoted
    assert "tie within the margin and not smaller" in big_again.decision.reason
    assert alias_version(mlflow_settings) == small.model_version


def test_a_model_over_the_size_cap_is_registered_but_never_promoted(
    covertype_frames, mlflow_settings
):
    result = train(covertype_frames, mlflow_settings, strong(), max_model_mb=0.001)
    assert not result.decision.promoted
    assert alias_version(mlflow_settings) is None
    tags = version_tags(mlflow_settings, result.model_version)
    assert tags["promotion_decision"] == "not_promoted"
    assert "over the 0.00 MB cap" in tags["promotion_reason"]


def test_a_manual_alias_move_is_respected(covertype_frames, mlflow_settings):
    old = train(covertype_frames, mlflow_settings, weak())
    new = train(covertype_frames, mlflow_settings, strong())
    assert alias_version(mlflow_settings) == new.model_version

    # A user points production back at the old version in the MLflow UI.
    client = MlflowClient(mlflow_settings.tracking_uri)
    client.set_registered_model_alias(
        mlflow_settings.registered_model_name, ALIAS, old.model_version
    )

    # The next run is compared with the user's choice, not with the newer version, and a
    # challenger that does not beat that choice leaves it in place.
    rerun = train(covertype_frames, mlflow_settings, weak())
    assert rerun.decision.compared_to == old.model_version
    assert not rerun.decision.promoted
    assert alias_version(mlflow_settings) == old.model_version


def test_a_failing_candidate_fails_the_run_and_leaves_the_alias(covertype_frames, mlflow_settings):
    first = train(covertype_frames, mlflow_settings, strong())
    broken = Candidate("exploding", ExplodingClassifier)
    with pytest.raises(CandidateFailedError, match="exploding.*out of memory"):
        train(covertype_frames, mlflow_settings, [*strong(), broken])

    assert alias_version(mlflow_settings) == first.model_version
    assert versions(mlflow_settings) == [first.model_version]
    client = MlflowClient(mlflow_settings.tracking_uri)
    experiment = client.get_experiment_by_name(mlflow_settings.experiment_name)
    failed = client.search_runs(
        [experiment.experiment_id], filter_string="attributes.status = 'FAILED'"
    )
    assert {r.data.tags.get("candidate") for r in failed} == {"exploding", None}
    assert any("out of memory" in r.data.tags.get("failure", "") for r in failed)


def test_mlflow_down_fails_the_run_clearly_and_leaves_the_alias(
    covertype_frames, mlflow_settings, mlflow_server: MlflowServer
):
    first = train(covertype_frames, mlflow_settings, strong())
    with mlflow_server.outage(), pytest.raises(MlflowUnavailableError, match="not reachable"):
        train(covertype_frames, mlflow_settings, strong())
    assert alias_version(mlflow_settings) == first.model_version
    assert versions(mlflow_settings) == [first.model_version]


def test_mlflow_dying_mid_run_fails_the_run_and_leaves_the_alias(
    covertype_frames, mlflow_settings, mlflow_server: MlflowServer, monkeypatch
):
    first = train(covertype_frames, mlflow_settings, weak())
    # MLflow's client retries a refused connection for about two minutes by default.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    dies = Candidate("mlflow_dies", CallbackClassifier, {"on_fit": mlflow_server.stop})
    try:
        with pytest.raises(MlflowUnavailableError, match="stopped answering"):
            train(covertype_frames, mlflow_settings, [*strong(), dies])
        assert not mlflow_server.running
    finally:
        mlflow_server.start()
    assert alias_version(mlflow_settings) == first.model_version
    assert versions(mlflow_settings) == [first.model_version]


def delete_model_objects(s3, model_uri: str) -> None:
    """Production's files vanish from the artifact store (a lifecycle rule, an operator...)."""
    model_id = model_uri.removeprefix("models:/")
    bucket = s3.client()
    doomed = [
        o["Key"]
        for page in bucket.get_paginator("list_objects_v2").paginate(Bucket=ARTIFACT_BUCKET)
        for o in page.get("Contents", [])
        if f"/models/{model_id}/" in o["Key"]
    ]
    assert doomed
    for key in doomed:
        bucket.delete_object(Bucket=ARTIFACT_BUCKET, Key=key)


def test_unservable_production_gives_way_to_a_servable_challenger(
    covertype_frames, mlflow_settings, s3
):
    # A strong production loses its files; a weak challenger that loads and scores takes
    # over, because a model nobody can serve is worth less than any model that can be.
    first = train(covertype_frames, mlflow_settings, strong())
    delete_model_objects(s3, first.model_uri)

    second = train(covertype_frames, mlflow_settings, weak())
    assert second.decision.promoted, second.decision.reason
    assert alias_version(mlflow_settings) == second.model_version
    tags = version_tags(mlflow_settings, second.model_version)
    assert tags["promotion_decision"] == "promoted"
    assert f"production version {first.model_version} is unservable" in tags["promotion_reason"]
    assert "missing from the store" in tags["promotion_reason"]
    assert tags["promotion_replaced_unservable"] == first.model_version
    assert "missing" in version_tags(mlflow_settings, first.model_version)["unservable_reason"]
    # And the normal rule applies again from there: a worse model does not replace it.
    third = train(covertype_frames, mlflow_settings, weak(), promotion_margin=-1.0)
    assert alias_version(mlflow_settings) in {second.model_version, third.model_version}
    assert "re-scored now" in third.decision.reason


def test_unreadable_production_objects_are_unservable_too(covertype_frames, mlflow_settings, s3):
    first = train(covertype_frames, mlflow_settings, strong())
    model_id = first.model_uri.removeprefix("models:/")
    bucket = s3.client()
    pickles = [
        o["Key"]
        for o in bucket.list_objects_v2(Bucket=ARTIFACT_BUCKET)["Contents"]
        if f"/models/{model_id}/" in o["Key"] and o["Key"].endswith(".pkl")
    ]
    assert pickles
    for key in pickles:
        bucket.put_object(Bucket=ARTIFACT_BUCKET, Key=key, Body=b"not a pickle")

    second = train(covertype_frames, mlflow_settings, weak())
    assert second.decision.promoted
    assert "does not load" in second.decision.reason
    assert alias_version(mlflow_settings) == second.model_version


def test_an_unservable_challenger_does_not_replace_an_unservable_production(
    covertype_frames, mlflow_settings, s3
):
    first = train(covertype_frames, mlflow_settings, strong())
    delete_model_objects(s3, first.model_uri)
    client = MlflowClient(mlflow_settings.tracking_uri)
    experiment = client.get_experiment_by_name(mlflow_settings.experiment_name).experiment_id
    bucket = s3.client()

    def corrupt_logged_models(*_: object) -> None:
        # Right after the challenger is logged, its pickle is overwritten in the store.
        listed = bucket.list_objects_v2(Bucket=ARTIFACT_BUCKET, Prefix=f"{experiment}/")
        for o in listed.get("Contents", []):
            if o["Key"].endswith(".pkl"):
                bucket.put_object(Bucket=ARTIFACT_BUCKET, Key=o["Key"], Body=b"garbage")

    second = run_training(
        *covertype_frames,
        RunMetadata(group_number=1),
        mlflow_settings=mlflow_settings,
        training_settings=TrainingSettings(),
        candidates=weak(),
        champion_hook=corrupt_logged_models,
    )
    assert not second.decision.promoted
    assert "and so is this one" in second.decision.reason
    assert alias_version(mlflow_settings) == first.model_version


def test_s3_down_at_promotion_leaves_the_alias_and_the_next_run_succeeds(
    covertype_frames, mlflow_settings, s3, small_candidates, monkeypatch
):
    from app.pipeline import register_and_promote, train_and_log

    train_rows, holdout = covertype_frames
    first = train(covertype_frames, mlflow_settings, weak())
    trained = train_and_log(
        train_rows, holdout, mlflow_settings=mlflow_settings, candidates=strong()
    )
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    s3.stop()
    try:
        # MinIO down is an outage, not a missing model: nothing is promoted or re-tagged.
        # The artifact proxy answers 500 while its store is down.
        with pytest.raises(MlflowException, match=r"mlflow-artifacts.*Max retries exceeded"):
            register_and_promote(trained, holdout, mlflow_settings=mlflow_settings)
        assert alias_version(mlflow_settings) == first.model_version
        assert "unservable_reason" not in version_tags(mlflow_settings, first.model_version)
    finally:
        s3.start()
    decision = register_and_promote(trained, holdout, mlflow_settings=mlflow_settings).decision
    assert decision.promoted, decision.reason
    assert "re-scored now" in decision.reason
    assert alias_version(mlflow_settings) == decision.version


def test_s3_dying_mid_run_fails_the_run_stores_nothing_and_the_next_run_succeeds(
    covertype_frames, mlflow_settings, s3, monkeypatch
):
    first = train(covertype_frames, mlflow_settings, weak())
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    dies = Candidate("minio_dies", CallbackClassifier, {"on_fit": s3.stop})
    try:
        with pytest.raises(Exception):  # noqa: B017, PT011 - which error depends on the step
            train(covertype_frames, mlflow_settings, [*strong(), dies])
    finally:
        s3.start()
    assert alias_version(mlflow_settings) == first.model_version
    assert versions(mlflow_settings) == [first.model_version]
    again = train(covertype_frames, mlflow_settings, strong())
    assert again.decision.promoted, again.decision.reason
    assert alias_version(mlflow_settings) == again.model_version
