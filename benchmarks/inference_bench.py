"""Benchmark of the inference API against MLflow's own scoring server, serving the same
registered model, with the in-process floor.

Run: `.venv/bin/python benchmarks/inference_bench.py` (about 6 minutes). It
1. starts a throwaway `mlflow server` (SQLite, artifacts proxied to a local folder);
2. trains the champion the issue measures MLflow with, a RandomForest(200) on 58,101 rows of the
   full dataset (a tenth of it, as the data API serves), with n_jobs=1 for predictions;
3. logs it as the pipeline does (sklearn model with signature, cloudpickle) plus its ONNX form
   (app.onnx_model.log_onnx_artifacts), registers it and points alias `production` at it;
4. serves that version with our API (`python -m app.inference`, which loads the ONNX form after
   checking it) and with `mlflow models serve -m models:/forest-cover/<v> --env-manager local`,
   checks both give the registered model's labels, then loads each with wrk: single rows with 1
   and 16 connections, and 1,000-row batches;
5. times the model's own predict in this process (sklearn and ONNX): the floor;
6. prints a markdown table and writes it into the "Inference API" section of
   docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from litestar import Litestar, Response
from litestar import get as get_route
from litestar import post as post_route

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from report import DOC, write_results  # noqa: E402

from app.covertype import FEATURE_COLUMNS, TARGET_COLUMN  # noqa: E402

DATASET = REPO_ROOT / "data" / "covertype.csv.gz"
SECTION = "## Inference API"
COMMAND = ".venv/bin/python benchmarks/inference_bench.py"
MODEL_NAME = "forest-cover"
OURS, THEIRS, BARE = "inference API (ours)", "mlflow models serve", "bare Litestar endpoint"
ROLE_DEFAULTS = REPO_ROOT / "ansible" / "roles" / "inference_api" / "defaults" / "main.yml"


def deployed_workers() -> int:
    """The worker processes the platform runs the API with (the role's default)."""
    import yaml

    return int(yaml.safe_load(ROLE_DEFAULTS.read_text())["inference_api_workers"])


WORKERS = deployed_workers()
# The bare endpoint as the issue defines it (one worker), and with as many processes as ours.
BARE_SAME = f"bare Litestar endpoint, {WORKERS} workers"
VENV_BIN = Path(sys.executable).parent


@dataclass
class WrkResult:
    server: str
    load: str
    connections: int
    p50_ms: float
    p99_ms: float
    requests_per_s: float
    requests: int
    errors: str
    rows_per_request: int = 1


@dataclass
class Floor:
    key: str
    name: str
    p50_ms: float
    p99_ms: float


@dataclass
class Served:
    name: str
    url: str
    predict_path: str
    proc: subprocess.Popen[bytes]
    startup_s: float
    body: Callable[[list[dict[str, object]]], bytes]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants (MLflow's CLI runs uvicorn as a
    child), from /proc."""
    total = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{current}/status").read_text()
            total += int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            todo.extend(int(c) for c in children)
    return total / 1024


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> float:
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: process exited {proc.returncode}\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return time.perf_counter() - started
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready within {timeout:.0f}s\n{log.read_text()[-3000:]}")


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        # Own session, so stop() ends the CLI and the server processes it starts.
        return subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    return env


# --- model -----------------------------------------------------------------------------------


def champion(candidate: str):  # noqa: ANN201 - (sklearn Pipeline, frames, fit seconds)
    """The pipeline's own recipe (app.pipeline.candidates) fitted as the DAG fits it after the
    course's 10 batches (benchmarks/train_bench.py builds them): one thread, then prepared for
    serving. Returns the pipeline, training features and labels, and held-out features."""
    from threadpoolctl import threadpool_limits
    from train_bench import course_batches
    from train_bench import split as course_split

    from app.pipeline.candidates import default_candidates, prepare_for_serving

    train, holdout = course_split(course_batches(7), 10)
    (recipe,) = default_candidates([candidate], seed=42, n_jobs=1)
    pipeline = recipe.build()
    x, y = train[list(FEATURE_COLUMNS)], train[TARGET_COLUMN]
    started = time.perf_counter()
    with threadpool_limits(limits=1):
        pipeline.fit(x, y)
    fit_s = time.perf_counter() - started
    prepare_for_serving(pipeline)
    return pipeline, x, y, holdout[list(FEATURE_COLUMNS)], fit_s


def register(tracking_uri: str, pipeline, train: pd.DataFrame, holdout: pd.DataFrame) -> dict:  # noqa: ANN001
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    from app.onnx_model import log_onnx_artifacts

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("inference-benchmark")
    example = train.head(5)
    timings: dict[str, float] = {}
    with mlflow.start_run() as run:
        mlflow.set_tags({"batch_count": "10", "train_rows": str(len(train))})
        step = time.perf_counter()
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=infer_signature(example, pipeline.predict(example)),
            input_example=example,
            serialization_format="cloudpickle",
            pip_requirements=["scikit-learn", "pandas", "cloudpickle"],
        )
        timings["log_model_s"] = time.perf_counter() - step
        step = time.perf_counter()
        onnx = log_onnx_artifacts(pipeline, holdout)
        timings["onnx_s"] = time.perf_counter() - step
    if onnx.status != "ok":
        raise SystemExit(f"the ONNX form was not logged: {onnx}")
    client.create_registered_model(MODEL_NAME)
    version = client.create_model_version(
        MODEL_NAME, info.model_uri, run_id=run.info.run_id, model_id=info.model_id
    )
    client.set_registered_model_alias(MODEL_NAME, "production", version.version)
    return {
        "version": str(version.version),
        "onnx_mb": (onnx.size_bytes or 0) / 2**20,
        "onnx_max_diff": onnx.comparison.max_abs_proba_diff if onnx.comparison else float("nan"),
        **timings,
    }


def pickle_mb(pipeline) -> float:  # noqa: ANN001
    import pickle

    return len(pickle.dumps(pipeline, protocol=pickle.HIGHEST_PROTOCOL)) / 2**20


# --- servers ---------------------------------------------------------------------------------

# What the bare endpoint answers: the shape of one of our single-row answers.
BARE_ANSWER = {
    "model_name": MODEL_NAME,
    "model_version": "1",
    "model_alias": "production",
    "backend": "onnx",
    "predictions": [
        {
            "cover_type": 2,
            "cover_type_name": "Lodgepole Pine",
            "probabilities": {
                "Spruce/Fir": 0.1, "Lodgepole Pine": 0.8, "Ponderosa Pine": 0.02,
                "Cottonwood/Willow": 0.02, "Aspen": 0.02, "Douglas-fir": 0.02, "Krummholz": 0.02,
            },
        }
    ],
}  # fmt: skip


def bare_app() -> Litestar:
    """The HTTP ceiling: Litestar taking the same JSON body (decoded by Litestar) and returning
    a fixed answer, no validation and no model. Served the way ours is (one uvicorn worker)."""
    answer = json.dumps(BARE_ANSWER).encode()

    @post_route("/predict", status_code=200)
    async def predict(data: Any) -> Response[bytes]:  # noqa: ARG001 - decoded, then ignored
        return Response(answer, media_type="application/json")

    @get_route("/health", sync_to_thread=False)
    def health() -> dict[str, str]:
        return {"status": "alive"}

    return Litestar(route_handlers=[predict, health])


def serve_bare_here(port: int, workers: int) -> None:
    import uvicorn

    # The same uvicorn settings as app.inference.__main__.
    uvicorn.run(
        "inference_bench:bare_app" if workers > 1 else bare_app(),
        factory=workers > 1,
        host="127.0.0.1",
        port=port,
        access_log=False,
        workers=workers,
        log_config=None,
    )


@contextlib.contextmanager
def mlflow_server(workdir: Path) -> Iterator[str]:
    port = free_port()
    log = workdir / "mlflow-server.log"
    env = base_env() | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = start(
        [
            str(VENV_BIN / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
            "--serve-artifacts", "--artifacts-destination", (workdir / "artifacts").as_uri(),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        env,
        log,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log, timeout=240)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def records_body(rows: list[dict[str, object]]) -> bytes:
    return json.dumps(rows if len(rows) > 1 else rows[0]).encode()


def mlflow_body(rows: list[dict[str, object]]) -> bytes:
    return json.dumps({"dataframe_records": rows}).encode()


def serve_ours(tracking_uri: str, workdir: Path) -> Served:
    port = free_port()
    log = workdir / "inference-api.log"
    env = base_env() | {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_REGISTERED_MODEL": MODEL_NAME,
        "INFERENCE_API_HOST": "127.0.0.1",
        "INFERENCE_API_PORT": str(port),
        "INFERENCE_WORKERS": str(WORKERS),
    }
    started = time.perf_counter()
    proc = start([sys.executable, "-m", "app.inference"], env, log)
    wait_http(f"http://127.0.0.1:{port}/ready", proc, log, timeout=600)
    url = f"http://127.0.0.1:{port}"
    return Served(
        "inference API (ours)", url, "/predict", proc, time.perf_counter() - started, records_body
    )


def serve_mlflow(tracking_uri: str, version: str, workdir: Path) -> Served:
    port = free_port()
    log = workdir / "mlflow-models-serve.log"
    # The pickled pipeline's first step (app.pipeline.features.TerrainFeatures) must import.
    env = base_env() | {"MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(REPO_ROOT)}
    started = time.perf_counter()
    proc = start(
        [
            str(VENV_BIN / "mlflow"), "models", "serve",
            "-m", f"models:/{MODEL_NAME}/{version}", "--env-manager", "local",
            "-h", "127.0.0.1", "-p", str(port),
        ],
        env,
        log,
    )  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/ping", proc, log, timeout=600)
    url = f"http://127.0.0.1:{port}"
    return Served(
        "mlflow models serve", url, "/invocations", proc, time.perf_counter() - started, mlflow_body
    )


def serve_bare(workdir: Path, workers: int = 1) -> Served:
    port = free_port()
    log = workdir / f"bare-litestar-{workers}.log"
    started = time.perf_counter()
    # The bench's folder on the path: uvicorn's worker processes import bare_app from it.
    env = base_env() | {"PYTHONPATH": str(Path(__file__).resolve().parent)}
    command = [sys.executable, __file__, "--serve-bare", str(port), "--bare-workers", str(workers)]
    proc = start(command, env, log)
    wait_http(f"http://127.0.0.1:{port}/health", proc, log, timeout=120)
    return Served(
        BARE if workers == 1 else BARE_SAME, f"http://127.0.0.1:{port}", "/predict", proc,
        time.perf_counter() - started, records_body,
    )  # fmt: skip


def post(url: str, body: bytes) -> dict:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def check_answers(served: list[Served], rows: list[dict[str, object]], expected: list[int]) -> None:
    """Both servers must give the registered model's labels before their speed means anything."""
    for s in served:
        answer = post(s.url + s.predict_path, s.body(rows))
        labels = (
            [p["cover_type"] for p in answer["predictions"]]
            if "model_version" in answer
            else [int(v) for v in answer["predictions"]]
        )
        if labels != expected:
            wrong = sum(a != b for a, b in zip(labels, expected, strict=True))
            raise SystemExit(f"{s.name} disagrees with the model on {wrong} of {len(rows)} rows")


# --- load ------------------------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*a")
f:close()
"""


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(
    served: Served, body: bytes, rows: int, connections: int, seconds: int, workdir: Path, load: str
) -> WrkResult:
    body_file = workdir / f"body-{served.proc.pid}-{rows}.json"
    body_file.write_bytes(body)
    script = workdir / f"post-{served.proc.pid}-{rows}.lua"
    script.write_text(LUA.replace("{body}", str(body_file)))
    threads = min(connections, os.cpu_count() or 1)
    out = subprocess.run(
        [
            "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
            "--timeout", "60s", "-s", str(script), served.url + served.predict_path,
        ],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    try:
        p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
        p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
        rps = float(re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M).group(1))  # type: ignore[union-attr]
        total = int(re.search(r"^\s*(\d+) requests in", out, re.M).group(1))  # type: ignore[union-attr]
    except AttributeError as exc:
        raise SystemExit(f"could not parse wrk output:\n{out}") from exc
    errors = []
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors.append(f"{m.group(1)} non-2xx")
    if m := re.search(r"Socket errors: (.*)", out):
        errors.append(m.group(1).strip())
    return WrkResult(
        served.name, load, connections, p50, p99, rps, total, "; ".join(errors) or "none", rows
    )


def floor(key: str, name: str, fn: Callable[[], object], seconds: float) -> Floor:
    fn()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 20:
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return Floor(key, name, statistics.median(times), p99)


def floors(pipeline, onnx_bytes: bytes, holdout: pd.DataFrame, seconds: float) -> list[Floor]:  # noqa: ANN001
    from app.onnx_model import OnnxPredictor

    predictor = OnnxPredictor(onnx_bytes)
    one = holdout.iloc[:1]
    batch = holdout.iloc[:1000]
    # A different row each call, as requests come: one row repeated keeps its path through
    # the 700 trees in cache and measured about half the cost (55 against 100-180 us).
    singles = [
        {c: [v] for c, v in zip(FEATURE_COLUMNS, row, strict=True)}
        for row in batch.itertuples(index=False)
    ]
    next_single = itertools.cycle(singles).__next__
    batch_columns = {c: batch[c].tolist() for c in FEATURE_COLUMNS}
    calls: list[tuple[str, str, Callable[[], object]]] = [
        ("sklearn-1", "sklearn pipeline.predict_proba, 1 row (DataFrame)",
         lambda: pipeline.predict_proba(one)),
        ("sklearn-predict-1", "sklearn pipeline.predict, 1 row (what MLflow serves)",
         lambda: pipeline.predict(one)),
        ("onnx-1", "ONNX Runtime, 1 row (per-column arrays, as the API feeds it; "
         "a different row each call)", lambda: predictor.run_columns(next_single())),
        ("sklearn-1000", "sklearn pipeline.predict_proba, 1,000 rows",
         lambda: pipeline.predict_proba(batch)),
        ("onnx-1000", "ONNX Runtime, 1,000 rows", lambda: predictor.run_columns(batch_columns)),
    ]  # fmt: skip
    return [floor(key, name, fn, seconds) for key, name, fn in calls]


# --- report ----------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_kib / 2**20:.0f} GiB RAM; "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}"
    )


def render(
    *,
    args: argparse.Namespace,
    load_avg: str,
    facts: dict,
    results: list[WrkResult],
    floor_rows: list[Floor],
    servers: dict[str, dict[str, float]],
) -> str:
    def find(server: str, load: str) -> WrkResult:
        return next(r for r in results if r.server == server and r.load == load)

    ours, theirs, bare = OURS, THEIRS, BARE
    lines = [
        f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine()}",
        f"- Load average (1/5/15 min) when the run started: {load_avg}",
        f"- Command: `{COMMAND}`",
        f"- Model: the pipeline's `{args.candidate}` recipe (derived terrain features, "
        f"app.pipeline.candidates) fitted on the {facts['train_rows']:,} training rows of the "
        f"course's 10 batches, one thread (fit {facts['fit_s']:.1f} s, pickle "
        f"{facts['pickle_mb']:.1f} MiB); registered as "
        f"`{MODEL_NAME}` version {facts['version']} in a local `mlflow server`.",
        f"- Its ONNX form (app.onnx_model): {facts['onnx_mb']:.1f} MiB, logged in "
        f"{facts['onnx_s']:.0f} s (export, check against sklearn on 1,000 held-out rows, "
        f"upload: 0 label mismatches, max probability difference {facts['onnx_max_diff']:.1e}).",
        f"- Servers: ours is `python -m app.inference` ({WORKERS} uvicorn worker processes, "
        "INFERENCE_WORKERS as the inference_api role deploys it; ONNX backend chosen at "
        "load time after re-checking the logged verification rows); MLflow's is `mlflow models "
        f"serve -m models:/{MODEL_NAME}/{facts['version']} --env-manager local` (one worker, "
        "pyfunc predict: labels only). Ours also returns the 7 class probabilities per row. "
        "The bare endpoint is Litestar on one uvicorn worker with ours' settings, decoding the "
        "same JSON body and answering a fixed body of our answer's shape: the HTTP ceiling"
        + (f"; measured again with {WORKERS} workers, like ours." if WORKERS > 1 else "."),
        f"- Load: wrk, {args.seconds} s per row, POST bodies from a Lua script, on the same 2 "
        "cores as the servers. Single row: one record; batch: 1,000 records (`dataframe_records` "
        "for MLflow), 1 connection. Timeout 60 s.",
        "",
        "| server | load | p50 | p99 | requests/s | rows/s | requests (errors) |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r.server} | {r.load} | {r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms | "
            f"{r.requests_per_s:,.1f} | {r.requests_per_s * r.rows_per_request:,.0f} | "
            f"{r.requests:,} ({r.errors}) |"
        )
    lines += [
        "",
        "Floor: the model's own predict in one process, no HTTP (p50 / p99 over "
        f"{args.floor_seconds:g} s of calls).",
        "",
        "| in-process | p50 | p99 |",
        "| --- | ---: | ---: |",
    ]
    for f in floor_rows:
        lines.append(f"| {f.name} | {f.p50_ms:.3f} ms | {f.p99_ms:.3f} ms |")
    lines += ["", "| server | start to ready | RSS after the load |", "| --- | ---: | ---: |"]
    for name, s in servers.items():
        lines.append(f"| {name} | {s['startup_s']:.1f} s | {s['rss_mib']:,.0f} MiB |")

    ours16, theirs16, bare16 = (find(s, "single row, 16 connections") for s in (ours, theirs, bare))
    ours1, theirs1, bare1 = (find(s, "single row, 1 connection") for s in (ours, theirs, bare))
    oursb, theirsb = (find(s, "1,000-row batch, 1 connection") for s in (ours, theirs))
    ratio = ours16.requests_per_s / theirs16.requests_per_s
    bare_ratio = ours16.requests_per_s / bare16.requests_per_s
    same = find(BARE_SAME, "single row, 16 connections") if WORKERS > 1 else bare16
    same_ratio = ours16.requests_per_s / same.requests_per_s
    batch_ratio = oursb.requests_per_s / theirsb.requests_per_s
    p50 = {f.key: f.p50_ms for f in floor_rows}
    lines += [
        "",
        "Interpretation:",
        "",
        f"- Single rows, 16 connections: {ours16.requests_per_s:,.0f} requests/s, "
        f"{bare_ratio:.2f}x the bare endpoint's {bare16.requests_per_s:,.0f} in the same run "
        f"(aim: at least 0.5x, {'met' if bare_ratio >= 0.5 else 'NOT met'}), and "
        f"{ratio:,.0f}x MLflow's {theirs16.requests_per_s:,.1f}; p99 {ours16.p99_ms:.1f} ms."
        + (
            f" Against the bare endpoint with {WORKERS} workers, like ours: {same_ratio:.2f}x "
            f"its {same.requests_per_s:,.0f}."
            if WORKERS > 1
            else ""
        ),
        f"- One client: {ours1.p50_ms:.2f} ms p50 against the bare endpoint's "
        f"{bare1.p50_ms:.2f} ms and MLflow's {theirs1.p50_ms:.1f} ms. Ours pays JSON "
        "validation, the derived features, ONNX Runtime's predict and the probabilities; "
        "MLflow's server pays sklearn's predict per request plus a DataFrame and schema "
        "enforcement.",
        f"- 1,000-row batches: {oursb.requests_per_s * 1000:,.0f} rows/s against MLflow's "
        f"{theirsb.requests_per_s * 1000:,.0f} ({batch_ratio:.2f}x; aim 1.5x, "
        f"{'met' if batch_ratio >= 1.5 else 'NOT met'}). In-process, 1,000 rows cost ONNX "
        f"Runtime {p50['onnx-1000']:.0f} ms on one thread and sklearn {p50['sklearn-1000']:.0f}"
        " ms; the API splits a batch of 256 rows or more over two worker threads "
        "(INFERENCE_BATCH_THREADS=2; ONNX Runtime releases the GIL), so both cores work on it.",
        f"- In-process, ONNX Runtime takes {p50['onnx-1']:.3f} ms for one row (a different row "
        "each call). The API runs requests of up to 64 rows in one worker thread "
        "(app.inference.predict_worker), merging those that queue up meanwhile into one call, "
        "so the event loop serves HTTP while the trees run on the other core.",
        "- The ONNX form is served only because it reproduced the sklearn model's labels on the "
        "held-out rows twice: when the pipeline logged it, and again when the API loaded it.",
        "- wrk shares the 2 cores with the server under test, and other work on the machine skews "
        "every figure (see the load average): the ratios are more stable than the absolutes.",
        "",
    ]
    return "\n".join(lines)


def measure(served: Served, rows: list[dict[str, object]], args: argparse.Namespace,
            workdir: Path) -> list[WrkResult]:  # fmt: skip
    loads = [
        ("single row, 1 connection", served.body(rows[:1]), 1, 1),
        ("single row, 16 connections", served.body(rows[:1]), 1, 16),
    ]
    if served.name not in (BARE, BARE_SAME):
        loads.append(("1,000-row batch, 1 connection", served.body(rows[:1000]), 1000, 1))
    results = []
    for load, body, n, connections in loads:
        result = run_wrk(served, body, n, connections, args.seconds, workdir, load)
        print(f"  {load}: {result}", flush=True)
        results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", default="hist_gradient_boosting",
                        help="the pipeline recipe to serve (app.pipeline.candidates)")  # fmt: skip
    parser.add_argument("--seconds", type=int, default=8, help="wrk duration per run")
    parser.add_argument("--floor-seconds", type=float, default=3.0)
    parser.add_argument("--no-write", action="store_true", help="do not update docs/")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--bare-workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare_here(args.serve_bare, args.bare_workers)
        return
    load_avg = " / ".join(f"{x:.2f}" for x in os.getloadavg())

    print(f"fitting {args.candidate} on the course's 10 batches ...", flush=True)
    pipeline, train, _, holdout, fit_s = champion(args.candidate)
    facts: dict = {"fit_s": fit_s, "train_rows": len(train), "pickle_mb": pickle_mb(pipeline)}
    rows = [
        {c: (v if isinstance(v, str) else int(v)) for c, v in zip(FEATURE_COLUMNS, r, strict=True)}
        for r in holdout.itertuples(index=False)
    ]
    expected = [int(v) for v in pipeline.predict(holdout.iloc[:200])]

    results: list[WrkResult] = []
    servers: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="inference-bench-") as tmp:
        workdir = Path(tmp)
        with mlflow_server(workdir) as tracking_uri:
            print("logging and registering (sklearn model + ONNX form) ...", flush=True)
            facts |= register(tracking_uri, pipeline, train, holdout)
            from mlflow.tracking import MlflowClient

            run_id = (
                MlflowClient(tracking_uri).get_model_version(MODEL_NAME, facts["version"]).run_id
            )
            onnx_path = MlflowClient(tracking_uri).download_artifacts(
                run_id, "onnx/model.onnx", tmp
            )
            onnx_bytes = Path(onnx_path).read_bytes()

            # One server at a time under load, so they never compete for the cores; the bare
            # endpoint right after ours, so the ratio of the two sees the same machine.
            for make in (
                lambda: serve_ours(tracking_uri, workdir),
                lambda: serve_bare(workdir),
                *([lambda: serve_bare(workdir, WORKERS)] if WORKERS > 1 else []),
                lambda: serve_mlflow(tracking_uri, facts["version"], workdir),
            ):
                served = make()
                try:
                    print(f"{served.name}: ready in {served.startup_s:.1f} s", flush=True)
                    if served.name not in (BARE, BARE_SAME):
                        check_answers([served], rows[:200], expected)
                    results += measure(served, rows, args, workdir)
                    servers[served.name] = {
                        "startup_s": served.startup_s,
                        "rss_mib": tree_rss_mib(served.proc.pid),
                    }
                finally:
                    stop(served.proc)

    print("timing the floor in-process ...", flush=True)
    floor_rows = floors(pipeline, onnx_bytes, holdout, args.floor_seconds)
    text = render(
        args=args,
        load_avg=load_avg,
        facts=facts,
        results=results,
        floor_rows=floor_rows,
        servers=servers,
    )
    print()
    print(text)
    if not args.no_write:
        write_results(SECTION, text)
        print(f"written to {DOC.relative_to(REPO_ROOT)}")
    if any(r.errors != "none" for r in results):
        raise SystemExit("some requests failed: see the errors column")


if __name__ == "__main__":
    main()
