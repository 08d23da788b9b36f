"""A real `mlflow server` for the tests, configured the way the VM runs it.

Backend store: MySQL-compatible test server (utf8mb4 database `mlflow_db`, own user). Artifacts:
proxied by the server (`--serve-artifacts`) to `s3://mlflows3` on the S3 test server. Only the
server process gets S3 credentials; clients talk HTTP to the server and nothing else, which is
what lets the inference API and the DAG run without any S3 secret.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import MySQLServer, S3Server, ServerStartError, free_port, port_open, wait_for

ARTIFACT_BUCKET = "mlflows3"
BACKEND_DATABASE = "mlflow_db"
# The VM's user is `mlflowuser`; tests/test_servers.py creates that name too, with its own
# password, and MySQLServer.create_database keeps the first password a name was given.
BACKEND_USER = "mlflowuser_pipeline"
# Migrations on an empty MySQL schema take a while on a busy 2-core machine.
START_TIMEOUT = 240.0


def _venv_bin() -> Path:
    # The tests run from the dev venv; `mlflow server` execs uvicorn and friends by name, so
    # that venv's bin must be on its PATH (as on the VM, where the unit sets it).
    return Path(sys.executable).parent


@dataclass
class MlflowServer:
    port: int
    backend_store_uri: str
    base: Path
    s3_env: dict[str, str]
    artifacts_destination: str = f"s3://{ARTIFACT_BUCKET}"
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base / "mlflow-server.log"

    @property
    def allowed_hosts(self) -> str:
        return f"127.0.0.1:{self.port},localhost:{self.port}"

    def command(self) -> list[str]:
        return [
            str(_venv_bin() / "mlflow"),
            "server",
            "--backend-store-uri",
            self.backend_store_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            self.artifacts_destination,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--allowed-hosts",
            self.allowed_hosts,
        ]

    def server_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
        env["PATH"] = f"{_venv_bin()}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        # The job runner and its queue workers cost ~2 GiB and the pipeline uses no jobs.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        env.update(self.s3_env)
        return env

    def health(self) -> bool:
        with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=2) as resp:
            return resp.status == 200 and resp.read().strip() == b"OK"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        if self.running:
            return
        if port_open(self.port):
            raise ServerStartError(f"port {self.port} is taken; cannot start mlflow server")
        self.base.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # Own session: `mlflow server` runs uvicorn as a child, and stop() must end both.
            self._proc = subprocess.Popen(
                self.command(),
                cwd=self.base,
                env=self.server_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

        def up() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                raise ServerStartError(f"mlflow server exited with {self._proc.returncode}")
            return self.health()

        try:
            wait_for(up, "mlflow server", timeout=timeout, log=self.log_path)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        # The uvicorn child may outlive the CLI parent by a moment; wait for the port to close.
        wait_for(lambda: not port_open(self.port), "mlflow server shutdown", timeout=30)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """Down inside the block; back after it on the same port with the same stores."""
        self.stop()
        try:
            yield
        finally:
            self.start()


@contextlib.contextmanager
def mlflow_server(base: Path, mysql: MySQLServer, s3: S3Server) -> Iterator[MlflowServer]:
    password = secrets.token_urlsafe(18)
    mysql.create_database(BACKEND_DATABASE, BACKEND_USER, password)
    client = s3.client()
    # Another server of the session (tests/mlflow_auth_server.py) may have made it already.
    if ARTIFACT_BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=ARTIFACT_BUCKET)
    server = MlflowServer(
        port=free_port(),
        backend_store_uri=mysql.url(BACKEND_DATABASE, user=BACKEND_USER, password=password),
        base=base,
        s3_env=s3.env(),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def runs_with_a_logged_model(tracking_uri: str, experiment_id: str) -> list[str]:
    """The run ids the experiment's logged models came from, one entry per model (MLflow 3
    keeps logged models apart from runs; a run that logged two has two entries)."""
    from mlflow import MlflowClient

    client, found, token = MlflowClient(tracking_uri), [], None
    while True:
        page = client.search_logged_models([experiment_id], page_token=token)
        found += [m.source_run_id for m in page]
        token = page.token
        if not token:
            return sorted(found)
