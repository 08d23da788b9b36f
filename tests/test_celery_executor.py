"""Airflow's CeleryExecutor for real: Debian's redis-server as the broker (generated password),
the test PostgreSQL as the result backend and metadata, a real api-server (the workers reach
the metadata only through its Execution API, with the shared JWT secret) and a real
`airflow celery worker` subprocess.

`airflow dags test --use-executor` queues each task as a workload on the configured executor
(`BaseExecutor.queue_workload`, airflow/sdk/definitions/dag.py), unlike plain `dag.test()`,
which runs tasks in its own process: so the task below runs only if the Celery worker takes
it from Redis. It writes the worker's marker (an environment variable only the worker has)
and its process's parent pid into a file; with the worker stopped, the task stays queued and
never runs.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dag_harness import AIRFLOW, REPO_ROOT, base_env
from tests.servers import PostgresServer, free_port, port_open, redis_server, wait_for

pytestmark = pytest.mark.timeout(420)

DAG_ID = "celery_probe"
PIPELINE_DAG_ID = "forest_cover_mlops_pipeline"
PROBE_DAG = textwrap.dedent(
    """
    import json
    import os
    import time
    from pathlib import Path

    import pendulum
    from airflow.sdk import dag, task


    @dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False)
    def celery_probe():
        @task
        def where_am_i():
            out = Path(os.environ["PROBE_OUT"])
            out.write_text(json.dumps({
                "marker": os.environ.get("CELERY_WORKER_MARKER", ""),
                "pid": os.getpid(),
                "ppid": os.getppid(),
                "at": time.time(),
            }))

        where_am_i()


    celery_probe()
    """
)


def _proc_tree_pss_kib(pid: int) -> int:
    """PSS of a process and its descendants (kB), from /proc/<pid>/smaps_rollup."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return total


