"""Apply the numbered SQL files in app/batch_store/schema/ to batches_db.

Each pending file runs in its own transaction, together with its row in schema_migrations,
under a transaction-scoped advisory lock: concurrent callers (two Airflow tasks, Ansible and a
task) serialise, and the second finds the work done. A file that fails leaves no trace and the
files after it are not tried.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from app.batch_store.db import Connection, DsnOrConnection, connection, redact_dsn

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"

# (namespace, key) for pg_advisory_xact_lock(int, int). The namespace is arbitrary but fixed;
# storing a batch uses its own (see store.py).
LOCK_NAMESPACE = 734_001
_MIGRATIONS_LOCK_KEY = 0

_FILE_NAME = re.compile(r"^(?P<version>\d{3})_(?P<name>[a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The schema files or the database are not in a state migrations can work with."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def discover(directory: Path = SCHEMA_DIR) -> list[Migration]:
    """The migration files in `directory`, by version. Any other .sql file is an error, so a
    misnamed file cannot be skipped silently."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files must be named NNN_lower_snake_name.sql")
        version = int(match["version"])
        if version == 0:
            raise MigrationError(f"{path}: versions start at 001")
        if version in found:
            raise MigrationError(f"{path}: version {version} is also {found[version].path.name}")
        found[version] = Migration(version, match["name"], path)
    return [found[v] for v in sorted(found)]


def _applied(conn: Connection) -> set[int]:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        (exists,) = cur.fetchone()
        if not exists:
            return set()
        cur.execute("SELECT version FROM schema_migrations")
        return {row[0] for row in cur.fetchall()}


def applied_versions(target: DsnOrConnection) -> list[int]:
    with connection(target) as conn:
        try:
            return sorted(_applied(conn))
        finally:
            conn.rollback()


def pending(target: DsnOrConnection, directory: Path = SCHEMA_DIR) -> list[Migration]:
    done = set(applied_versions(target))
    return [m for m in discover(directory) if m.version not in done]


def apply_migrations(target: DsnOrConnection, directory: Path = SCHEMA_DIR) -> list[int]:
    """Apply every pending migration; return the versions this call applied (empty when the
    schema was already current)."""
    migrations = discover(directory)
    if not migrations:
        raise MigrationError(f"no migration files in {directory}")
    applied_now: list[int] = []
    with connection(target) as conn:
        if conn.autocommit:
            raise MigrationError("apply_migrations needs a connection with autocommit off")
        for migration in migrations:
            try:
                with conn, conn.cursor() as cur:  # one transaction per file
                    cur.execute(
                        "SELECT pg_advisory_xact_lock(%s, %s)",
                        (LOCK_NAMESPACE, _MIGRATIONS_LOCK_KEY),
                    )
                    # Read under the lock: another caller may have applied it meanwhile.
                    if migration.version in _applied(conn):
                        continue
                    cur.execute(migration.sql())
                    cur.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)"
                        " ON CONFLICT (version) DO NOTHING",
                        (migration.version, migration.name),
                    )
                applied_now.append(migration.version)
            except psycopg2.Error as exc:
                where = redact_dsn(conn.dsn)
                raise MigrationError(
                    f"migration {migration.path.name} failed on {where} and was rolled back: "
                    f"{str(exc).strip()}"
                ) from exc
    return applied_now
