"""The training pipeline library the DAG calls: features, candidates, evaluation, MLflow
tracking, registry and promotion. Entry points: app.pipeline.mapped (open_parent_run,
train_job per candidate, pick_champion) and app.pipeline.registry.register_and_promote as the
DAG's tasks; run.train_and_log (all candidates in one call) then register_and_promote, or
run.run_training for both, in one process."""

from app.pipeline.registry import PromotionError, Registration, register_and_promote
from app.pipeline.run import (
    CandidateFailedError,
    RunMetadata,
    TrainedRun,
    TrainingResult,
    run_training,
    train_and_log,
)
from app.pipeline.tracking import MlflowUnavailableError

__all__ = [
    "CandidateFailedError",
    "MlflowUnavailableError",
    "PromotionError",
    "Registration",
    "RunMetadata",
    "TrainedRun",
    "TrainingResult",
    "register_and_promote",
    "run_training",
    "train_and_log",
]
