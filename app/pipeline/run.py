"""A pipeline run in one process: in two steps or in one call. (The DAG splits training
over TRAINING_TASKS mapped tasks: app.pipeline.mapped, built on the pieces here.)

- `train_and_log`: train and evaluate every candidate under one parent run (a child run per
  candidate), choose the champion and log its model. Returns a TrainedRun, which is plain data
  (to_dict/from_dict) so Airflow can hand it to the next task.
- then app.pipeline.registry.register_and_promote registers the champion as a new version
  and moves the production alias only if it wins.
- `run_training`: both, in one process (tests, benchmarks).

Inputs are DataFrames (the DAG reads them with app.batch_store.read.load_rows), so this module
knows nothing about where rows are stored. Any failure raises and leaves the alias as it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import mlflow
import mlflow.sklearn
from threadpoolctl import threadpool_limits

from app.pipeline import tracking
from app.pipeline.candidates import (
    MODEL_STEP,
    Candidate,
    default_candidates,
    parse_overrides,
    prepare_for_serving,
)
from app.pipeline.evaluate import Evaluation, evaluate, fit
from app.pipeline.features import batches_in, check_frame
from app.pipeline.registry import PromotionDecision, register_and_promote
from app.pipeline.selection import choose_by_settings
from app.settings import MlflowSettings, TrainingSettings

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

log = logging.getLogger(__name__)

# Called with (fitted champion, held-out rows, champion's run id) while that run is active,
# before registration: e.g. app.onnx_model.log_onnx_artifacts.
ChampionHook = Callable[["Pipeline", "pd.DataFrame", str], object]


# On the parent run and the registered version: which candidates the champion did not face.
FAILED_CANDIDATES_TAG = "failed_candidates"


class CandidateFailedError(RuntimeError):
    """A candidate raised while training or being evaluated; nothing was registered."""


@dataclass(frozen=True)
class RunMetadata:
    """Where the rows came from; recorded as tags on the runs and the version."""

    group_number: int | None = None
    # Batch numbers the training rows cover; default: those in the train frame.
    batches: Sequence[int] | None = None
    data_fingerprint: str | None = None
    dag_run_id: str | None = None


@dataclass(frozen=True)
class TrainedRun:
    """What train_and_log produced; JSON-serialisable through to_dict."""

    experiment_id: str
    parent_run_id: str
    champion: str
    champion_run_id: str
    model_uri: str
    accuracy: float
    macro_f1: float
    size_bytes: int
    train_rows: int
    holdout_rows: int
    batches: list[int]
    group_number: int | None
    data_fingerprint: str | None
    dag_run_id: str | None
    # Per candidate: name and its flat metrics (Evaluation.metrics()).
    candidates: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # Candidates whose task failed for good: the champion was chosen among the others.
    failed_candidates: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainedRun:
        known = {f.name for f in fields(cls)}
        missing = known - set(data) - {"candidates", "timings", "failed_candidates"}
        if missing:
            raise ValueError(f"not a TrainedRun: missing {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def tags(self) -> dict[str, str]:
        tags = _tags(
            RunMetadata(self.group_number, self.batches, self.data_fingerprint, self.dag_run_id),
            self.batches,
            self.train_rows,
            self.holdout_rows,
        )
        if self.failed_candidates:
            tags[FAILED_CANDIDATES_TAG] = ",".join(self.failed_candidates)
        return tags


@dataclass(frozen=True)
class TrainingResult:
    """What run_training did, with the in-memory evaluations."""

    trained: TrainedRun
    evaluations: list[Evaluation]
    champion: Evaluation
    model_version: str
    decision: PromotionDecision
    # Wall seconds: candidates (fit + evaluate + log each), log_model, register, promote, total.
    timings: dict[str, float]

    @property
    def parent_run_id(self) -> str:
        return self.trained.parent_run_id

    @property
    def champion_run_id(self) -> str:
        return self.trained.champion_run_id

    @property
    def model_uri(self) -> str:
        return self.trained.model_uri


def _tags(
    metadata: RunMetadata, batches: Sequence[int], train_rows: int, holdout_rows: int
) -> dict[str, str]:
    tags = {
        "batches": ",".join(str(b) for b in batches),
        "batch_count": str(len(batches)),
        "train_rows": str(train_rows),
        "holdout_rows": str(holdout_rows),
    }
    if batches:
        tags["last_batch"] = str(max(batches))
    if metadata.group_number is not None:
        tags["group_number"] = str(metadata.group_number)
    if metadata.data_fingerprint:
        tags["data_fingerprint"] = metadata.data_fingerprint
    if metadata.dag_run_id:
        tags["dag_run_id"] = metadata.dag_run_id
    return tags


def _run_name(metadata: RunMetadata, batches: Sequence[int]) -> str:
    group = f"group-{metadata.group_number}-" if metadata.group_number is not None else ""
    upto = f"batches-1-{max(batches)}" if batches else "batches-none"
    return f"{group}{upto}-{time.strftime('%Y%m%dT%H%M%S')}"


def train_and_log(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    metadata: RunMetadata | None = None,
    *,
    mlflow_settings: MlflowSettings | None = None,
    training_settings: TrainingSettings | None = None,
    candidates: Sequence[Candidate] | None = None,
    champion_hook: ChampionHook | None = None,
) -> TrainedRun:
    """Train, evaluate and log every candidate; log the champion's model. Raises
    MlflowUnavailableError when the tracking server is down or stops answering,
    CandidateFailedError when a model fails, TrainingDataError for unusable frames."""
    trained, _, _ = _train_and_log(
        train,
        holdout,
        metadata or RunMetadata(),
        mlflow_settings or MlflowSettings(),
        training_settings or TrainingSettings(),
        candidates,
        champion_hook,
    )
    return trained


@dataclass
class _Trained:
    """One candidate after its child run: what choosing and logging the champion need."""

    evaluation: Evaluation
    model: Pipeline
    run_id: str
    model_uri: str | None


def _resolve_candidates(
    settings: TrainingSettings, candidates: Sequence[Candidate] | None
) -> Sequence[Candidate]:
    if candidates is None:
        candidates = default_candidates(
            settings.candidates,
            seed=settings.seed,
            n_jobs=settings.n_jobs,
            overrides=parse_overrides(settings.param_overrides),
        )
    if not candidates:
        raise ValueError("no candidates to train")
    return candidates


def _train_candidate(
    candidate: Candidate,
    experiment_id: str,
    tags: dict[str, str],
    frames: tuple[pd.DataFrame, pd.DataFrame],
    settings: TrainingSettings,
) -> _Trained:
    """Fit and evaluate one candidate in its own child run of the active parent run."""
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=candidate.name,
        nested=True,
        tags={**tags, "candidate": candidate.name},
    ):
        return fit_in_active_run(candidate, frames, settings, log_model=settings.log_all_models)


def fit_in_active_run(
    candidate: Candidate,
    frames: tuple[pd.DataFrame, pd.DataFrame],
    settings: TrainingSettings,
    *,
    log_model: bool,
) -> _Trained:
    """Fit, evaluate and log one candidate into the active run (its child run). Params
    already on the run are not logged again: a retried task resumes its run, and MLflow
    refuses a param whose value changed (n_jobs may differ on another worker)."""
    train, holdout = frames
    child = mlflow.active_run()
    if child is None:
        raise RuntimeError("fit_in_active_run needs an active MLflow run")
    model = candidate.build()
    logged = set(mlflow.get_run(child.info.run_id).data.params)
    params = tracking.loggable_params(model.named_steps[MODEL_STEP].get_params())
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})
    try:
        with threadpool_limits(limits=settings.n_jobs):
            seconds = fit(model, train)
            prepare_for_serving(model)
            evaluation = evaluate(candidate.name, model, seconds, train, holdout)
    except Exception as exc:
        mlflow.set_tag("failure", f"{type(exc).__name__}: {exc}"[:5000])
        raise CandidateFailedError(
            f"candidate {candidate.name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    tracking.log_evaluation(evaluation)
    uri = tracking.log_model(model, holdout).model_uri if log_model else None
    log.info(
        "%s: %s %.4f, fit %.1f s, %.2f MB",
        candidate.name,
        settings.metric,
        evaluation.scores.get(settings.metric),
        evaluation.fit_seconds,
        evaluation.size_mb,
    )
    return _Trained(evaluation, model, child.info.run_id, uri)


def champion_model_uri(champion: _Trained, holdout: pd.DataFrame) -> str:
    """The champion's model URI: logged into the active run (its child run) now, unless it
    was logged with the others' (TRAINING_LOG_ALL_MODELS), so it is logged once."""
    return champion.model_uri or tracking.log_model(champion.model, holdout).model_uri


