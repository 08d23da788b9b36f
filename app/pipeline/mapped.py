"""Training split over tasks, as the DAG runs it: one task opens the parent run, one mapped task
per candidate trains it into its own child run (in parallel, on whichever worker takes it),
and one task picks the champion and closes the parent run.

app.pipeline.run.train_and_log does the same in one process. Here each step may run in another
process on another host, so what crosses a task boundary is small plain data (TrainingJob,
CandidateResult: ids, names, metrics; Airflow keeps it as XCom) and fitted models travel only
through MLflow: every candidate logs its model, and the champion's is the one registered.
Every task reads the rows itself; the split is stored with each row (by hash), and the jobs
carry the data fingerprint and the seed, so each candidate trains on the same rows and seed.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import mlflow
import mlflow.sklearn
from mlflow.entities import Param

from app.pipeline import tracking
from app.pipeline.candidates import default_candidates, parse_overrides
from app.pipeline.evaluate import MB, Scores
from app.pipeline.features import TrainingDataError, batches_in, check_frame
from app.pipeline.run import (
    FAILED_CANDIDATES_TAG,
    CandidateFailedError,
    ChampionHook,
    RunMetadata,
    TrainedRun,
    _parent_params,
    _run_name,
    _tags,
    fit_in_active_run,
)
from app.pipeline.selection import choose_champion
from app.settings import MlflowSettings, TrainingSettings

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# Children carry the parent's tags (dag_run_id, data_fingerprint, ...); this one is the parent's.
ROLE_TAG = "pipeline_role"
PARENT_ROLE = "parent"
# How many tries of its task a child run has seen: a retry resumes the run it started.
ATTEMPTS_TAG = "attempts"


@dataclass(frozen=True)
class TrainingJob:
    """One candidate's share of a pipeline run: the XCom its mapped task receives."""

    candidate: str
    # TRAINING_PARAM_OVERRIDES for this candidate, as prepare_training read them.
    overrides: dict[str, Any]
    seed: int
    parent_run_id: str
    experiment_id: str
    group_number: int | None
    data_fingerprint: str | None
    dag_run_id: str | None
    batches: list[int]
    train_rows: int
    holdout_rows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingJob:
        missing = sorted(f.name for f in fields(cls) if f.name not in data)
        if missing:
            raise ValueError(f"not a TrainingJob: missing {', '.join(missing)}")
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    def tags(self) -> dict[str, str]:
        metadata = RunMetadata(
            self.group_number, self.batches, self.data_fingerprint, self.dag_run_id
        )
        return _tags(metadata, self.batches, self.train_rows, self.holdout_rows)


@dataclass(frozen=True)
class CandidateResult:
    """What one candidate's task measured and where its model is: the XCom it returns.
    Ranked like an Evaluation (candidate, scores, size_bytes, metrics())."""

    candidate: str
    run_id: str
    parent_run_id: str
    model_uri: str
    accuracy: float
    macro_f1: float
    holdout_rows: int
    size_bytes: int
    # Evaluation.metrics(): a few dozen numbers.
    measured: dict[str, float]

    @property
    def scores(self) -> Scores:
        return Scores(self.accuracy, self.macro_f1, self.holdout_rows)

    def metrics(self) -> dict[str, float]:
        return dict(self.measured)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateResult:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def _quoted(value: str) -> str | None:
    # MLflow's filter strings have no escape for a quote; such a value is not searched for.
    return None if "'" in value else f"'{value}'"


def _existing_parent(client: MlflowClient, experiment_id: str, metadata: RunMetadata) -> str | None:
    """The parent run an earlier try of prepare_training made for this DAG run and these
    rows, if any: a retry must not leave a second parent behind."""
    run_id = _quoted(metadata.dag_run_id or "")
    fingerprint = _quoted(metadata.data_fingerprint or "")
    if not metadata.dag_run_id or not metadata.data_fingerprint or not run_id or not fingerprint:
        return None
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{ROLE_TAG} = '{PARENT_ROLE}' and tags.dag_run_id = {run_id}"
        f" and tags.data_fingerprint = {fingerprint}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0].info.run_id if found else None


