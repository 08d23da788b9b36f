"""Helpers shared by the inference API tests (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from litestar.testing import TestClient

from app.inference.app import create_app
from app.settings import InferenceSettings
from tests.test_inference.models import Registered

SAMPLE_CSV = Path(__file__).resolve().parents[2] / "data" / "covertype-sample.csv"
TRAIN_ROWS = 4000
# The admin token of every API these tests start (INFERENCE_API_TOKEN): reloads send it.
ADMIN_TOKEN = uuid.uuid4().hex + uuid.uuid4().hex
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass(frozen=True)
class Frames:
    train: pd.DataFrame
    train_labels: pd.Series
    holdout: pd.DataFrame
    holdout_labels: pd.Series


@dataclass(frozen=True)
class Versions:
    """Two real versions of one registered model: a forest (v1) and a boosting model (v2)."""

    name: str
    forest: Registered
    boosting: Registered


def unique_name(prefix: str = "forest-cover-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll `check` until true; fail with `what` after `timeout` seconds. A bound on waiting,
    not a timed assertion: a slow machine only makes the test slower."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def settings_for(tracking_uri: str, name: str, **overrides: object) -> InferenceSettings:
    base = InferenceSettings(
        mlflow_tracking_uri=tracking_uri,
        model_name=name,
        model_alias="production",
        poll_interval_seconds=0.2,
        admin_token=ADMIN_TOKEN,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@contextlib.contextmanager
def api_client(settings: InferenceSettings, *, wait_ready: bool = True) -> Iterator[TestClient]:
    """The app in-process (Litestar's TestClient runs its lifespan, so the watcher runs).
    Its requests carry the admin token (tests/test_inference/test_inference_auth.py checks
    what happens without)."""
    with TestClient(create_app(settings), timeout=120) as client:
        client.headers.update(ADMIN_HEADERS)
        if wait_ready:
            wait_until(lambda: client.get("/ready").status_code == 200, "the API to be ready")
        yield client


def record(frame: pd.DataFrame, i: int = 0) -> dict[str, object]:
    """Row i of a feature frame as the JSON object /predict takes."""
    row = frame.iloc[i]
    return {c: (row[c] if isinstance(row[c], str) else int(row[c])) for c in frame.columns}


def records(frame: pd.DataFrame) -> list[dict[str, object]]:
    return [record(frame, i) for i in range(len(frame))]


@contextlib.contextmanager
def api_process(env: dict[str, str], log: Path) -> Iterator[str]:
    """`python -m app.inference` as its own process (uvicorn), the way the unit runs it;
    yields its base URL. The environment is exactly `env` plus PATH and the admin token
    (ADMIN_TOKEN, unless `env` gives one): no S3 credentials."""
    import os
    import signal
    import subprocess
    import sys

    from tests.servers import free_port, port_open
    from tests.servers import wait_for as wait_for_server

    port = free_port()
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "INFERENCE_API_HOST": "127.0.0.1",
        "INFERENCE_API_PORT": str(port),
        "INFERENCE_API_TOKEN": ADMIN_TOKEN,
        **env,
    }
    repo = Path(__file__).resolve().parents[2]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.inference"],
            cwd=repo,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_server(lambda: port_open(port), "inference API", timeout=60, log=log)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError("the inference API did not stop on SIGTERM") from None
        # uvicorn re-raises the SIGTERM it handled once shut down: -15 is its clean exit (and
        # systemd's); the log must show the lifespan (the watcher) finished.
        text = log.read_text()
        if (
            proc.returncode not in (0, -signal.SIGTERM)
            or "Application shutdown complete" not in text
        ):
            raise AssertionError(f"inference API exited {proc.returncode}: {text[-2000:]}")
