"""Train and register real models in a real MLflow server, the way the pipeline does, for the
inference API tests.

The feature layout is the pipeline's: the 10 numeric columns passed through plus one-hot
Wilderness_Area and Soil_Type with every known category declared up front.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from sklearn.base import ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

from app.covertype import (
    CATEGORICAL_COLUMNS,
    FEATURE_COLUMNS,
    NUMERIC_COLUMNS,
    SOIL_TYPES,
    TARGET_COLUMN,
    WILDERNESS_AREAS,
)
from app.onnx_model import OnnxLogResult, log_onnx_artifacts

EXPERIMENT = "inference-api-tests"


def load_frame(path: Path) -> tuple[pd.DataFrame, pd.Series]:
    frame = pd.read_csv(path)
    return frame[list(FEATURE_COLUMNS)], frame[TARGET_COLUMN]


def feature_pipeline(classifier: ClassifierMixin) -> Pipeline:
    encoder = OneHotEncoder(
        categories=[list(WILDERNESS_AREAS), list(SOIL_TYPES)],
        handle_unknown="ignore",
        sparse_output=False,
    )
    features = ColumnTransformer(
        [
            ("numeric", "passthrough", list(NUMERIC_COLUMNS)),
            ("categorical", encoder, list(CATEGORICAL_COLUMNS)),
        ]
    )
    return Pipeline([("features", features), ("classifier", classifier)])


def small_forest() -> Pipeline:
    return feature_pipeline(RandomForestClassifier(n_estimators=15, max_depth=12, random_state=0))


def small_boosting() -> Pipeline:
    return feature_pipeline(
        HistGradientBoostingClassifier(max_iter=40, learning_rate=0.2, random_state=0)
    )


def native_categorical_boosting() -> Pipeline:
    """HistGradientBoosting with native categorical splits: skl2onnx 1.20 converts it without
    error but ignores the category bitsets, so its ONNX form disagrees with it on most rows."""
    encoder = OrdinalEncoder(
        categories=[list(WILDERNESS_AREAS), list(SOIL_TYPES)],
        handle_unknown="use_encoded_value",
        unknown_value=-1,
    )
    features = ColumnTransformer(
        [
            ("numeric", "passthrough", list(NUMERIC_COLUMNS)),
            ("categorical", encoder, list(CATEGORICAL_COLUMNS)),
        ]
    )
    classifier = HistGradientBoostingClassifier(
        categorical_features=[10, 11], max_iter=30, random_state=0
    )
    return Pipeline([("features", features), ("classifier", classifier)])


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    run_id: str
    pipeline: Pipeline = field(repr=False)
    onnx: OnnxLogResult | None = None


def register(
    tracking_uri: str,
    name: str,
    pipeline: Pipeline,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    alias: str | None = None,
    metrics: dict[str, float] | None = None,
    params: dict[str, object] | None = None,
    with_onnx: bool = True,
) -> Registered:
    """Log a fitted `pipeline` in a new run (sklearn model with signature and input example,
    cloudpickle), optionally with its ONNX artifacts, register it as a version of `name` and,
    with `alias`, point the alias at it."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    example = train.head(5)
    signature = infer_signature(example, pipeline.predict(example))
    onnx = None
    with mlflow.start_run() as run:
        if params:
            mlflow.log_params(params)
        if metrics:
            mlflow.log_metrics(metrics)
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=signature,
            input_example=example,
            serialization_format="cloudpickle",
            # Given, not inferred: inference runs the model in a subprocess and costs seconds.
            pip_requirements=["scikit-learn", "pandas", "cloudpickle"],
        )
        if with_onnx:
            onnx = log_onnx_artifacts(pipeline, holdout)
    version = client.create_model_version(
        name, info.model_uri, run_id=run.info.run_id, model_id=info.model_id
    )
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return Registered(name, str(version.version), run.info.run_id, pipeline, onnx)


def register_broken(tracking_uri: str, name: str) -> Registered:
    """A version whose artifacts are not a loadable model (a truncated upload, say)."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    run = client.create_run(experiment_id)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        (model_dir / "MLmodel").write_text(
            "flavors:\n"
            "  sklearn:\n    pickled_model: model.pkl\n    serialization_format: cloudpickle\n"
            "  python_function:\n    loader_module: mlflow.sklearn\n    model_path: model.pkl\n"
        )
        (model_dir / "model.pkl").write_bytes(b"this is not a pickle")
        client.log_artifacts(run.info.run_id, str(model_dir), "model")
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(
        name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    return Registered(name, str(version.version), run.info.run_id, Pipeline([]))
