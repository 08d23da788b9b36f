"""The external-S3 option (mlops_s3_external_endpoint_url): no MinIO on the platform's hosts,
MLflow's artifacts in someone else's S3 endpoint. Played here by a second, separate MinIO
server with its own keys, through the same files provisioning uses: the mlflow role's env
template and its bucket script."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
from mlflow.tracking import MlflowClient

from tests.mlflow_server import MlflowServer
from tests.servers import MinioServer, MySQLServer, free_port, s3_server

ROLE = Path(__file__).resolve().parent.parent / "ansible" / "roles" / "mlflow"
BUCKET = "team-artifacts"


@pytest.fixture(scope="module")
def external(server_root: Path):  # noqa: ANN201 - yields the second MinIO
    with s3_server(
        server_root / "external-s3",
        access_key="ext" + secrets.token_hex(6),
        secret_key=secrets.token_urlsafe(24),
    ) as server:
        yield server


def render_env(path: Path, external: MinioServer, secret_key: str, backend: str) -> Path:
    """/etc/mlops/mlflow.env as the mlflow role renders it for an external endpoint."""
    from ansible.plugins.filter.core import FilterModule

    environment = jinja2.Environment(keep_trailing_newline=True)
    environment.filters.update(FilterModule().filters())  # | bool, as Ansible renders it
    template = environment.from_string((ROLE / "templates" / "mlflow.env.j2").read_text())
    path.write_text(
        template.render(
            ansible_managed="test",
            mlflow_user="mlflow",
            mlflow_backend_store_uri=backend,
            mlflow_s3_endpoint_url=external.endpoint_url,
            mlflow_s3_access_key=external.access_key,
            mlflow_s3_secret_key=secret_key,
            mlflow_s3_region="us-east-1",
            mlflow_enable_job_execution=False,
            mlflow_extra_env={},
        )
    )
    path.chmod(0o600)
    return path


def ensure_bucket(env_file: Path) -> subprocess.CompletedProcess[str]:
    script = (ROLE / "files" / "ensure_bucket.py").read_text()
    return subprocess.run(
        [sys.executable, "-c", script, BUCKET, str(env_file)], capture_output=True, text=True
    )


def env_of(env_file: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs if not k.startswith("#")}


def test_the_bucket_script_creates_once_and_refuses_wrong_keys(external, tmp_path):
    good = render_env(tmp_path / "good.env", external, external.secret_key, "sqlite://")
    assert ensure_bucket(good).stdout.strip() == "created"
    assert ensure_bucket(good).stdout.strip() == "exists"
    assert BUCKET in {b["Name"] for b in external.client().list_buckets()["Buckets"]}

    wrong_secret = secrets.token_urlsafe(24)
    bad = render_env(tmp_path / "bad.env", external, wrong_secret, "sqlite://")
    failed = ensure_bucket(bad)
    assert failed.returncode != 0
    assert "SignatureDoesNotMatch" in failed.stderr or "403" in failed.stderr, failed.stderr
    assert wrong_secret not in failed.stdout + failed.stderr


def test_mlflow_keeps_artifacts_in_the_external_endpoint(
    external, mysql: MySQLServer, tmp_path, server_root
):
    password = secrets.token_urlsafe(18)
    mysql.create_database("mlflow_external", "mlflow_external", password)
    backend = mysql.url("mlflow_external", user="mlflow_external", password=password)
    env_file = render_env(tmp_path / "mlflow.env", external, external.secret_key, backend)
    assert ensure_bucket(env_file).returncode == 0
    env = env_of(env_file)
    server = MlflowServer(
        port=free_port(),
        backend_store_uri=env["MLFLOW_BACKEND_STORE_URI"],
        base=server_root / "mlflow-external",
        s3_env={k: v for k, v in env.items() if k.startswith(("AWS_", "MLFLOW_S3"))},
        artifacts_destination=f"s3://{BUCKET}",
    )
    server.start()
    try:
        client = MlflowClient(server.tracking_uri)
        experiment = client.create_experiment("external-s3")
        run = client.create_run(experiment)
        (tmp_path / "note.txt").write_text("stored outside the platform")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        keys = [
            o["Key"] for o in external.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])
        ]
        assert any(k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in keys), keys
        # And it reads back through the proxy: the client holds no S3 key at all.
        (tmp_path / "back").mkdir()
        local = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "back"))
        assert Path(local).read_text() == "stored outside the platform"
    finally:
        server.stop()
