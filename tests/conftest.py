"""Session-wide real servers. Each starts only when a test asks for it."""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import MySQLServer, PostgresServer, S3Server, mysql_server, postgres_server, s3_server

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CSV = REPO_ROOT / "data" / "covertype-sample.csv"
FULL_DATASET = REPO_ROOT / "data" / "covertype.csv.gz"


@pytest.fixture(scope="session")
def server_root() -> Iterator[Path]:
    # Under /tmp with world-traversable permissions: the database servers run as their own
    # system users when the tests run as root.
    with tempfile.TemporaryDirectory(prefix="mlops-test-") as d:
        Path(d).chmod(0o755)
        yield Path(d)


@pytest.fixture(scope="session")
def postgres(server_root: Path) -> Iterator[PostgresServer]:
    with postgres_server(server_root / "postgres") as server:
        yield server


@pytest.fixture(scope="session")
def mysql(server_root: Path) -> Iterator[MySQLServer]:
    with mysql_server(server_root / "mysql", root_password=secrets.token_urlsafe(16)) as server:
        yield server


@pytest.fixture(scope="session")
def s3(server_root: Path) -> Iterator[S3Server]:
    with s3_server(server_root / "s3", access_key=secrets.token_hex(10), secret_key=secrets.token_urlsafe(30)) as server:
        yield server


@pytest.fixture
def batches_dsn(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh, empty batches database per test."""
    name = "batches_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:40].lower()
    return postgres.create_database(name)
