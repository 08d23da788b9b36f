"""The Airflow DAG forest_cover_mlops_pipeline, parsed and run by real Airflow.

Runs use dag.test() in a subprocess (tests/dag_runner.py) with a real PostgreSQL metadata
database, the real data API process, real PostgreSQL batches_db and the real MLflow server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg2
from mlflow import MlflowClient

from tests.conftest import REPO_ROOT
from tests.dag_harness import base_env, run_dag, sample_rows
from tests.mlflow_server import MlflowServer
from tests.test_data_api_process import data_api_process
from tests.test_data_client import CourseServer, Reply, ScriptedServer

DAG_ID = "forest_cover_mlops_pipeline"
AIRFLOW = Path(sys.executable).parent / "airflow"
DOWNSTREAM_OF_GATE = ("train_and_evaluate", "register_and_promote", "reload_inference_api")


def _count(dsn: str, sql: str) -> int:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return int(cur.fetchone()[0])


def _alias_version(tracking_uri: str, name: str) -> str | None:
    try:
        return MlflowClient(tracking_uri).get_model_version_by_alias(name, "production").version
    except Exception:
        return None


def _xcom(env: dict[str, str], task_id: str) -> dict[str, object]:
    """The task's return value as Airflow stored it in its metadata database."""
    dsn = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace(
        "postgresql+psycopg2://", "postgresql://"
    )
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT value FROM xcom WHERE dag_id = %s AND task_id = %s AND key = 'return_value'"
            " ORDER BY timestamp DESC LIMIT 1",
            (DAG_ID, task_id),
        )
        (value,) = cur.fetchone()
    return value if isinstance(value, dict) else json.loads(value)


# --- integrity ------------------------------------------------------------------------------


def test_dag_imports_and_has_the_pipeline_shape(airflow_home: dict[str, str]) -> None:
    code = f"""
import json, time
t = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={str(REPO_ROOT / "dags")!r})
dag = bag.get_dag({DAG_ID!r})
print("INFO " + json.dumps({{
    "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
    "tasks": sorted(dag.task_ids),
    "schedule": str(dag.schedule),
    "catchup": dag.catchup,
    "max_active_runs": dag.max_active_runs,
    "upstream": {{t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}},
    "timeouts": {{t.task_id: t.execution_timeout.total_seconds() for t in dag.tasks}},
    "retries": {{t.task_id: t.retries for t in dag.tasks}},
}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**base_env(), **airflow_home},
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("INFO ")), None)
    assert line, result.stderr[-3000:]
    info = json.loads(line[5:])
    assert info["errors"] == {}
    assert info["tasks"] == sorted(
        [
            "fetch_batch",
            "store_batch",
            "has_new_rows",
            "train_and_evaluate",
            "register_and_promote",
            "reload_inference_api",
        ]
    )
    assert info["schedule"] == "0:05:00"
    assert info["catchup"] is False
    assert info["max_active_runs"] == 1
    up = info["upstream"]
    assert up["store_batch"] == ["fetch_batch"]
    assert up["has_new_rows"] == ["store_batch"]
    assert set(up["train_and_evaluate"]) == {"has_new_rows", "store_batch"}
    assert up["register_and_promote"] == ["train_and_evaluate"]
    assert up["reload_inference_api"] == ["register_and_promote"]
    assert all(seconds > 0 for seconds in info["timeouts"].values())
    assert info["retries"]["fetch_batch"] >= 1 and info["retries"]["train_and_evaluate"] >= 1


def test_dag_file_parses_without_importing_the_heavy_stack(airflow_home: dict[str, str]) -> None:
    # The dag-processor re-parses the file every few seconds: it must not import sklearn,
    # pandas or mlflow at module level.
    code = f"""
import sys, runpy
runpy.run_path({str(REPO_ROOT / "dags" / "forest_cover_mlops_pipeline.py")!r})
heavy = [m for m in ("sklearn", "pandas", "mlflow") if m in sys.modules]
print("HEAVY:" + ",".join(heavy))
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**base_env(), **airflow_home},
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("HEAVY")), None)
    assert line is not None, result.stderr[-3000:]
    assert line == "HEAVY:", f"DAG parsing imported: {line[6:]}"


# --- full runs ------------------------------------------------------------------------------


def test_full_run_stores_trains_registers_and_promotes(
    pipeline_env: dict[str, str], mlflow_server: MlflowServer, s3, tmp_path: Path
) -> None:
    with data_api_process(tmp_path, "data-api", DATA_API_SEED="7") as api:
        env = {**pipeline_env, "DATA_API_URL": api.base_url, "DATA_API_GROUP": "3"}
        outcome = run_dag(env)
    assert outcome["state"] == "success", outcome["log"][-6000:]
    tasks = outcome["tasks"]
    assert tasks["train_and_evaluate"] == "success"
    assert tasks["register_and_promote"] == "success"
    # No inference API configured: the reload step reports that and succeeds.
    assert tasks["reload_inference_api"] == "success"

    dsn = env["BATCHES_DB_DSN"]
    assert _count(dsn, "SELECT count(*) FROM covertype_rows WHERE group_number = 3") == 50
    assert _count(dsn, "SELECT count(*) FROM batch_status WHERE group_number = 3") == 1
    # The rows went from fetch_batch to store_batch through batches_db, not through XCom.
    assert _count(dsn, "SELECT count(*) FROM batch_deliveries") == 0
    fetched = _xcom(env, "fetch_batch")
    assert fetched["status"] == "new" and fetched["rows"] == 50, fetched
    assert isinstance(fetched["delivery_id"], int)

    client = MlflowClient(mlflow_server.tracking_uri)
    name = env["MLFLOW_REGISTERED_MODEL"]
    version = _alias_version(mlflow_server.tracking_uri, name)
    assert version == "1"
    mv = client.get_model_version(name, version)
    run = client.get_run(mv.run_id)
    assert run.data.tags.get("group_number") == "3"
    parent_id = run.data.tags.get("mlflow.parentRunId")
    assert parent_id, "the champion is a child run of the pipeline run"
    parent = client.get_run(parent_id)
    assert parent.data.tags.get("dag_run_id"), "the parent run records the DAG run id"
    assert parent.data.tags.get("data_fingerprint")
    # The model's files really are in the bucket, put there by the server's artifact proxy.
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket="mlflows3").get("Contents", [])]
    assert any(mv.run_id in k or (mv.source or "").split("/")[-1] in k for k in keys)


