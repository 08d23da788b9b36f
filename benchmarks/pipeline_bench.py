"""Pipeline benchmark: the DAG's steps over all 10 batches of the full dataset.

Starts real servers the way the tests do (PostgreSQL, MariaDB, the S3 test server, `mlflow
server`, and `python -m app.data_api` on covertype.csv.gz with a short batch interval), then
runs app.pipeline.steps for each batch exactly as the DAG's tasks call them, timing every step:

    fetch -> store -> train_and_evaluate -> register_and_promote

(train_and_evaluate is the DAG's prepare_training, train_candidate for each job and
pick_champion, one after the other in this process: the mapped tasks' code, unparallelised.)

and records per batch: rows fetched / stored, training and held-out rows, the champion's
held-out accuracy and macro-F1, whether it was promoted, and the time of each step. The
result is written to docs/benchmarks.md ("Pipeline" section) and printed.

    .venv/bin/python benchmarks/pipeline_bench.py [--interval 1] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from report import write_results  # noqa: E402

from app.pipeline.steps import (  # noqa: E402
    PipelineConfig,
    fetch_batch,
    register_and_promote,
    store_batch,
    train_and_evaluate,
)
from tests.mlflow_server import MlflowServer, mlflow_server  # noqa: E402
from tests.servers import (  # noqa: E402
    PostgresServer,
    free_port,
    mysql_server,
    postgres_server,
    s3_server,
    wait_for,
)

SECTION = "## Pipeline"


@contextlib.contextmanager
def data_api(base: Path, interval: float):
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DATA_API_")},
        "DATA_API_DATASET": str(REPO_ROOT / "data" / "covertype.csv.gz"),
        "DATA_API_STATE_FILE": str(base / "data-api-state.json"),
        "DATA_API_INTERVAL_SECONDS": str(interval),
        "DATA_API_PORT": str(port),
        "DATA_API_SEED": "1",
        "DATA_API_ACCESS_LOG": "false",
    }
    log = (base / "data-api.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.data_api"], cwd=REPO_ROOT, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import requests

        wait_for(lambda: requests.get(url + "/health", timeout=1).ok, "data API", timeout=60)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def backends(
    interval: float, prefix: str
) -> Iterator[tuple[Path, PostgresServer, MlflowServer, str]]:
    """What the pipeline talks to, started as the tests start it, in a temporary directory:
    (that directory, PostgreSQL, `mlflow server` on MariaDB and S3, the data API's URL)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        base = Path(tmp)
        base.chmod(0o755)
        with (
            postgres_server(base / "pg") as pg,
            mysql_server(base / "mysql", secrets.token_urlsafe(12)) as my,
            s3_server(base / "s3", secrets.token_hex(8), secrets.token_urlsafe(24)) as s3,
            mlflow_server(base / "mlflow", my, s3) as mlflow,
            data_api(base, interval) as api_url,
        ):
            for name in [n for n in os.environ if n.startswith("AWS_")]:
                del os.environ[name]  # the pipeline reaches S3 only through MLflow's proxy
            yield base, pg, mlflow, api_url


def run(interval: float) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
    with backends(interval, "pipeline-bench-") as (_, pg, mlflow, api_url):
        config = PipelineConfig(
            batches_dsn=pg.create_database("batches_db"),
            data_api_url=api_url,
            group_number=1,
            mlflow_tracking_uri=mlflow.tracking_uri,
            inference_api_url=None,
        )
        os.environ["MLFLOW_TRACKING_URI"] = mlflow.tracking_uri
        started = time.monotonic()
        for batch in range(1, 11):
            # Wait for the data API's clock to reach this batch (group starts at 1st fetch).
            if batch > 1:
                due = started + (batch - 1) * interval
                time.sleep(max(0.0, due - time.monotonic()) + 0.05)
            row: dict[str, object] = {"batch": batch}
            t = time.perf_counter()
            fetched = fetch_batch(config)
            row["fetch_s"] = time.perf_counter() - t
            if batch == 1:
                started = time.monotonic()
            assert fetched["status"] == "new", fetched
            assert fetched["batch_number"] == batch, (fetched["batch_number"], batch)
            t = time.perf_counter()
            report = store_batch(config, fetched)
            row["store_s"] = time.perf_counter() - t
            row["rows"] = report["received"]
            row["new"] = report["new"]
            t = time.perf_counter()
            trained = train_and_evaluate(config, report, dag_run_id=f"bench-{batch}")
            row["train_s"] = time.perf_counter() - t
            t = time.perf_counter()
            decision = register_and_promote(config, trained)
            row["promote_s"] = time.perf_counter() - t
            row["total_s"] = sum(
                float(row[k]) for k in ("fetch_s", "store_s", "train_s", "promote_s")
            )
            row["train_rows"] = trained.get("train_rows")
            row["holdout_rows"] = trained.get("holdout_rows")
            row["champion"] = trained.get("champion")
            row["accuracy"] = trained.get("accuracy")
            row["macro_f1"] = trained.get("macro_f1")
            row["size_mb"] = int(trained["size_bytes"]) / 1e6
            row["promoted"] = decision.get("promoted")
            row["version"] = decision.get("version")
            results.append(row)
            print(json.dumps(row, default=str), flush=True)
    return results


def table(results: list[dict[str, object]]) -> str:
    def f(value: object, fmt: str) -> str:
        return format(value, fmt) if isinstance(value, int | float) else str(value)

    lines = [
        "| batch | rows | train / held-out rows | champion | size MB | accuracy | macro-F1 "
        "| promoted (version) | fetch s | store s | train s | register+promote s | total s |",
        "|" + " ---: |" * 3 + " --- |" + " ---: |" * 3 + " --- |" + " ---: |" * 5,
    ]
    for r in results:
        lines.append(
            f"| {r['batch']} | {r['rows']:,} | {f(r['train_rows'], ',')} / "
            f"{f(r['holdout_rows'], ',')} | {r['champion']} | {f(r['size_mb'], '.1f')} | "
            f"{f(r['accuracy'], '.4f')} | {f(r['macro_f1'], '.4f')} | "
            f"{'yes' if r['promoted'] else 'no'} ({r['version']}) | {f(r['fetch_s'], '.2f')} | "
            f"{f(r['store_s'], '.2f')} | {f(r['train_s'], '.1f')} | {f(r['promote_s'], '.1f')} | "
            f"{f(r['total_s'], '.1f')} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=45.0, help="data API batch interval")
    parser.add_argument("--no-write", action="store_true", help="do not update docs")
    args = parser.parse_args()
    load = os.getloadavg()
    results = run(args.interval)
    body = "\n".join(
        [
            f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"- Machine: {os.cpu_count()} cores; Python {platform.python_version()}; load average "
            f"at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
            "- Command: `.venv/bin/python benchmarks/pipeline_bench.py`: the DAG's own step "
            "functions (app/pipeline/steps.py) against real PostgreSQL, MariaDB + S3 behind "
            "`mlflow server`, and the data API serving covertype.csv.gz (5,810 rows a batch). "
            "Default candidates and settings (TRAINING_N_JOBS=1); the champion's ONNX form is "
            "exported and verified inside the train step.",
            "",
            table(results),
        ]
    )
    print(body)
    if not args.no_write:
        write_results(SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
