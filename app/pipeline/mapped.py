"""Training split over tasks, as the DAG runs it: one task opens the parent run, TRAINING_TASKS
mapped tasks (at most one per candidate) each train their share of the candidates, each
candidate into its own child run (in parallel, on whichever worker takes the task), and one
task picks the champion and closes the parent run.

app.pipeline.run.train_and_log does the same in one process. Here each step may run in another
process on another host, so what crosses a task boundary is small plain data (TrainingJob,
CandidateResult: ids, names, metrics; Airflow keeps it as XCom) and fitted models travel only
through MLflow. With one task (the default) it chooses the champion itself and logs only that
model, as train_and_log does; with several, every candidate's model is logged (see
train_job). Every task reads the rows itself; the split is stored with each row (by hash),
and the jobs carry the data fingerprint and the seed, so each candidate trains on the same
rows and seed.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import mlflow
import mlflow.sklearn
from mlflow.entities import Param

from app.pipeline import tracking
from app.pipeline.candidates import Candidate, default_candidates, parse_overrides
from app.pipeline.evaluate import Scores
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
    _Trained,
    champion_model_uri,
    fit_in_active_run,
)
from app.pipeline.selection import choose_by_settings
from app.settings import MlflowSettings, TrainingSettings

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# Children carry the parent's tags (dag_run_id, data_fingerprint, ...); this one is the parent's.
ROLE_TAG = "pipeline_role"
PARENT_ROLE = "parent"
# How many tries of its task trained in a child run: a retry resumes the run it started.
ATTEMPTS_TAG = "attempts"
# On a child run whose model was logged: the model's URI, so a retry that reuses the run
# (FINISHED: not trained again) knows where the model is.
MODEL_URI_TAG = "model_uri"


@dataclass(frozen=True)
class TrainingJob:
    """One mapped task's share of a pipeline run's candidates: the XCom it receives."""

    # Trained in this order, each in its own child run.
    candidates: list[str]
    # TRAINING_PARAM_OVERRIDES of these candidates, by name, as prepare_training read them.
    overrides: dict[str, dict[str, Any]]
    # The run's only job (TRAINING_TASKS=1): it holds every candidate, so its task chooses the
    # champion and logs only that model, as the one-process run does.
    whole_run: bool
    seed: int
    parent_run_id: str
    experiment_id: str
    group_number: int | None
    data_fingerprint: str | None
    dag_run_id: str | None
    batches: list[int]
    train_rows: int
    holdout_rows: int

    @property
    def name(self) -> str:
        """What the task's map index shows: its candidates, joined by "+"."""
        return "+".join(self.candidates)

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
    # None when the model was not logged: a whole-run job logs only its champion's.
    model_uri: str | None
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


def deal(names: Sequence[str], tasks: int) -> list[list[str]]:
    """The candidates over min(tasks, len(names)) jobs, round-robin in the configured order.
    What a fit costs is not known before it runs (it depends on the rows and the overrides),
    so the balance promised is by count: job sizes differ by at most one. Round-robin, not
    consecutive slices, so an order that alternates heavy and light candidates (the default's
    boosting and forests first, the linear baseline last) spreads the heavy ones over the jobs."""
    if not names:
        raise ValueError("no candidates to deal")
    count = min(max(tasks, 1), len(names))
    return [list(names[i::count]) for i in range(count)]


