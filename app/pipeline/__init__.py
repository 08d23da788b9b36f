"""The training pipeline library the DAG calls: features, candidates, evaluation, MLflow
tracking, registry and promotion. Entry points: app.pipeline.run.train_and_log and
app.pipeline.registry.register_and_promote as the DAG's two steps, run.run_training as one."""

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
