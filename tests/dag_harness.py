"""Real Airflow for the DAG tests: a home whose metadata lives in the test PostgreSQL (migrated
once per session), the DAG's settings per test, and `dag.test()` in a subprocess.

The fixtures are registered in tests/conftest.py, so every DAG test module shares one
migrated metadata database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mlflow_server import MlflowServer
from tests.servers import PostgresServer
from tests.test_data_client import ScriptedServer, scripted_server

REPO_ROOT = Path(__file__).resolve().parent.parent
AIRFLOW = Path(sys.executable).parent / "airflow"


@pytest.fixture(scope="session")
def airflow_home(postgres: PostgresServer, server_root: Path) -> dict[str, str]:
    """An Airflow home whose metadata lives in the test PostgreSQL, migrated once."""
    home = server_root / "airflow"
    home.mkdir(exist_ok=True)
    env = airflow_env(home, postgres.create_database("airflow_meta"))
    result = subprocess.run(
        [AIRFLOW, "db", "migrate"], env={**base_env(), **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return env


def airflow_env(home: Path, dsn: str, repo: Path = REPO_ROOT) -> dict[str, str]:
    """Airflow with the LocalExecutor, its metadata in the PostgreSQL database `dsn`, the
    DAGs and the app of checkout `repo`."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": dsn.replace(
            "postgresql://", "postgresql+psycopg2://"
        ),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(repo / "dags"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "PYTHONPATH": str(repo),
    }


def base_env() -> dict[str, str]:
    # Nothing of the runner's own configuration may leak into Airflow's processes.
    prefixes = ("AIRFLOW", "DATA_API", "MLFLOW", "BATCHES", "INFERENCE", "TRAINING", "AWS_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def run_dag(env: dict[str, str], timeout: float = 600) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "dag_runner.py")],
        env={**base_env(), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("DAG_RESULT ")]
    assert lines, (
        f"no result (rc {result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    )
    outcome = json.loads(lines[-1].removeprefix("DAG_RESULT "))
    outcome["log"] = result.stdout + result.stderr
    return outcome


@pytest.fixture
def pipeline_env(
    airflow_home: dict[str, str],
    batches_dsn: str,
    mlflow_server: MlflowServer,
    request: pytest.FixtureRequest,
) -> dict[str, str]:
    """Settings the DAG reads, with a model name of this test's own."""
    from tests.conftest import SMALL_CANDIDATE_PARAMS, node_slug

    slug = node_slug(request.node.name, 50)
    return {
        **airflow_home,
        "BATCHES_DB_DSN": batches_dsn,
        "MLFLOW_TRACKING_URI": mlflow_server.tracking_uri,
        "MLFLOW_EXPERIMENT_NAME": f"dag-{slug}",
        "MLFLOW_REGISTERED_MODEL": f"dag-{slug}",
        "TRAINING_PARAM_OVERRIDES": json.dumps(SMALL_CANDIDATE_PARAMS),
        "TRAINING_N_JOBS": "1",
        "PIPELINE_TASK_RETRIES": "1",
        "PIPELINE_RETRY_DELAY_SECONDS": "1",
    }


@pytest.fixture
def scripted_api() -> Iterator[ScriptedServer]:
    with scripted_server() as script:
        yield script


def sample_rows(start: int, stop: int) -> list[list[str]]:
    from tests.conftest import SAMPLE_CSV

    return [ln.split(",") for ln in SAMPLE_CSV.read_text().splitlines()[1:][start:stop]]