def open_parent_run(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    metadata: RunMetadata,
    *,
    mlflow_settings: MlflowSettings | None = None,
    training_settings: TrainingSettings | None = None,
) -> list[TrainingJob]:
    """Check the frames and the candidate configuration, open the parent run (left RUNNING:
    pick_champion closes it) and return min(TRAINING_TASKS, candidates) jobs (deal)."""
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
    groups = deal([c.name for c in candidates], settings.training_tasks)
    with tracking.session(mlflow_settings.tracking_uri) as client:
        experiment_id = tracking.ensure_experiment(client, mlflow_settings.experiment_name)
        parent_id = _existing_parent(client, experiment_id, metadata)
        if parent_id is None:
            run = client.create_run(experiment_id, tags=tags, run_name=_run_name(metadata, batches))
            parent_id = run.info.run_id
            params = {**_parent_params(candidates, settings), "training_tasks": len(groups)}
            client.log_batch(parent_id, params=[Param(k, str(v)) for k, v in params.items()])
        else:
            log.info("reusing parent run %s of an earlier try", parent_id)
            client.update_run(parent_id, status="RUNNING")
    return [
        TrainingJob(
            candidates=group,
            overrides={name: dict(overrides.get(name, {})) for name in group},
            whole_run=len(groups) == 1,
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
        for group in groups
    ]


def _earlier_child(client: MlflowClient, job: TrainingJob, name: str) -> Run | None:
    """The candidate's child run an earlier try of its task started, if any."""
    found = client.search_runs(
        [job.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{job.parent_run_id}'"
        f" and tags.candidate = '{name}'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return found[0] if found else None


def _child_run(client: MlflowClient, job: TrainingJob, name: str, earlier: Run | None) -> str:
    """The candidate's child run to train in: the earlier try's (its failure tag cleared),
    else a new one. So a candidate has one child run however often it ran."""
    if earlier is not None:
        run_id = str(earlier.info.run_id)
        if "failure" in earlier.data.tags:
            client.delete_tag(run_id, "failure")
        attempts = int(earlier.data.tags.get(ATTEMPTS_TAG, "1")) + 1
        client.set_tag(run_id, ATTEMPTS_TAG, str(attempts))
        log.info("resuming child run %s of %s (try %d)", run_id, name, attempts)
        return run_id
    tags = {
        **job.tags(),
        "candidate": name,
        "mlflow.parentRunId": job.parent_run_id,
        ATTEMPTS_TAG: "1",
    }
    return str(client.create_run(job.experiment_id, tags=tags, run_name=name).info.run_id)


def _result(job: TrainingJob, trained: _Trained) -> CandidateResult:
    evaluation = trained.evaluation
    return CandidateResult(
        candidate=evaluation.candidate,
        run_id=trained.run_id,
        parent_run_id=job.parent_run_id,
        model_uri=trained.model_uri,
        accuracy=evaluation.scores.accuracy,
        macro_f1=evaluation.scores.macro_f1,
        holdout_rows=evaluation.scores.rows,
        size_bytes=evaluation.size_bytes,
        measured=evaluation.metrics(),
    )


def _recorded_result(job: TrainingJob, run: Run) -> CandidateResult:
    """What a FINISHED child run recorded (its metrics are Evaluation.metrics())."""
    metrics = dict(run.data.metrics)
    return CandidateResult(
        candidate=run.data.tags["candidate"],
        run_id=str(run.info.run_id),
        parent_run_id=job.parent_run_id,
        model_uri=run.data.tags.get(MODEL_URI_TAG),
        accuracy=metrics["accuracy"],
        macro_f1=metrics["macro_f1"],
        holdout_rows=int(metrics["holdout_rows"]),
        size_bytes=int(metrics["model_size_bytes"]),
        measured=metrics,
    )


@dataclass
class _Done:
    """A candidate of the job that trained: its result, and the fitted model when it was
    fitted in this process (None when an earlier try's FINISHED child run was reused)."""

    result: CandidateResult
    trained: _Trained | None


def _train_one(
    client: MlflowClient,
    job: TrainingJob,
    candidate: Candidate,
    frames: tuple[pd.DataFrame, pd.DataFrame],
    settings: TrainingSettings,
    *,
    log_model: bool,
    reuse: bool = True,
) -> _Done:
    """One candidate in its child run. A child run an earlier try FINISHED (with its model,
    when this job logs models) is reused, not trained again: a retry trains only what failed."""
    earlier = _earlier_child(client, job, candidate.name)
    finished = reuse and earlier is not None and earlier.info.status == "FINISHED"
    if finished and earlier and (not log_model or MODEL_URI_TAG in earlier.data.tags):
        log.info("reusing finished child run %s of %s", earlier.info.run_id, candidate.name)
        return _Done(_recorded_result(job, earlier), None)
    child_id = _child_run(client, job, candidate.name, earlier)
    with mlflow.start_run(run_id=child_id):
        trained = fit_in_active_run(candidate, frames, settings, log_model=log_model)
        if trained.model_uri is not None:
            mlflow.set_tag(MODEL_URI_TAG, trained.model_uri)
    return _Done(_result(job, trained), trained)


def _log_whole_run_champion(
    client: MlflowClient,
    job: TrainingJob,
    done: list[_Done],
    candidates: dict[str, Candidate],
    frames: tuple[pd.DataFrame, pd.DataFrame],
    settings: TrainingSettings,
) -> list[_Done]:
    """The whole run's champion, by the rule, gets its model logged (once: the one-process
    run's champion_model_uri). Its child run may be an earlier try's, reused with no model
    and no fitted one in this process: then it is fitted again (same rows and seed, so the
    same model), the one retraining a retry can need."""
    best = choose_by_settings([d.result for d in done], settings)
    champion = next(d for d in done if d.result is best)
    if best.model_uri is not None:
        return done
    if champion.trained is None:
        again = _train_one(
            client, job, candidates[best.candidate], frames, settings, log_model=True, reuse=False
        )
    else:
        with mlflow.start_run(run_id=best.run_id):
            uri = champion_model_uri(champion.trained, frames[1])
            mlflow.set_tag(MODEL_URI_TAG, uri)
        again = _Done(replace(best, model_uri=uri), champion.trained)
    return [again if d is champion else d for d in done]


def train_job(
    job: TrainingJob,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    last_try: bool = True,
    mlflow_settings: MlflowSettings | None = None,
    training_settings: TrainingSettings | None = None,
) -> list[CandidateResult]:
    """Fit, evaluate and log the job's candidates in order, each in its child run of the
    job's parent run. A candidate whose model fails (CandidateFailedError: its child run is
    then FAILED, tagged with why) does not stop the others; afterwards the task raises
    CandidateFailedError unless this is its last try (last_try: the caller's retries are
    spent), so a retry trains the failed ones again and reuses the rest. On the last try it
    returns the results of those that trained, and pick_champion names the missing ones
    (FAILED_CANDIDATES_TAG); with none trained it raises. TrainingDataError when the rows
    are not the job's; errors outside the model (MLflow unreachable) raise at once.

    Models: a whole-run job (TRAINING_TASKS=1) chooses the champion here and logs only its
    model unless TRAINING_LOG_ALL_MODELS, as train_and_log does. With several jobs every
    candidate's model is logged: the champion is chosen only in pick_champion, among all the
    jobs' results, and it need not be its own job's best (the rule takes the top score over
    every candidate and the smallest model within the margin of it), so no job can tell which
    of its models will be needed."""
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
    candidates = default_candidates(
        job.candidates, seed=job.seed, n_jobs=settings.n_jobs, overrides=job.overrides
    )
    log_model = settings.log_all_models or not job.whole_run
    frames = (train, holdout)
    done: list[_Done] = []
    failed: list[str] = []
    with tracking.session(mlflow_settings.tracking_uri) as client:
        for candidate in candidates:
            try:
                one = _train_one(client, job, candidate, frames, settings, log_model=log_model)
                done.append(one)
            except CandidateFailedError as exc:
                log.warning("%s", exc)
                failed.append(candidate.name)
        if failed and (not last_try or not done):
            retry = "" if last_try else "; a retry trains them again and reuses the others"
            raise CandidateFailedError(f"candidates failed: {', '.join(failed)}{retry}")
        if failed:
            log.warning("last try: %s left out, the others' results returned", failed)
        if job.whole_run:
            by_name = {c.name: c for c in candidates}
            done = _log_whole_run_champion(client, job, done, by_name, frames, settings)
    return [d.result for d in done]


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
    model_uri: str,
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
                model = mlflow.sklearn.load_model(model_uri, dst_path=tmp)
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
    """Choose the champion among the candidates that trained, every job's results together,
    by the rule the single-process run uses (app.pipeline.selection.choose_champion), and
    close the parent run. Candidates
    with no result (their task failed for good) are named on the parent run; with none left
    the parent run is marked FAILED and CandidateFailedError raised: nothing to register."""
    if not jobs:
        raise ValueError("no training jobs")
    mlflow_settings = mlflow_settings or MlflowSettings()
    settings = training_settings or TrainingSettings()
    job, started = jobs[0], time.perf_counter()
    expected = [name for j in jobs for name in j.candidates]
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
        best = choose_by_settings(ranked, settings)
        if best.model_uri is None:
            # A whole-run job logs its champion's model, and this rule picks the same one.
            raise RuntimeError(
                f"the champion {best.candidate} has no logged model: its task chose another"
                " (were TRAINING_TASKS or PROMOTION_* different in that task?)"
            )
        model_uri = best.model_uri
        with mlflow.start_run(run_id=job.parent_run_id):
            _log_champion(best, model_uri, ranked, holdout, champion_hook)
            timings = {"pick": time.perf_counter() - started}
            mlflow.log_metrics({f"seconds_{k}": v for k, v in timings.items()})
    return TrainedRun(
        experiment_id=job.experiment_id,
        parent_run_id=job.parent_run_id,
        champion=best.candidate,
        champion_run_id=best.run_id,
        model_uri=model_uri,
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
