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

import json
import os
import secrets
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


def _dags_test(env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str] | None:
    """`airflow dags test --use-executor`; None when it did not finish within timeout."""
    try:
        return subprocess.run(
            [AIRFLOW, "dags", "test", "--use-executor", DAG_ID],
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
