"""MLflow: the connection, the experiment, and what each run records.

The fluent API keeps the parent/child run stack (MLflow's own state) and `log_model` logs
through MLflow's global tracking URI; `tracking_uri` points both at the configured server for
one pipeline run and puts back what was there before.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import cloudpickle
import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
import requests
import sklearn
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

from app.covertype import COVER_TYPES
from app.pipeline.evaluate import LABELS, Evaluation
from app.pipeline.features import split_xy
from app.pipeline.plots import confusion_matrix_svg

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo
    from sklearn.pipeline import Pipeline

MODEL_NAME_IN_RUN = "model"
INPUT_EXAMPLE_ROWS = 5
# MLflow caps a param value at 6000 characters; ours are short, this keeps a surprise readable.
_PARAM_MAX = 500


class MlflowUnavailableError(RuntimeError):
    """The tracking server did not answer; nothing after the failing call happened."""


def reachable(tracking_uri: str, timeout: float = 5.0) -> bool:
    if not tracking_uri.startswith(("http://", "https://")):
        return True
    try:
        response = requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout)
    except requests.RequestException:
        return False
    return response.ok


@contextlib.contextmanager
def tracking_uri(uri: str) -> Iterator[None]:
    """Use `uri` for MLflow's fluent API (tracking and registry) inside the block.
    mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; all are restored so a caller's
    own setting survives."""
    # No public getter tells a URI set by set_tracking_uri apart from the environment's or the
    # default, so read MLflow's own module global (getattr: tolerate it being renamed).
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = getattr(tracking_utils, "_tracking_uri", None)
    previous_registry = getattr(registry_utils, "_registry_uri", None)
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    # An experiment a caller chose with mlflow.set_experiment() would make re-entering one of
    # our runs by id fail ("active experiment ID does not match"): every run here names its
    # experiment explicitly, so clear the caller's choice for the block and give it back after.
    previous_experiment = getattr(fluent, "_active_experiment_id", None)
    fluent._active_experiment_id = None
    mlflow.set_tracking_uri(uri)
    # The registry too: mlflow.register_model follows the process-wide registry URI, which
    # a caller (or an earlier call in a long-lived process) may have pointed elsewhere; seen
    # in the test suite, where a version was created on another test's server.
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        registry_utils._registry_uri = previous_registry
        fluent._active_experiment_id = previous_experiment
        if previous_env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def connect(uri: str) -> MlflowClient:
    """A client for the server, after checking it answers, so a dead server fails the run
    before minutes of training instead of after."""
    if not reachable(uri):
        raise MlflowUnavailableError(f"MLflow tracking server {uri} is not reachable")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def session(uri: str) -> Iterator[MlflowClient]:
    """Connect (failing fast when the server is down), scope MLflow's global URI to this call,
    and turn any error raised while the server has gone away into MlflowUnavailableError."""
    client = connect(uri)
    try:
        with tracking_uri(uri):
            yield client
    except MlflowUnavailableError:
        raise
    except Exception as exc:
        if not reachable(uri):
            raise MlflowUnavailableError(
                f"MLflow tracking server {uri} stopped answering during the run "
                f"({type(exc).__name__}: {exc}); the production alias was not touched"
            ) from exc
        raise


def ensure_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            # Someone deleted it in the UI; its name stays taken until restored or purged.
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        # Created concurrently by another run.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def loggable_params(params: dict[str, Any]) -> dict[str, str]:
    return {k: str(v)[:_PARAM_MAX] for k, v in sorted(params.items())}


def log_evaluation(evaluation: Evaluation) -> None:
    """Metrics, the confusion matrix (image and numbers) and the per-class report of the
    active run."""
    mlflow.log_metrics(evaluation.metrics())
    labels = [f"{n} {COVER_TYPES[n]}" for n in LABELS]
    title = (
        f"{evaluation.candidate}: accuracy {evaluation.scores.accuracy:.4f} "
        f"on {evaluation.scores.rows} held-out rows"
    )
    mlflow.log_text(
        confusion_matrix_svg(evaluation.confusion, labels, title), "confusion_matrix.svg"
    )
    mlflow.log_dict(
        {
            "candidate": evaluation.candidate,
            "labels": LABELS,
            "confusion_matrix": evaluation.confusion,
            "per_class_f1": {str(k): v for k, v in evaluation.per_class_f1.items()},
            "metrics": evaluation.metrics(),
            "batches": evaluation.batches,
        },
        "evaluation.json",
    )


def pip_requirements() -> list[str]:
    # Declared instead of inferred: inference re-imports the model in a subprocess, which costs
    # seconds per run and, with mlflow-skinny, can miss what the inference venv needs.
    return [
        f"scikit-learn=={sklearn.__version__}",
        f"cloudpickle=={cloudpickle.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
    ]


def log_model(model: Pipeline, holdout: pd.DataFrame) -> ModelInfo:
    """Log the fitted pipeline to the active run with its signature and an input example.

    cloudpickle, not MLflow's default skops: skops refuses to load tree models unless every
    sklearn type is listed as trusted (UntrustedTypesFoundException: sklearn.tree._tree.Tree),
    and the inference venv has cloudpickle (mlflow-skinny needs it) but no skops."""
    x, _ = split_xy(holdout)
    example = x.head(INPUT_EXAMPLE_ROWS)
    signature = infer_signature(example, model.predict(example))
    return mlflow.sklearn.log_model(
        sk_model=model,
        name=MODEL_NAME_IN_RUN,
        serialization_format="cloudpickle",
        signature=signature,
        input_example=example,
        pip_requirements=pip_requirements(),
    )


class Summarised(Protocol):
    """An Evaluation, or a candidate task's result (app.pipeline.mapped.CandidateResult)."""

    @property
    def candidate(self) -> str: ...
    def metrics(self) -> dict[str, float]: ...


def summary_json(evaluations: Sequence[Summarised]) -> str:
    rows = [
        {"candidate": e.candidate, **{k: round(v, 6) for k, v in e.metrics().items()}}
        for e in evaluations
    ]
    return json.dumps(rows, indent=2)
