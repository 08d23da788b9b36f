"""Session-wide real servers. Each starts only when a test asks for it."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Hypothesis keeps its example database in .hypothesis/ of the working folder unless told
# otherwise; the fuzz tests must not write into the repository.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", tempfile.mkdtemp(prefix="mlops-hypothesis-"))

from tests.servers import (
    MinioServer,
    MySQLServer,
    PostgresServer,
    mysql_server,
    postgres_server,
    s3_server,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CSV = REPO_ROOT / "data" / "covertype-sample.csv"
FULL_DATASET = REPO_ROOT / "data" / "covertype.csv.gz"


@pytest.fixture(scope="session")
def server_root() -> Iterator[Path]:
    # Under /tmp with world-traversable permissions: the database servers run as their own
    # system users when the tests run as root.
    with tempfile.TemporaryDirectory(prefix="mlops-test-") as d:
        Path(d).chmod(0o755)
        yield Path(d)


@pytest.fixture(scope="session")
def postgres(server_root: Path) -> Iterator[PostgresServer]:
    with postgres_server(server_root / "postgres") as server:
        yield server


@pytest.fixture(scope="session")
def mysql(server_root: Path) -> Iterator[MySQLServer]:
    with mysql_server(server_root / "mysql", root_password=secrets.token_urlsafe(16)) as server:
        yield server


@pytest.fixture(scope="session")
def s3(server_root: Path) -> Iterator[MinioServer]:
    with s3_server(
        server_root / "s3", access_key=secrets.token_hex(10), secret_key=secrets.token_urlsafe(30)
    ) as server:
        yield server


@pytest.fixture
def batches_dsn(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh, empty batches database per test."""
    name = "batches_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:40].lower()
    return postgres.create_database(name)


# --- MLflow tracking server (pipeline and promotion tests) ------------------------------------
import pandas as pd  # noqa: E402 - this section is appended by design

from app.settings import MlflowSettings  # noqa: E402
from tests.mlflow_server import MlflowServer  # noqa: E402


@pytest.fixture(scope="session")
def mlflow_server(server_root: Path, mysql: MySQLServer, s3: MinioServer) -> Iterator[MlflowServer]:
    """One real `mlflow server` per session: MySQL backend, artifacts proxied to S3.

    S3 credentials go to the server process only; for the whole session the test process
    itself has none in its environment, so every artifact upload and download the tests see
    went through the server's proxy.
    """
    import os

    from tests.mlflow_server import mlflow_server as start_mlflow_server

    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("AWS_") or name == "MLFLOW_S3_ENDPOINT_URL":
                mp.delenv(name)
        # Nor from files or the instance metadata service: boto3 finds no credentials at all.
        nowhere = str(server_root / "no-aws-config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", nowhere)
        mp.setenv("AWS_CONFIG_FILE", nowhere)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        with start_mlflow_server(server_root / "mlflow", mysql, s3) as server:
            yield server


@pytest.fixture(scope="session")
def covertype_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout) from the 5,000-row sample, shaped like app.batch_store.read.load_rows:
    10 batches of 500 consecutive rows, every 5th row held out."""
    from app.covertype import CATEGORICAL_COLUMNS, COLUMNS

    frame = pd.read_csv(SAMPLE_CSV, dtype={c: "str" for c in CATEGORICAL_COLUMNS})
    frame = frame[list(COLUMNS)].reset_index(drop=True)
    frame["batch_number"] = 1 + frame.index // 500
    holdout = frame.index % 5 == 0
    return (
        frame[~holdout].reset_index(drop=True),
        frame[holdout].reset_index(drop=True),
    )


def node_slug(name: str, width: int) -> str:
    """A test's name as an MLflow experiment or model name of at most `width` characters,
    unique per test: a long name keeps a hash of the whole, so parametrized tests whose
    names differ only past the cut (test_x[1], test_x[2]) do not share an experiment."""
    import hashlib

    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()
    if len(slug) <= width:
        return slug
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{slug[: width - 9].strip('-')}-{digest}"


@pytest.fixture
def mlflow_settings(mlflow_server: MlflowServer, request: pytest.FixtureRequest) -> MlflowSettings:
    """Settings pointing at the session server, with an experiment and a registered model of
    this test's own, so tests never see each other's versions or aliases."""
    slug = node_slug(request.node.name, 60)
    return MlflowSettings(
        tracking_uri=mlflow_server.tracking_uri,
        experiment_name=f"forest_cover-{slug}",
        registered_model_name=f"forest-cover-{slug}",
        production_alias="production",
    )


# Small enough that a whole pipeline run on the sample takes seconds; same recipes, same code.
SMALL_CANDIDATE_PARAMS: dict[str, dict[str, object]] = {
    "hist_gradient_boosting": {"max_iter": 15, "max_leaf_nodes": 15},
    "extra_trees": {"n_estimators": 8, "max_depth": 12},
    "random_forest": {"n_estimators": 8, "max_depth": 12},
    "logistic_regression": {"max_iter": 200},
}


@pytest.fixture(scope="session")
def small_candidates():  # noqa: ANN201 - list[app.pipeline.candidates.Candidate], immutable
    from app.pipeline.candidates import default_candidates

    return default_candidates(
        list(SMALL_CANDIDATE_PARAMS), seed=7, n_jobs=1, overrides=SMALL_CANDIDATE_PARAMS
    )


_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME")


@pytest.fixture(autouse=True)
def _restore_mlflow_globals() -> Iterator[None]:
    """MLflow's fluent API keeps a process-wide tracking URI, registry URI and experiment;
    a test that sets them (as a user script would) must not change what the next test sees."""
    import os
    import sys

    saved_env = {name: os.environ.get(name) for name in _MLFLOW_ENV}
    yield
    if "mlflow" not in sys.modules:
        return
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    while mlflow.active_run() is not None:
        mlflow.end_run()
    tracking_utils._tracking_uri = None
    registry_utils._registry_uri = None
    fluent._active_experiment_id = None
    for name, value in saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# --- Airflow (DAG tests): registered here once, so every module shares one migrated database.
from tests.dag_harness import airflow_home, pipeline_env, scripted_api  # noqa: E402, F401