def _log_champion(
    champion: _Trained,
    evaluations: list[Evaluation],
    holdout: pd.DataFrame,
    champion_hook: ChampionHook | None,
) -> str:
    """Mark the champion on the parent run, log its model (once) in its own child run and
    return the model's URI."""
    mlflow.set_tag("champion", champion.evaluation.candidate)
    mlflow.log_metrics({f"champion_{k}": v for k, v in champion.evaluation.metrics().items()})
    mlflow.log_text(tracking.summary_json(evaluations), "candidates.json")
    with mlflow.start_run(run_id=champion.run_id, nested=True):
        mlflow.set_tag("champion", "true")
        uri = champion_model_uri(champion, holdout)
        if champion_hook is not None:
            champion_hook(champion.model, holdout, champion.run_id)
    return uri


def _parent_params(candidates: Sequence[Candidate], settings: TrainingSettings) -> dict[str, Any]:
    return {
        "candidates": ",".join(c.name for c in candidates),
        "promotion_metric": settings.metric,
        "promotion_margin": settings.promotion_margin,
        "max_model_mb": settings.max_model_mb,
        "seed": settings.seed,
    }


def _train_and_log(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    metadata: RunMetadata,
    mlflow_settings: MlflowSettings,
    settings: TrainingSettings,
    candidates: Sequence[Candidate] | None,
    champion_hook: ChampionHook | None,
) -> tuple[TrainedRun, list[Evaluation], Evaluation]:
    check_frame(train, "train")
    check_frame(holdout, "holdout")
    candidates = _resolve_candidates(settings, candidates)
    batches = list(metadata.batches) if metadata.batches is not None else batches_in(train)
    tags = _tags(metadata, batches, len(train), len(holdout))
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with tracking.session(mlflow_settings.tracking_uri) as client:
        experiment_id = tracking.ensure_experiment(client, mlflow_settings.experiment_name)
        with mlflow.start_run(
            experiment_id=experiment_id, run_name=_run_name(metadata, batches), tags=tags
        ) as parent:
            mlflow.log_params(_parent_params(candidates, settings))
            trained = [
                _train_candidate(c, experiment_id, tags, (train, holdout), settings)
                for c in candidates
            ]
            timings["candidates"] = time.perf_counter() - started
            evaluations = [t.evaluation for t in trained]
            best = choose_by_settings(evaluations, settings)
            champion = next(t for t in trained if t.evaluation is best)
            step = time.perf_counter()
            model_uri = _log_champion(champion, evaluations, holdout, champion_hook)
            timings["log_model"] = time.perf_counter() - step
            timings["train_total"] = time.perf_counter() - started
            mlflow.log_metrics({f"seconds_{k}": v for k, v in timings.items()})
    trained_run = TrainedRun(
        experiment_id=experiment_id,
        parent_run_id=parent.info.run_id,
        champion=best.candidate,
        champion_run_id=champion.run_id,
        model_uri=model_uri,
        accuracy=best.scores.accuracy,
        macro_f1=best.scores.macro_f1,
        size_bytes=best.size_bytes,
        train_rows=len(train),
        holdout_rows=len(holdout),
        batches=batches,
        group_number=metadata.group_number,
        data_fingerprint=metadata.data_fingerprint,
        dag_run_id=metadata.dag_run_id,
        candidates=[{"candidate": e.candidate, **e.metrics()} for e in evaluations],
        timings=timings,
    )
    return trained_run, evaluations, best