def open_parent_run(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    metadata: RunMetadata,
    *,
    mlflow_settings: MlflowSettings | None = None,
    training_settings: TrainingSettings | None = None,
) -> list[TrainingJob]:
    """Check the frames and the candidate configuration, open the parent run (left RUNNING:
    pick_champion closes it) and return one job per candidate, in the configured order."""
    mlflow_settings = mlflow_settings or MlflowSettings()
    settings = training_settings or TrainingSettings()
    check_frame(train, "train")
    check_frame(holdout, "holdout")
    overrides = parse_overrides(settings.param_overrides)
    # Names, repeats and override keys are refused here, before anything fans out.
    candidates = default_candidates(
        settings.candidates, seed=settings.seed, n_jobs=settings.n_jobs, overrides=overrides
    )
    batches = list(metadata.batches) if metadata.batches is not None else batches_in(train)
    tags = {**_tags(metadata, batches, len(train), len(holdout)), ROLE_TAG: PARENT_ROLE}
    with tracking.session(mlflow_settings.tracking_uri) as client:
        experiment_id = tracking.ensure_experiment(client, mlflow_settings.experiment_name)
        parent_id = _existing_parent(client, experiment_id, metadata)
        if parent_id is None:
            run = client.create_run(experiment_id, tags=tags, run_name=_run_name(metadata, batches))
            parent_id = run.info.run_id
            params = _parent_params(candidates, settings)
            client.log_batch(parent_id, params=[Param(k, str(v)) for k, v in params.items()])
        else:
            log.info("reusing parent run %s of an earlier try", parent_id)
            client.update_run(parent_id, status="RUNNING")
    return [
        TrainingJob(
            candidate=c.name,
            overrides=dict(overrides.get(c.name, {})),
            seed=settings.seed,
            parent_run_id=parent_id,
            experiment_id=experiment_id,
            group_number=metadata.group_number,
            data_fingerprint=metadata.data_fingerprint,
            dag_run_id=metadata.dag_run_id,
            batches=batches,
            train_rows=len(train),
            holdout_rows=len(holdout),
        )
        for c in candidates
    ]


