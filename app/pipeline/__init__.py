"""The training pipeline library the DAG calls: features, candidates, evaluation, MLflow
tracking, registry and promotion. Entry points: app.pipeline.run (train_and_log and
register_and_promote as two steps, run_training as one)."""

from app.pipeline.registry import PromotionError
from app.pipeline.run import (
    CandidateFailedError,
    RunMetadata,
    TrainedRun,
    TrainingResult,
    register_and_promote,
    run_training,
    train_and_log,
)
from app.pipeline.tracking import MlflowUnavailableError

__all__ = [
    "CandidateFailedError",
    "MlflowUnavailableError",
    "PromotionError",
    "RunMetadata",
    "TrainedRun",
    "TrainingResult",
    "register_and_promote",
    "run_training",
    "train_and_log",
]
