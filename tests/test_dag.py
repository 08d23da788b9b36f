"""The Airflow DAG forest_cover_mlops_pipeline, parsed and run by real Airflow.

Runs use dag.test() in a subprocess (tests/dag_runner.py) with a real PostgreSQL metadata
database, the real data API process, real PostgreSQL batches_db and the real MLflow server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from app.pipeline.evaluate import MB, Scores
from app.pipeline.selection import choose_champion
from app.settings import TrainingSettings
from tests.conftest import REPO_ROOT
from tests.dag_harness import base_env, run_dag, sample_rows
from tests.mlflow_server import MlflowServer, runs_with_a_logged_model
from tests.test_data_api_process import data_api_process
from tests.test_data_client import CourseServer, Reply, ScriptedServer

DAG_ID = "forest_cover_mlops_pipeline"
AIRFLOW = Path(sys.executable).parent / "airflow"
DOWNSTREAM_OF_GATE = (
    "prepare_training",
    "train_candidate",
    "pick_champion",
    "register_and_promote",
    "reload_inference_api",
)
CANDIDATES = ("hist_gradient_boosting", "extra_trees", "random_forest", "logistic_regression")
# TRAINING_TASKS -> the mapped training tasks' names (their candidates, dealt round-robin).
JOB_NAMES = {
    "1": ["+".join(CANDIDATES)],
    "2": ["hist_gradient_boosting+random_forest", "extra_trees+logistic_regression"],
    "4": list(CANDIDATES),
}


def _count(dsn: str, sql: str) -> int:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return int(cur.fetchone()[0])


def _alias_version(tracking_uri: str, name: str) -> str | None:
    try:
        return MlflowClient(tracking_uri).get_model_version_by_alias(name, "production").version
    except Exception:
        return None


def _mapped_xcoms(env: dict[str, str], task_id: str) -> dict[int, str]:
    """Each map index's return value of the latest run, as stored (JSON text)."""
    dsn = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace(
        "postgresql+psycopg2://", "postgresql://"
    )
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT map_index, value::text FROM xcom WHERE dag_id = %s AND task_id = %s"
            " AND key = 'return_value' AND run_id = (SELECT run_id FROM xcom WHERE dag_id = %s"
            " AND task_id = %s ORDER BY timestamp DESC LIMIT 1)",
            (DAG_ID, task_id, DAG_ID, task_id),
        )
        return {int(i): str(v) for i, v in cur.fetchall()}


@dataclass(frozen=True)
class _Ranked:
    candidate: str
    scores: Scores
    size_bytes: int


def _children(client: MlflowClient, parent: Run) -> dict[str, Run]:
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    names = [c.data.tags["candidate"] for c in children]
    assert len(names) == len(set(names)), f"a candidate has two child runs: {names}"
    return {c.data.tags["candidate"]: c for c in children}


def _champion_by_the_rule(children: dict[str, Run], names: tuple[str, ...]) -> str:
    """The rule applied afresh to what the child runs recorded (PROMOTION_* defaults)."""
    settings = TrainingSettings()
    ranked = [
        _Ranked(
            name,
            Scores(
                children[name].data.metrics["accuracy"],
                children[name].data.metrics["macro_f1"],
                int(children[name].data.metrics["holdout_rows"]),
            ),
            int(children[name].data.metrics["model_size_bytes"]),
        )
        for name in names
    ]
    return choose_champion(
        ranked,
        metric=settings.metric,
        margin=settings.promotion_margin,
        max_bytes=int(settings.max_model_mb * MB),
    ).candidate


def _xcom(env: dict[str, str], task_id: str) -> Any:
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
    return value if isinstance(value, dict | list) else json.loads(value)


# --- integrity ------------------------------------------------------------------------------


