"""DAG benchmark: one run of the pipeline DAG as the scheduler runs it, per TRAINING_TASKS.

`airflow dags test --use-executor` with the LocalExecutor (parallelism 4, the role's
default) and an `airflow api-server` for the tasks' Execution API: every task is its own
process, so each pays Airflow's task start, which plain `dag.test()` (the DAG tests) does
not. The backends are the benchmarks' own (pipeline_bench: PostgreSQL, `mlflow server` on
MariaDB and S3, the data API on covertype.csv.gz); each configuration trains the first batch
of a group of its own (5,810 rows) with the default recipes (TRAINING_N_JOBS=1) into a fresh
batches_db, experiment and metadata database. --repo runs another checkout's DAG and app the
same way (e.g. main's, read-only), so the numbers compare on one machine at one time.

    .venv/bin/python benchmarks/dag_bench.py [--tasks 1 4] [--repo /path/to/checkout]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_bench import REPO_ROOT, backends  # noqa: E402

from tests.dag_harness import AIRFLOW, airflow_env, base_env  # noqa: E402
from tests.mlflow_server import MlflowServer  # noqa: E402
from tests.servers import PostgresServer, free_port, port_open, wait_for  # noqa: E402

DAG_ID = "forest_cover_mlops_pipeline"


def task_times(dsn: str) -> dict[str, object]:
    """The latest run's span and each task instance's seconds, from the metadata database."""
    import psycopg2

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT task_id, map_index, rendered_map_index, state,"
            " extract(epoch FROM start_date), extract(epoch FROM end_date) FROM task_instance"
            " WHERE dag_id = %s AND run_id = (SELECT run_id FROM dag_run WHERE dag_id = %s"
            " ORDER BY id DESC LIMIT 1) ORDER BY start_date",
            (DAG_ID, DAG_ID),
        )
        rows = cur.fetchall()
    ran = [r for r in rows if r[4] is not None and r[5] is not None]
    return {
        "states": sorted({str(r[3]) for r in rows}),
        "run_s": max(float(r[5]) for r in ran) - min(float(r[4]) for r in ran) if ran else None,
        "tasks": {(r[2] if r[1] >= 0 else r[0]): round(float(r[5]) - float(r[4]), 1) for r in ran},
    }


@contextlib.contextmanager
def process_group(args: list[str], env: dict[str, str], log: Path):  # noqa: ANN201
    """A process in a session of its own, its whole group stopped on the way out (the
    LocalExecutor's workers outlive `airflow dags test`)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def run_once(
    repo: Path, tasks: int, group: int, pg: PostgresServer, mlflow: MlflowServer, api_url: str
) -> dict[str, object]:
    label = f"{repo.name}-{tasks}".replace("-", "_")
    meta = pg.create_database(f"airflow_{label}_{group}")
    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"dag-bench-{label}-{group}-{os.getpid()}"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **base_env(),
        **airflow_env(home, meta, repo),
        "AIRFLOW__CORE__PARALLELISM": "4",
        "BATCHES_DB_DSN": pg.create_database(f"batches_{label}_{group}"),
        "MLFLOW_TRACKING_URI": mlflow.tracking_uri,
        "MLFLOW_EXPERIMENT_NAME": f"dag-bench-{label}-{group}",
        "MLFLOW_REGISTERED_MODEL": f"dag-bench-{label}-{group}",
        "DATA_API_URL": api_url,
        "DATA_API_GROUP": str(group),
        "TRAINING_N_JOBS": "1",
        "TRAINING_TASKS": str(tasks),
        "LOKY_MAX_CPU_COUNT": str(os.cpu_count() or 1),
    }
    api_port = free_port()
    env |= {
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
    }
    migrated = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    log = home / "dags-test.log"
    with process_group([str(AIRFLOW), "api-server"], env, home / "api-server.log"):
        wait_for(lambda: port_open(api_port), "airflow api-server", timeout=180)
        started = time.perf_counter()
        with process_group(
            [str(AIRFLOW), "dags", "test", "--use-executor", DAG_ID], env, log
        ) as dags_test:
            returncode = dags_test.wait(1200)
        wall = time.perf_counter() - started
    assert returncode == 0, f"failed: see {log} and {home / 'logs'}"
    times = task_times(meta)
    assert times["states"] == ["success"], (times, f"see {log}")
    return {"repo": str(repo), "training_tasks": tasks, "dags_test_s": round(wall, 1), **times}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 4], help="TRAINING_TASKS")
    parser.add_argument("--repo", type=Path, action="append", default=[], help="checkout to run")
    args = parser.parse_args()
    repos = [p.resolve() for p in args.repo] or [REPO_ROOT]
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores; load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    group = 0
    with backends(interval=3600, prefix="dag-bench-") as (_, pg, mlflow, api_url):
        for repo in repos:
            # A checkout without the setting (main: one training task) is run once.
            has_setting = "TRAINING_TASKS" in (repo / "app" / "settings.py").read_text()
            for tasks in args.tasks if has_setting else args.tasks[:1]:
                group += 1
                print(json.dumps(run_once(repo, tasks, group, pg, mlflow, api_url)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
