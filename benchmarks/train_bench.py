"""Training benchmark: every candidate on the course's 10 batches (and on batch 1 alone), then
whole pipeline runs (fit all + evaluate + log + register + promote) against a real MLflow server.

The data imitates what the DAG has after N batches: the file (in order) is cut into 10
contiguous tenths and each batch is a seeded random tenth of its part (5,810 rows); a row is
held out when a hash of its values says so (20 %), as the batch store does.

    .venv/bin/python benchmarks/train_bench.py                      # starts its own servers
    .venv/bin/python benchmarks/train_bench.py --tracking-uri http://127.0.0.1:5000
    .venv/bin/python benchmarks/train_bench.py --runs 1,2,3,4,5,6,7,8,9,10 --json out.json

Whole runs include the ONNX export the DAG adds for the champion (app.onnx_model) unless
--no-onnx is given.

Without --tracking-uri it starts MariaDB, the S3 test server and `mlflow server` the way the
tests do (tests/servers.py, tests/mlflow_server.py), in a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from threadpoolctl import threadpool_limits

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from app.covertype import CATEGORICAL_COLUMNS, COLUMNS  # noqa: E402
from app.pipeline.candidates import default_candidates, prepare_for_serving  # noqa: E402
from app.pipeline.evaluate import evaluate, fit  # noqa: E402
from app.settings import MlflowSettings, TrainingSettings  # noqa: E402

DATASET = REPO_ROOT / "data" / "covertype.csv.gz"
BATCHES = 10


def course_batches(seed: int) -> pd.DataFrame:
    frame = pd.read_csv(DATASET, dtype={c: "str" for c in CATEGORICAL_COLUMNS})[list(COLUMNS)]
    n = len(frame)
    parts = []
    for b in range(BATCHES):
        lo, hi = n * b // BATCHES, n * (b + 1) // BATCHES
        part = frame.iloc[lo:hi].sample(n=(hi - lo) // BATCHES, random_state=seed + b).copy()
        part["batch_number"] = b + 1
        parts.append(part)
    rows = pd.concat(parts, ignore_index=True)
    keys = rows[list(COLUMNS)].astype(str).agg(",".join, axis=1)
    rows["holdout"] = keys.map(
        lambda k: int.from_bytes(hashlib.blake2b(k.encode(), digest_size=4).digest()) % 5 == 0
    )
    return rows


def split(rows: pd.DataFrame, upto: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    seen = rows[rows["batch_number"] <= upto]
    cols = [*COLUMNS, "batch_number"]
    return (
        seen[~seen["holdout"]][cols].reset_index(drop=True),
        seen[seen["holdout"]][cols].reset_index(drop=True),
    )


def candidate_table(rows: pd.DataFrame, upto: int, settings: TrainingSettings) -> list[dict]:
    train, holdout = split(rows, upto)
    out = []
    for candidate in default_candidates(
        "hist_gradient_boosting,hist_gradient_boosting_native,extra_trees,random_forest,"
        "logistic_regression",
        seed=settings.seed,
        n_jobs=settings.n_jobs,
    ):
        pipeline = candidate.build()
        with threadpool_limits(limits=settings.n_jobs):
            cpu = time.process_time()
            seconds = fit(pipeline, train)
            cpu = time.process_time() - cpu
            prepare_for_serving(pipeline)
            e = evaluate(candidate.name, pipeline, seconds, train, holdout)
        out.append(
            {
                "batches": upto,
                "candidate": candidate.name,
                "train_rows": len(train),
                "holdout_rows": len(holdout),
                "fit_s": round(seconds, 2),
                "fit_cpu_s": round(cpu, 2),
                "size_mb": round(e.size_mb, 2),
                "accuracy": round(e.scores.accuracy, 4),
                "macro_f1": round(e.scores.macro_f1, 4),
                "predict_row_ms": round(e.predict_row_ms, 2),
            }
        )
        print(json.dumps(out[-1]), flush=True)
    return out


@contextlib.contextmanager
def own_mlflow_server() -> Iterator[str]:
    from tests.mlflow_server import mlflow_server
    from tests.servers import mysql_server, s3_server

    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        base = Path(tmp)
        base.chmod(0o755)
        with (
            mysql_server(base / "mysql", root_password=secrets.token_urlsafe(16)) as mysql,
            s3_server(base / "s3", secrets.token_hex(10), secrets.token_urlsafe(30)) as s3,
        ):
            for name in [k for k in os.environ if k.startswith("AWS_")]:
                del os.environ[name]
            with mlflow_server(base / "mlflow", mysql, s3) as server:
                yield server.tracking_uri


def whole_runs(
    rows: pd.DataFrame, runs: list[int], uri: str, settings: TrainingSettings, onnx: bool
) -> list[dict]:
    from app.pipeline import RunMetadata, run_training

    hook = None
    if onnx:
        # What the DAG logs next to the champion for the inference API.
        from app.onnx_model import log_onnx_artifacts as hook

    mlflow_settings = MlflowSettings(
        tracking_uri=uri,
        experiment_name="forest_cover-bench",
        registered_model_name=f"forest-cover-bench-{int(time.time())}",
        production_alias="production",
    )
    out = []
    for upto in runs:
        train, holdout = split(rows, upto)
        started = time.perf_counter()
        result = run_training(
            train,
            holdout,
            RunMetadata(group_number=1, dag_run_id=f"bench-{upto}"),
            mlflow_settings=mlflow_settings,
            training_settings=settings,
            champion_hook=hook,
        )
        wall = time.perf_counter() - started
        out.append(
            {
                "batches": upto,
                "train_rows": len(train),
                "holdout_rows": len(holdout),
                "champion": result.champion.candidate,
                "accuracy": round(result.champion.scores.accuracy, 4),
                "macro_f1": round(result.champion.scores.macro_f1, 4),
                "size_mb": round(result.champion.size_mb, 2),
                "version": result.model_version,
                "promoted": result.decision.promoted,
                "run_s": round(wall, 1),
                "load_avg_1m": round(os.getloadavg()[0], 1),
                **{f"{k}_s": round(v, 1) for k, v in result.timings.items() if k != "total"},
            }
        )
        print(json.dumps(out[-1]), flush=True)
    return out


def markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7, help="batch sampling seed")
    parser.add_argument("--tables", default="1,10", help="batch counts for the candidate table")
    parser.add_argument("--runs", default="10", help="batch counts for whole runs ('' = none)")
    parser.add_argument("--tracking-uri", help="use this MLflow server instead of starting one")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--no-onnx", action="store_true", help="skip the ONNX export the DAG does per run"
    )
    args = parser.parse_args()
    settings = TrainingSettings()
    rows = course_batches(args.seed)
    tables = [int(x) for x in args.tables.split(",") if x]
    runs = [int(x) for x in args.runs.split(",") if x]

    candidates = [r for upto in tables for r in candidate_table(rows, upto, settings)]
    results: dict[str, list[dict]] = {"candidates": candidates, "runs": []}
    if runs:
        if args.tracking_uri:
            results["runs"] = whole_runs(rows, runs, args.tracking_uri, settings, not args.no_onnx)
        else:
            with own_mlflow_server() as uri:
                results["runs"] = whole_runs(rows, runs, uri, settings, not args.no_onnx)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\nCandidates ({os.cpu_count()} CPUs, {settings.n_jobs} thread(s) per fit, "
        f"load average {load}, seed {settings.seed}):\n"
    )
    print(markdown(candidates))
    if results["runs"]:
        print("\nWhole pipeline runs (default candidates, MLflow + MySQL + S3):\n")
        print(markdown(results["runs"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