def _child_run(client: MlflowClient, job: TrainingJob) -> str:
    """The candidate's child run: the one an earlier try of its task started (its failure
    tag cleared), else a new one. So a candidate has one child run however often it ran."""
    found = client.search_runs(
        [job.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{job.parent_run_id}'"
        f" and tags.candidate = '{job.candidate}'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    if found:
        run = found[0]
        if "failure" in run.data.tags:
            client.delete_tag(run.info.run_id, "failure")
        attempts = int(run.data.tags.get(ATTEMPTS_TAG, "1")) + 1
        client.set_tag(run.info.run_id, ATTEMPTS_TAG, str(attempts))
        log.info("resuming child run %s of %s (try %d)", run.info.run_id, job.candidate, attempts)
        return str(run.info.run_id)
    tags = {
        **job.tags(),
        "candidate": job.candidate,
        "mlflow.parentRunId": job.parent_run_id,
        ATTEMPTS_TAG: "1",
    }
    return str(client.create_run(job.experiment_id, tags=tags, run_name=job.candidate).info.run_id)


def train_job(
    job: TrainingJob,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    mlflow_settings: MlflowSettings | None = None,
    training_settings: TrainingSettings | None = None,
) -> CandidateResult:
    """Fit, evaluate and log one candidate (its model too) in its child run of the job's
    parent run. Raises CandidateFailedError when the model fails (the child run is then
    FAILED, tagged with why), TrainingDataError when the rows are not the job's."""
    mlflow_settings = mlflow_settings or MlflowSettings()
    settings = training_settings or TrainingSettings()
    check_frame(train, "train")
    check_frame(holdout, "holdout")
    if (len(train), len(holdout)) != (job.train_rows, job.holdout_rows):
        raise TrainingDataError(
            f"{len(train)} training and {len(holdout)} held-out rows, but the run was prepared"
            f" on {job.train_rows} and {job.holdout_rows}: the stored rows changed meanwhile"
        )
    # The seed and overrides are the job's, so every worker builds the same recipe; n_jobs
    # is the worker's own (its cores).
    (candidate,) = default_candidates(
        [job.candidate],
        seed=job.seed,
        n_jobs=settings.n_jobs,
        overrides={job.candidate: job.overrides},
    )
    with tracking.session(mlflow_settings.tracking_uri) as client:
        child_id = _child_run(client, job)
        with mlflow.start_run(run_id=child_id):
            trained = fit_in_active_run(candidate, (train, holdout), settings, log_model=True)
    evaluation = trained.evaluation
    assert trained.model_uri is not None  # log_model=True
    return CandidateResult(
        candidate=job.candidate,
        run_id=trained.run_id,
        parent_run_id=job.parent_run_id,
        model_uri=trained.model_uri,
        accuracy=evaluation.scores.accuracy,
        macro_f1=evaluation.scores.macro_f1,
        holdout_rows=evaluation.scores.rows,
        size_bytes=evaluation.size_bytes,
        measured=evaluation.metrics(),
    )


def _one_per_candidate(
    results: Iterable[CandidateResult], job: TrainingJob, expected: Sequence[str]
) -> dict[str, CandidateResult]:
    """The results that belong to this run, one per candidate (a later one replaces an
    earlier one of the same name), so nothing is counted twice."""
    chosen: dict[str, CandidateResult] = {}
    for result in results:
        if result.parent_run_id != job.parent_run_id or result.candidate not in expected:
            log.warning("ignoring %s (run %s): not of this run", result.candidate, result.run_id)
            continue
        chosen[result.candidate] = result
    return chosen


def _log_champion(
    champion: CandidateResult,
    results: Sequence[CandidateResult],
    holdout: pd.DataFrame,
    champion_hook: ChampionHook | None,
) -> None:
    """Mark the champion on the active parent run and its own child run; the hook (ONNX)
    gets the champion's model as logged, since it was fitted in another process."""
    mlflow.set_tag("champion", champion.candidate)
    mlflow.log_metrics({f"champion_{k}": v for k, v in champion.metrics().items()})
    mlflow.log_text(tracking.summary_json(results), "candidates.json")
    with mlflow.start_run(run_id=champion.run_id, nested=True):
        mlflow.set_tag("champion", "true")
        if champion_hook is not None:
            with tempfile.TemporaryDirectory(prefix="mlflow-champion-") as tmp:
                model = mlflow.sklearn.load_model(champion.model_uri, dst_path=tmp)
            champion_hook(model, holdout, champion.run_id)


def pick_champion(
    jobs: Sequence[TrainingJob],
    results: Iterable[CandidateResult],
    holdout: pd.DataFrame,
    *,
    mlflow_settings: MlflowSettings | None = None,
    training_settings: TrainingSettings | None = None,
    champion_hook: ChampionHook | None = None,
) -> TrainedRun:
    """Choose the champion among the candidates that trained, by the rule the single-process
    run uses (app.pipeline.selection.choose_champion), and close the parent run. Candidates
    with no result (their task failed for good) are named on the parent run; with none left
    the parent run is marked FAILED and CandidateFailedError raised: nothing to register."""
    if not jobs:
        raise ValueError("no training jobs")
    mlflow_settings = mlflow_settings or MlflowSettings()
    settings = training_settings or TrainingSettings()
    job, started = jobs[0], time.perf_counter()
    expected = [j.candidate for j in jobs]
    trained = _one_per_candidate(results, job, expected)
    failed = [name for name in expected if name not in trained]
    with tracking.session(mlflow_settings.tracking_uri) as client:
        if failed:
            log.warning("candidates without a result (their tasks failed): %s", failed)
            client.set_tag(job.parent_run_id, FAILED_CANDIDATES_TAG, ",".join(failed))
        if not trained:
            client.set_terminated(job.parent_run_id, status="FAILED")
            raise CandidateFailedError(f"every candidate failed ({', '.join(failed)})")
        ranked = [trained[name] for name in expected if name in trained]
        best = choose_champion(
            ranked,
            metric=settings.metric,
            margin=settings.promotion_margin,
            max_bytes=int(settings.max_model_mb * MB),
        )
        with mlflow.start_run(run_id=job.parent_run_id):
            _log_champion(best, ranked, holdout, champion_hook)
            timings = {"pick": time.perf_counter() - started}
            mlflow.log_metrics({f"seconds_{k}": v for k, v in timings.items()})
    return TrainedRun(
        experiment_id=job.experiment_id,
        parent_run_id=job.parent_run_id,
        champion=best.candidate,
        champion_run_id=best.run_id,
        model_uri=best.model_uri,
        accuracy=best.accuracy,
        macro_f1=best.macro_f1,
        size_bytes=best.size_bytes,
        train_rows=job.train_rows,
        holdout_rows=job.holdout_rows,
        batches=list(job.batches),
        group_number=job.group_number,
        data_fingerprint=job.data_fingerprint,
        dag_run_id=job.dag_run_id,
        candidates=[{"candidate": r.candidate, **r.metrics()} for r in ranked],
        timings=timings,
        failed_candidates=failed,
    )