@pytest.fixture(scope="module")
def celery_env(postgres: PostgresServer, server_root: Path) -> Iterator[dict[str, str]]:
    base = server_root / "celery"
    base.mkdir(exist_ok=True)
    dags = base / "dags"
    dags.mkdir(exist_ok=True)
    (dags / "celery_probe.py").write_text(PROBE_DAG)
    # The pipeline's own DAG file too (a copy: the worker finds it in the same DAG folder).
    shutil.copy(REPO_ROOT / "dags" / f"{PIPELINE_DAG_ID}.py", dags)
    home = base / "airflow"
    home.mkdir(exist_ok=True)
    dsn = postgres.create_database("airflow_celery")
    api_port = free_port()
    with redis_server(base / "redis", password=secrets.token_urlsafe(24)) as redis:
        env = {
            **base_env(),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": dsn.replace(
                "postgresql://", "postgresql+psycopg2://"
            ),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__CELERY__BROKER_URL": redis.url(0),
            # The result backend in the metadata database, as the role sets it.
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + dsn,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "PYTHONPATH": str(REPO_ROOT),
            "PROBE_OUT": str(base / "probe.json"),
        }
        migrated = subprocess.run(
            [AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True
        )
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        log = base / "api-server.log"
        with log.open("ab") as out:
            api = subprocess.Popen(
                [AIRFLOW, "api-server"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for(lambda: port_open(api_port), "airflow api-server", timeout=180, log=log)
            yield env
        finally:
            os.killpg(api.pid, signal.SIGTERM)
            api.wait(30)


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [AIRFLOW, "celery", "worker", "--skip-serve-logs", "-H", "probe@%h"],
            env={**env, "CELERY_WORKER_MARKER": "celery-worker-1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _dags_test(
    env: dict[str, str], timeout: float, dag_id: str = DAG_ID
) -> subprocess.CompletedProcess[str] | None:
    """`airflow dags test --use-executor`; None when it did not finish within timeout."""
    try:
        return subprocess.run(
            [AIRFLOW, "dags", "test", "--use-executor", dag_id],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None


def test_task_runs_on_the_celery_worker(celery_env: dict[str, str], server_root: Path) -> None:
    out = Path(celery_env["PROBE_OUT"])
    out.unlink(missing_ok=True)
    log = server_root / "celery" / "worker-1.log"
    worker = _start_worker(celery_env, log)
    try:

        def ready() -> bool:
            assert worker.poll() is None, "the worker exited:\n" + log.read_text()[-3000:]
            return "ready" in log.read_text(errors="replace")

        wait_for(ready, "celery worker", 120, log=log)
        time.sleep(1)
        idle_pss = _proc_tree_pss_kib(worker.pid)
        queued_at = time.time()
        run = _dags_test(celery_env, timeout=180)
        assert run is not None, (
            "dags test did not finish with a worker running\n"
            + log.read_text(errors="replace")[-3000:]
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert out.exists(), "the task never ran\n" + run.stdout[-2000:] + run.stderr[-2000:]
        seen = json.loads(out.read_text())
        # Only the worker's processes have the marker; the task ran under the worker's tree.
        assert seen["marker"] == "celery-worker-1"
        assert "where_am_i" in log.read_text(errors="replace") or seen["ppid"] != os.getpid()
        import psycopg2

        dsn = celery_env["AIRFLOW__CELERY__RESULT_BACKEND"].removeprefix("db+")
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute(
                # dags test marks a task scheduled and queues it on the executor at once
                # (it leaves queued_dttm empty): scheduled -> started is the pickup time.
                "SELECT extract(epoch FROM start_date - coalesce(queued_dttm, scheduled_dttm))"
                " FROM task_instance WHERE dag_id = %s ORDER BY start_date DESC LIMIT 1",
                (DAG_ID,),
            )
            (pickup,) = cur.fetchone()
        print(
            f"\nworker idle PSS {idle_pss / 1024:.0f} MiB (concurrency 2); queued -> started"
            f" {float(pickup):.1f} s; dags test start -> task ran {seen['at'] - queued_at:.1f} s"
        )
    finally:
        _stop(worker)


def test_no_worker_no_task(celery_env: dict[str, str]) -> None:
    """The same DAG with no worker: the task is queued in Redis and never runs."""
    out = Path(celery_env["PROBE_OUT"])
    out.unlink(missing_ok=True)
    run = _dags_test(celery_env, timeout=25)
    assert not out.exists(), "the task ran with no Celery worker"
    assert run is None or run.returncode != 0 or "success" not in run.stdout.lower()


def _task_instances(env: dict[str, str], dag_id: str) -> list[dict[str, object]]:
    """The task instances of the DAG's latest run, from the metadata database."""
    import psycopg2

    dsn = env["AIRFLOW__CELERY__RESULT_BACKEND"].removeprefix("db+")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT task_id, map_index, rendered_map_index, state, id::text,"
            " extract(epoch FROM start_date), extract(epoch FROM end_date) FROM task_instance"
            " WHERE dag_id = %s AND run_id = (SELECT run_id FROM dag_run WHERE dag_id = %s"
            " ORDER BY id DESC LIMIT 1) ORDER BY task_id, map_index",
            (dag_id, dag_id),
        )
        keys = ("task_id", "map_index", "name", "state", "id", "start", "end")
        return [dict(zip(keys, row, strict=True)) for row in cur.fetchall()]


@pytest.mark.timeout(900)
def test_the_pipeline_candidates_train_side_by_side_on_the_celery_worker(
    celery_env: dict[str, str],
    server_root: Path,
    pipeline_env: dict[str, str],
    scripted_api,  # noqa: ANN001 - tests.test_data_client.ScriptedServer
) -> None:
    """The real pipeline DAG through the CeleryExecutor: every task, each training task's
    mapped instance included, is a Celery task the worker received, and with concurrency 2
    and TRAINING_TASKS=2 (what ansible derives for one worker: workers x concurrency) the
    worker trains two candidates at the same time, one in each task."""
    from tests.dag_harness import sample_rows
    from tests.test_data_client import Reply

    scripted_api.replies = [
        Reply(body={"group_number": 9, "batch_number": 1, "data": sample_rows(0, 800)})
    ]
    settings = {
        k: v
        for k, v in pipeline_env.items()
        if not k.startswith("AIRFLOW") and k not in ("PYTHONPATH",)
    }
    env = {
        **celery_env,
        **settings,
        "DATA_API_URL": scripted_api.url,
        "DATA_API_GROUP": "9",
        "TRAINING_TASKS": celery_env["AIRFLOW__CELERY__WORKER_CONCURRENCY"],
    }
    log = server_root / "celery" / "worker-pipeline.log"
    worker = _start_worker(env, log)
    try:
        wait_for(lambda: "ready" in log.read_text(errors="replace"), "celery worker", 120, log=log)
        run = _dags_test(env, timeout=720, dag_id=PIPELINE_DAG_ID)
        assert run is not None, "the pipeline run did not finish\n" + log.read_text()[-3000:]
        assert run.returncode == 0, run.stderr[-3000:]
    finally:
        _stop(worker)
    tis = _task_instances(celery_env, PIPELINE_DAG_ID)
    assert {t["state"] for t in tis} == {"success"}, tis
    mapped = [t for t in tis if t["task_id"] == "train_candidate"]
    assert [t["name"] for t in mapped] == [
        "hist_gradient_boosting+random_forest",
        "extra_trees+logistic_regression",
    ]
    # The executor sent each task instance to Celery, and this worker executed it: its log
    # names every instance's id in an "Executing workload" line.
    executed = [
        ln for ln in log.read_text(errors="replace").splitlines() if "Executing workload" in ln
    ]
    for ti in tis:
        assert any(str(ti["id"]) in ln for ln in executed), (ti, executed[:3])
    spans = sorted((float(t["start"]), float(t["end"])) for t in mapped)
    overlapping = any(b[0] < a[1] for a, b in itertools.pairwise(spans))
    assert overlapping, f"the two training tasks did not run at the same time: {spans}"
    whole = max(float(t["end"]) for t in tis) - min(float(t["start"]) for t in tis)
    print(
        f"\npipeline run on the Celery worker (concurrency 2): {whole:.1f} s; training tasks "
        + ", ".join(f"{t['name']} {float(t['end']) - float(t['start']):.1f} s" for t in mapped)
    )