def test_dag_imports_and_has_the_pipeline_shape(airflow_home: dict[str, str]) -> None:
    code = f"""
import json, time
t = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.definitions.mappedoperator import MappedOperator
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
    "mapped": sorted(t.task_id for t in dag.tasks if isinstance(t, MappedOperator)),
    "trigger_rules": {{t.task_id: getattr(r, "value", r) for t in dag.tasks
                       for r in [t.trigger_rule]}},
    "parse_seconds": time.perf_counter() - t,
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
    print(f"\nDAG file parsed in {info['parse_seconds']:.2f} s")
    assert info["errors"] == {}
    assert info["tasks"] == sorted(
        [
            "fetch_batch",
            "store_batch",
            "has_new_rows",
            "prepare_training",
            "train_candidate",
            "pick_champion",
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
    assert set(up["prepare_training"]) == {"has_new_rows", "store_batch"}
    assert up["train_candidate"] == ["prepare_training"]
    assert up["pick_champion"] == ["prepare_training", "train_candidate"]
    assert up["register_and_promote"] == ["pick_champion"]
    assert up["reload_inference_api"] == ["register_and_promote"]
    # Each candidate is its own task instance; the picker waits for all of them.
    assert info["mapped"] == ["train_candidate"]
    assert info["trigger_rules"]["pick_champion"] == "all_done_min_one_success"
    assert info["trigger_rules"]["register_and_promote"] == "all_success"
    assert all(seconds > 0 for seconds in info["timeouts"].values())
    for task_id in ("fetch_batch", "prepare_training", "train_candidate", "pick_champion"):
        assert info["retries"][task_id] >= 1, task_id


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


@pytest.mark.parametrize("training_tasks", sorted(JOB_NAMES))
def test_full_run_stores_trains_registers_and_promotes(
    pipeline_env: dict[str, str], mlflow_server: MlflowServer, s3, tmp_path: Path, training_tasks
) -> None:
    with data_api_process(tmp_path, "data-api", DATA_API_SEED="7") as api:
        env = {
            **pipeline_env,
            "DATA_API_URL": api.base_url,
            "DATA_API_GROUP": "3",
            "TRAINING_TASKS": training_tasks,
        }
        outcome = run_dag(env)
    assert outcome["state"] == "success", outcome["log"][-6000:]
    tasks = outcome["tasks"]
    for task_id in ("prepare_training", "train_candidate", "pick_champion"):
        assert tasks[task_id] == "success", (task_id, tasks)
    assert tasks["register_and_promote"] == "success"
    # One task instance per job, named after its candidates, each done on its first try.
    mapped = outcome["mapped"]["train_candidate"]
    names = JOB_NAMES[training_tasks]
    assert [m["map_index"] for m in mapped] == list(range(len(names)))
    assert [m["name"] for m in mapped] == names
    assert {(m["state"], m["try_number"]) for m in mapped} == {("success", 1)}
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
    # One FINISHED child run per candidate under the one parent run; the champion is the
    # one the rule picks from what the children recorded.
    assert parent.data.tags.get("pipeline_role") == "parent"
    assert parent.info.status == "FINISHED"
    children = _children(client, parent)
    assert sorted(children) == sorted(CANDIDATES)
    for child in children.values():
        assert child.info.status == "FINISHED"
        assert child.data.tags["attempts"] == "1"
        assert child.data.tags["data_fingerprint"] == parent.data.tags["data_fingerprint"]
        assert (
            child.data.metrics["holdout_rows"]
            == children[CANDIDATES[0]].data.metrics["holdout_rows"]
        ), "every candidate is scored on the same held-out rows"
    best = _champion_by_the_rule(children, CANDIDATES)
    assert parent.data.tags["champion"] == best == mv.tags["candidate"]
    assert mv.run_id == children[best].info.run_id
    assert "failed_candidates" not in parent.data.tags
    # One task: it chose the champion and logged only that model. Several: every model,
    # since only the picker sees every candidate.
    logged = runs_with_a_logged_model(mlflow_server.tracking_uri, parent.info.experiment_id)
    if training_tasks == "1":
        assert logged == [children[best].info.run_id]
    else:
        assert logged == sorted(c.info.run_id for c in children.values())
    # XComs are ids, names and metrics: no rows, no models. Each task returns a list, one
    # result per candidate of its job.
    results = _mapped_xcoms(env, "train_candidate")
    assert sorted(results) == list(range(len(names)))
    for index, value in results.items():
        assert len(value) < 4000 * len(CANDIDATES), value[:300]
        returned = json.loads(value)
        assert "+".join(r["candidate"] for r in returned) == names[index]
        assert {r["run_id"] for r in returned} <= {c.info.run_id for c in children.values()}
    assert len(json.dumps(_xcom(env, "prepare_training"))) < 8000
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
    assert second["tasks"]["prepare_training"] == "failed"
    assert "MLflow" in second["log"]
    assert _alias_version(mlflow_server.tracking_uri, name) == before


# --- a candidate that fails ------------------------------------------------------------------
# Injected through configuration only: a parameter value sklearn refuses when the model is
# fitted (names are checked when the run is prepared, values only by the estimator), so the
# failure happens inside the candidate's own task, on every try.


def _with_bad_params(env: dict[str, str], bad: dict[str, dict[str, object]]) -> dict[str, str]:
    from tests.conftest import SMALL_CANDIDATE_PARAMS

    params = {k: {**v, **bad.get(k, {})} for k, v in SMALL_CANDIDATE_PARAMS.items()}
    return {**env, "TRAINING_PARAM_OVERRIDES": json.dumps(params)}


def _run_with_logistic_regression_failing(
    pipeline_env: dict[str, str], scripted_api: ScriptedServer, group: int, training_tasks: int
) -> tuple[dict[str, str], dict[str, Any]]:
    """One DAG run on a fresh group's 600 rows, logistic_regression failing in every try."""
    scripted_api.replies = [
        Reply(body={"group_number": group, "batch_number": 1, "data": sample_rows(0, 600)})
    ]
    env = _with_bad_params(
        {
            **pipeline_env,
            "DATA_API_URL": scripted_api.url,
            "DATA_API_GROUP": str(group),
            "TRAINING_TASKS": str(training_tasks),
        },
        {"logistic_regression": {"max_iter": -1}},
    )
    return env, run_dag(env)