def test_all_batches_served_skips_training(
    pipeline_env: dict[str, str], mlflow_server: MlflowServer, scripted_api: ScriptedServer
) -> None:
    scripted_api.replies = [
        Reply(400, {"detail": "Ya se recolectó toda la información minima necesaria"})
    ]
    env = {**pipeline_env, "DATA_API_URL": scripted_api.url}
    outcome = run_dag(env)
    tasks = outcome["tasks"]
    assert tasks["fetch_batch"] == "success", outcome["log"][-4000:]
    assert tasks["has_new_rows"] == "success"
    for task_id in DOWNSTREAM_OF_GATE:
        assert tasks[task_id] == "skipped", (task_id, tasks)
    assert outcome["state"] == "success"
    assert _alias_version(mlflow_server.tracking_uri, env["MLFLOW_REGISTERED_MODEL"]) is None


def test_data_api_down_retries_then_fails_and_stores_nothing(
    pipeline_env: dict[str, str], scripted_api: ScriptedServer
) -> None:
    scripted_api.replies = [Reply(503, {"detail": "down"}), Reply(503, {"detail": "down"})]
    env = {**pipeline_env, "DATA_API_URL": scripted_api.url}
    outcome = run_dag(env)
    assert outcome["state"] == "failed"
    assert outcome["tasks"]["fetch_batch"] == "failed"
    assert outcome["tries"]["fetch_batch"] == 2, "one retry before failing"
    assert len(scripted_api.requests) == 2
    assert "503" in outcome["log"]
    dsn = env["BATCHES_DB_DSN"]
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('covertype_rows')")
        table = cur.fetchone()[0]
    if table is not None:
        assert _count(dsn, "SELECT count(*) FROM covertype_rows") == 0


def test_malformed_rows_are_kept_aside_and_the_rest_trained_on(
    pipeline_env: dict[str, str], mlflow_server: MlflowServer, scripted_api: ScriptedServer
) -> None:
    # A course-like server (every batch alike, Spanish messages) with two broken rows added.
    course = CourseServer(interval=3600)
    broken = [["2596", "51", "3"], ["2596", "999", "3", "258", "0", "510", "221", "232", "148",
               "6279", "Rawah", "C7745", "5"]]  # fmt: skip

    def handler(path: str, query: dict[str, list[str]]) -> Reply:
        reply = course(path, query)
        if reply.status == 200 and isinstance(reply.body, dict):
            reply.body["data"] = sample_rows(0, 300) + broken
        return reply

    scripted_api.handler = handler
    env = {**pipeline_env, "DATA_API_URL": scripted_api.url, "DATA_API_GROUP": "2"}
    outcome = run_dag(env)
    assert outcome["state"] == "success", outcome["log"][-6000:]
    dsn = env["BATCHES_DB_DSN"]
    assert _count(dsn, "SELECT count(*) FROM rejected_rows WHERE group_number = 2") == 2
    stored = _count(dsn, "SELECT count(*) FROM covertype_rows WHERE group_number = 2")
    assert 290 <= stored <= 300  # the sample may hold a few exact duplicates
    name = env["MLFLOW_REGISTERED_MODEL"]
    version = _alias_version(mlflow_server.tracking_uri, name)
    assert version is not None
    mv = MlflowClient(mlflow_server.tracking_uri).get_model_version(name, version)
    assert mv.tags.get("train_rows") == str(
        _count(dsn, "SELECT count(*) FROM covertype_rows WHERE group_number = 2 AND NOT is_holdout")
    )


def test_mlflow_down_fails_the_run_and_leaves_the_alias(
    pipeline_env: dict[str, str], mlflow_server: MlflowServer, scripted_api: ScriptedServer
) -> None:
    scripted_api.replies = [
        Reply(body={"group_number": 4, "batch_number": 1, "data": sample_rows(0, 400)}),
        Reply(body={"group_number": 4, "batch_number": 2, "data": sample_rows(400, 800)}),
    ]
    env = {**pipeline_env, "DATA_API_URL": scripted_api.url, "DATA_API_GROUP": "4"}
    first = run_dag(env)
    assert first["state"] == "success", first["log"][-6000:]
    name = env["MLFLOW_REGISTERED_MODEL"]
    before = _alias_version(mlflow_server.tracking_uri, name)
    assert before == "1"
    with mlflow_server.outage():
        second = run_dag(env)
    assert second["state"] == "failed"
    assert second["tasks"]["store_batch"] == "success"
    assert second["tasks"]["train_and_evaluate"] == "failed"
    assert "MLflow" in second["log"]
    assert _alias_version(mlflow_server.tracking_uri, name) == before
