"""A real `mlflow server --app-name basic-auth`, configured the way the VM runs it: tracking store
in the MySQL-compatible server, artifacts proxied to S3, the auth app's users and permissions in
a PostgreSQL database of their own, default permission NO_PERMISSIONS, and the accounts made by
the mlflow role's own script (ansible/roles/mlflow/files/mlflow_accounts.py)."""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jinja2
import psycopg2
import yaml

from tests.mlflow_server import ARTIFACT_BUCKET, MlflowServer
from tests.servers import MySQLServer, PostgresServer, S3Server, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
ROLE = REPO_ROOT / "ansible" / "roles" / "mlflow"
ACCOUNTS_SCRIPT = ROLE / "files" / "mlflow_accounts.py"
BACKEND_DATABASE = "mlflow_auth_tracking"
BACKEND_USER = "mlflowuser_auth"
AUTH_DATABASE = "mlflow_auth"
ADMIN = "admin"


@dataclass
class MlflowAuthServer(MlflowServer):
    auth_config: Path = Path("/nonexistent")
    auth_database_uri: str = ""
    admin_password: str = ""
    secret_key: str = ""

    def command(self) -> list[str]:
        command = super().command()
        return [*command[:2], "--app-name", "basic-auth", *command[2:]]

    def server_env(self) -> dict[str, str]:
        env = super().server_env()
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(self.auth_config)
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = self.secret_key
        return env

    def apply_accounts(self, spec: dict[str, object]) -> dict[str, object]:
        """Run the role's accounts script as provisioning does (spec on stdin); its answer."""
        full = {"url": self.tracking_uri, "auth_database_uri": self.auth_database_uri, **spec}
        done = subprocess.run(
            [sys.executable, str(ACCOUNTS_SCRIPT)],
            input=json.dumps(full),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)


def write_auth_config(path: Path, database_uri: str, admin_password: str) -> None:
    """The mlflow role's own template, rendered with the role's defaults for everything but
    the user store and the admin's password."""
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    template = jinja2.Template((ROLE / "templates" / "mlflow-auth.ini.j2").read_text())
    path.write_text(
        template.render(
            ansible_managed="rendered by tests/mlflow_auth_server.py",
            mlflow_user="mlflow",
            mlflow_auth_default_permission=defaults["mlflow_auth_default_permission"],
            mlflow_auth_cache_ttl_seconds=defaults["mlflow_auth_cache_ttl_seconds"],
            mlflow_auth_database_uri=database_uri,
            mlflow_admin_username=ADMIN,
            mlflow_admin_password=admin_password,
        )
    )
    path.chmod(0o600)


@contextlib.contextmanager
def mlflow_auth_server(
    base: Path, mysql: MySQLServer, s3: S3Server, postgres: PostgresServer
) -> Iterator[MlflowAuthServer]:
    password = secrets.token_urlsafe(18)
    mysql.create_database(BACKEND_DATABASE, BACKEND_USER, password)
    with contextlib.suppress(Exception):
        s3.client().create_bucket(Bucket=ARTIFACT_BUCKET)
    conn = psycopg2.connect(postgres.dsn())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{AUTH_DATABASE}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{AUTH_DATABASE}"')
    conn.close()
    auth_uri = postgres.dsn(AUTH_DATABASE).replace("postgresql://", "postgresql+psycopg2://", 1)
    base.mkdir(parents=True, exist_ok=True)
    admin_password = secrets.token_urlsafe(18)
    config = base / "basic_auth.ini"
    write_auth_config(config, auth_uri, admin_password)
    server = MlflowAuthServer(
        port=free_port(),
        backend_store_uri=mysql.url(BACKEND_DATABASE, user=BACKEND_USER, password=password),
        base=base,
        s3_env=s3.env(),
        auth_config=config,
        auth_database_uri=auth_uri,
        admin_password=admin_password,
        secret_key=secrets.token_hex(24),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