def test_a_candidate_that_fails_for_good_is_left_out_and_the_others_compete(
    pipeline_env: dict[str, str], mlflow_server: MlflowServer, scripted_api: ScriptedServer
) -> None:
    env, outcome = _run_with_logistic_regression_failing(pipeline_env, scripted_api, 5, 4)
    mapped = {m["name"]: m for m in outcome["mapped"]["train_candidate"]}
    assert mapped["logistic_regression"]["state"] == "failed", outcome["log"][-6000:]
    assert mapped["logistic_regression"]["try_number"] == 2, "retried once, then failed"
    others = [n for n in CANDIDATES if n != "logistic_regression"]
    assert {mapped[n]["state"] for n in others} == {"success"}
    # The picker ran on the three that trained; registration and promotion as always. The
    # run itself succeeds (its last tasks did); the failed task instance stays failed.
    tasks = outcome["tasks"]
    assert tasks["pick_champion"] == "success"
    assert tasks["register_and_promote"] == "success"
    assert outcome["state"] == "success"

    client = MlflowClient(mlflow_server.tracking_uri)
    name = env["MLFLOW_REGISTERED_MODEL"]
    assert _alias_version(mlflow_server.tracking_uri, name) == "1"
    mv = client.get_model_version(name, "1")
    assert mv.tags["failed_candidates"] == "logistic_regression"
    parent = client.get_run(mv.tags["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["failed_candidates"] == "logistic_regression"
    children = _children(client, parent)
    # Both tries of the failed candidate used one child run, marked FAILED with the reason.
    failed = children["logistic_regression"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["attempts"] == "2"
    assert "max_iter" in failed.data.tags["failure"]
    assert {children[n].info.status for n in others} == {"FINISHED"}
    assert parent.data.tags["champion"] == _champion_by_the_rule(children, tuple(others))
    assert mv.tags["candidate"] == parent.data.tags["champion"]


def test_a_candidate_failing_inside_a_task_retries_it_and_then_leaves_it_out(
    pipeline_env: dict[str, str], mlflow_server: MlflowServer, scripted_api: ScriptedServer
) -> None:
    # TRAINING_TASKS=2: logistic_regression shares its task with extra_trees. The first try
    # trains both and fails (a retry is left); the retry, the last try, trains only
    # logistic_regression again (extra_trees' finished child run is reused), fails it again
    # and returns extra_trees' result, so the task succeeds and the picker names the failure.
    env, outcome = _run_with_logistic_regression_failing(pipeline_env, scripted_api, 6, 2)
    assert outcome["state"] == "success", outcome["log"][-6000:]
    mapped = outcome["mapped"]["train_candidate"]
    assert [(m["name"], m["state"], m["try_number"]) for m in mapped] == [
        ("hist_gradient_boosting+random_forest", "success", 1),
        ("extra_trees+logistic_regression", "success", 2),
    ]
    assert outcome["tasks"]["register_and_promote"] == "success"

    client = MlflowClient(mlflow_server.tracking_uri)
    name = env["MLFLOW_REGISTERED_MODEL"]
    mv = client.get_model_version(name, "1")
    assert mv.tags["failed_candidates"] == "logistic_regression"
    parent = client.get_run(mv.tags["parent_run_id"])
    assert parent.data.tags["failed_candidates"] == "logistic_regression"
    children = _children(client, parent)
    assert children["logistic_regression"].info.status == "FAILED"
    assert children["logistic_regression"].data.tags["attempts"] == "2"
    others = [n for n in CANDIDATES if n != "logistic_regression"]
    assert {children[n].info.status for n in others} == {"FINISHED"}
    # Trained once each: extra_trees was reused by the retry, not trained again.
    assert {children[n].data.tags["attempts"] for n in others} == {"1"}
    assert parent.data.tags["champion"] == _champion_by_the_rule(children, tuple(others))
    assert mv.tags["candidate"] == parent.data.tags["champion"]


def test_every_candidate_failing_fails_the_run_and_registers_nothing(
    pipeline_env: dict[str, str], mlflow_server: MlflowServer, scripted_api: ScriptedServer
) -> None:
    scripted_api.replies = [
        Reply(body={"group_number": 8, "batch_number": 1, "data": sample_rows(0, 400)}),
        Reply(body={"group_number": 8, "batch_number": 2, "data": sample_rows(400, 800)}),
    ]
    env = {
        **pipeline_env,
        "DATA_API_URL": scripted_api.url,
        "DATA_API_GROUP": "8",
        "TRAINING_CANDIDATES": "random_forest,logistic_regression",
    }
    first = run_dag(env)
    assert first["state"] == "success", first["log"][-6000:]
    name = env["MLFLOW_REGISTERED_MODEL"]
    assert _alias_version(mlflow_server.tracking_uri, name) == "1"

    broken = _with_bad_params(
        env, {"random_forest": {"n_estimators": 0}, "logistic_regression": {"max_iter": -1}}
    )
    second = run_dag(broken)
    assert second["state"] == "failed"
    # One task (TRAINING_TASKS=1) with both candidates: both fail on its last try, so it fails.
    assert [
        (m["name"], m["state"], m["try_number"]) for m in second["mapped"]["train_candidate"]
    ] == [("random_forest+logistic_regression", "failed", 2)]
    tasks = second["tasks"]
    # The picker runs (prepare_training succeeded), closes the parent run as FAILED and fails
    # without a retry: a second look would find the same. Nothing after it runs.
    assert tasks["pick_champion"] == "failed"
    assert second["tries"]["pick_champion"] == 1
    assert tasks["register_and_promote"] == "upstream_failed"
    assert tasks["reload_inference_api"] == "upstream_failed"
    assert "every candidate failed" in second["log"]

    client = MlflowClient(mlflow_server.tracking_uri)
    assert [v.version for v in client.search_model_versions(f"name = '{name}'")] == ["1"]
    assert _alias_version(mlflow_server.tracking_uri, name) == "1"
    experiment = client.get_experiment_by_name(env["MLFLOW_EXPERIMENT_NAME"])
    parents = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.pipeline_role = 'parent'",
        order_by=["attributes.start_time DESC"],
    )
    assert len(parents) == 2
    latest = parents[0]
    assert latest.info.status == "FAILED"
    assert latest.data.tags["failed_candidates"] == "random_forest,logistic_regression"
    assert {c.info.status for c in _children(client, latest).values()} == {"FAILED"}
