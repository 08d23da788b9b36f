"""Helpers shared by the UI tests (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd

from app.covertype import COLUMNS
from tests.servers import free_port, wait_for
from tests.test_inference.support import ADMIN_TOKEN

REPO_ROOT = Path(__file__).resolve().parents[2]
MAIN_FILE = REPO_ROOT / "ui" / "__main__.py"
SAMPLE_CSV = REPO_ROOT / "data" / "covertype-sample.csv"
ARTIFACTS = REPO_ROOT / "test-artifacts"
ALIAS = "production"
# How often should_see looks again (every 0.1 s) for content the backends fill in: a bound on
# waiting on a busy machine, not a timing check.
SEE_RETRIES = 300
# The UI's login in every test (UI_ADMIN_USERNAME / UI_ADMIN_PASSWORD); generated, as
# provisioning does.
UI_USERNAME = "admin"
UI_PASSWORD = secrets.token_urlsafe(18)

UI_VARIABLES = (
    "INFERENCE_API_URL",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTERED_MODEL",
    "MLFLOW_PRODUCTION_ALIAS",
    "BATCHES_DB_DSN",
    "UI_AIRFLOW_URL",
    "UI_MLFLOW_URL",
    "UI_MINIO_CONSOLE_URL",
    "UI_HTTP_CONNECT_TIMEOUT",
    "UI_HTTP_READ_TIMEOUT",
    "UI_RELOAD_TIMEOUT",
    "UI_DB_CONNECT_TIMEOUT",
    "UI_STORAGE_SECRET",
    "UI_ADMIN_USERNAME",
    "UI_ADMIN_PASSWORD",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "INFERENCE_API_TOKEN",
)


def closed_url() -> str:
    """An address where nothing listens: a backend that is down."""
    return f"http://127.0.0.1:{free_port()}"


def closed_dsn() -> str:
    return f"postgresql://batches_reader@127.0.0.1:{free_port()}/batches_db"


def all_down_env() -> dict[str, str]:
    return {
        "INFERENCE_API_URL": closed_url(),
        "MLFLOW_TRACKING_URI": closed_url(),
        "BATCHES_DB_DSN": closed_dsn(),
        "MLFLOW_REGISTERED_MODEL": "forest-cover",
        "MLFLOW_PRODUCTION_ALIAS": ALIAS,
        "UI_AIRFLOW_URL": "http://airflow.test:8080",
        "UI_MLFLOW_URL": "http://mlflow.test:5000",
        "UI_MINIO_CONSOLE_URL": "http://minio.test:9001",
        "UI_HTTP_CONNECT_TIMEOUT": "2",
        "UI_HTTP_READ_TIMEOUT": "60",
        "UI_STORAGE_SECRET": uuid.uuid4().hex,
        "UI_ADMIN_USERNAME": UI_USERNAME,
        "UI_ADMIN_PASSWORD": UI_PASSWORD,
    }


def login_env() -> dict[str, str]:
    """What a `python -m ui` process needs for its login (the unit's env file has the same)."""
    return {
        "UI_STORAGE_SECRET": secrets.token_hex(24),
        "UI_ADMIN_USERNAME": UI_USERNAME,
        "UI_ADMIN_PASSWORD": UI_PASSWORD,
    }


def log_in_in_browser(page, url: str, path: str = "/") -> None:  # noqa: ANN001 - Playwright's Page
    """Open `url` + `path` in a Playwright page as a person would: the UI sends the browser to
    its login page, which after the right password brings it back to `path`."""
    import re

    from playwright.sync_api import expect

    page.goto(f"{url}{path}")
    expect(page).to_have_url(re.compile(r"/login\?redirect_to="))
    page.get_by_label("User name", exact=True).fill(UI_USERNAME)
    page.get_by_label("Password", exact=True).fill(UI_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{url}{path}")


@dataclass(frozen=True)
class Served:
    """A real MLflow server with two versions the pipeline registered, and the inference API
    (its own process) serving alias production."""

    tracking_uri: str
    name: str
    api_url: str
    api_log: Path
    # v1: a forest on batches 1-4 (promoted); v2: a weak model on all 10 (not promoted).
    promoted: str
    rejected: str

    def predict_requests(self) -> int:
        """How many POST /predict the API has answered (its access log)."""
        return self.api_log.read_text().count('"POST /predict HTTP')

    def predict(self, record: dict[str, int | str]) -> dict[str, object]:
        response = httpx.post(f"{self.api_url}/predict", json=record, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    def serving_version(self) -> str | None:
        return httpx.get(f"{self.api_url}/model", timeout=30).json()["version"]

    def env(self) -> dict[str, str]:
        return {
            "INFERENCE_API_URL": self.api_url,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_REGISTERED_MODEL": self.name,
            # The API's admin token (tests/test_inference/support.py starts it with this one):
            # the reload button sends it.
            "INFERENCE_API_TOKEN": ADMIN_TOKEN,
        }


@dataclass(frozen=True)
class BatchesStore:
    dsn: str
    # A role that may only SELECT batch_statistics and batch_totals.
    reader_dsn: str
    # Every delivery ingested, in order: (group, batch, rows as the data API sends them).
    deliveries: list[tuple[int, int, list[list[str]]]]


def sample_rows() -> list[list[str]]:
    frame = pd.read_csv(SAMPLE_CSV, dtype=str)
    return frame[list(COLUMNS)].values.tolist()


class SilentServer:
    """A TCP port that takes connections and never answers (a hung backend) until close(),
    which resets every connection it holds."""

    def __init__(self) -> None:
        import socket

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        # Never accept(): the kernel completes the handshakes, nobody reads or writes.
        self._socket.listen(64)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@contextlib.contextmanager
def ui_server(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`python -m ui` as its unit runs it, on a free loopback port, with `env` on top of the
    address and storage variables; yields (base URL, its log). It must stop without a
    traceback in its log."""
    port = free_port()
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "UI_HOST": "127.0.0.1",
        "UI_PORT": str(port),
        "NICEGUI_STORAGE_PATH": str(tmp_path / "nicegui"),
        **env,
    }
    log = tmp_path / "ui.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ui"], cwd=REPO_ROOT, env=full_env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: httpx.get(f"{url}/health", timeout=2).json() == {"status": "alive"},
            "the UI",
            timeout=60,
            log=log,
        )
        yield url, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert "Traceback" not in log.read_text(), log.read_text()