def run_training(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    metadata: RunMetadata | None = None,
    *,
    mlflow_settings: MlflowSettings | None = None,
    training_settings: TrainingSettings | None = None,
    candidates: Sequence[Candidate] | None = None,
    champion_hook: ChampionHook | None = None,
) -> TrainingResult:
    """train_and_log then register_and_promote, in one process. Raises on any failure,
    leaving the alias as it was: MlflowUnavailableError, CandidateFailedError,
    TrainingDataError, or PromotionError (production cannot be re-scored, or the alias not
    moved)."""
    mlflow_settings = mlflow_settings or MlflowSettings()
    settings = training_settings or TrainingSettings()
    started = time.perf_counter()
    trained, evaluations, champion = _train_and_log(
        train,
        holdout,
        metadata or RunMetadata(),
        mlflow_settings,
        settings,
        candidates,
        champion_hook,
    )
    registration = register_and_promote(
        trained,
        holdout,
        mlflow_settings=mlflow_settings,
        training_settings=settings,
        challenger=champion,
    )
    timings = {
        "candidates": trained.timings["candidates"],
        "log_model": trained.timings["log_model"],
        **registration.timings,
        "total": time.perf_counter() - started,
    }
    return TrainingResult(
        trained=trained,
        evaluations=evaluations,
        champion=champion,
        model_version=registration.version,
        decision=registration.decision,
        timings=timings,
    )


__all__ = [
    "CandidateFailedError",
    "RunMetadata",
    "TrainedRun",
    "TrainingResult",
    "run_training",
    "train_and_log",
]
