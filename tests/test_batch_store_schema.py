"""Schema migrations on a real PostgreSQL: apply, re-apply, concurrency, failure, the CLI, and
the schema's constraints, hash and split agreeing with the Python data contract."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest

from app.batch_store.db import redact_dsn
from app.batch_store.migrations import (
    SCHEMA_DIR,
    MigrationError,
    applied_versions,
    apply_migrations,
    discover,
    pending,
)
from app.batch_store.validation import is_holdout, row_hash
from app.covertype import COLUMNS, NUMERIC_RANGES, SOIL_TYPES, WILDERNESS_AREAS
from tests.conftest import REPO_ROOT, SAMPLE_CSV
from tests.servers import free_port

GOOD = ["2596", "51", "3", "258", "0", "510", "221", "232", "148", "6279", "Rawah", "C7745", "5"]
SQL_COLUMNS = [c.lower() for c in COLUMNS]


# The versions of the files shipped in app/batch_store/schema/.
SHIPPED = [m.version for m in discover()]


def query(dsn: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def catalog(dsn: str) -> list[tuple[object, ...]]:
    """Everything the schema defines, for before/after comparisons."""
    return query(
        dsn,
        """
        SELECT 'column', table_name || '.' || column_name || ' ' || data_type
               || coalesce(' = ' || generation_expression, '')
        FROM information_schema.columns WHERE table_schema = 'public'
        UNION ALL SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = 'public'
        UNION ALL SELECT 'constraint', conrelid::regclass || ' ' || pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
        UNION ALL SELECT 'view', viewname || ' ' || definition FROM pg_views
        WHERE schemaname = 'public'
        UNION ALL SELECT 'function', p.oid::regprocedure::text || ' ' || prosrc
        FROM pg_proc p WHERE pronamespace = 'public'::regnamespace
        ORDER BY 1, 2
        """,
    )


def test_files_are_numbered_and_each_records_itself() -> None:
    migrations = discover()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    for m in migrations:
        # Applied by other means (Ansible's postgresql_script), a file must still leave its row.
        sql = m.sql()
        assert f"VALUES ({m.version}, '{m.name}')" in sql, m.path.name
        assert "BEGIN" not in sql.upper().split() and "COMMIT" not in sql.upper(), m.path.name


def test_apply_then_reapply_changes_nothing(batches_dsn: str) -> None:
    assert applied_versions(batches_dsn) == []
    assert [m.version for m in pending(batches_dsn)] == SHIPPED
    assert apply_migrations(batches_dsn) == SHIPPED
    rows = query(batches_dsn, "SELECT version, name, applied_at FROM schema_migrations")
    assert [(v, n) for v, n, _ in rows] == [(m.version, m.name) for m in discover()]
    before = catalog(batches_dsn)
    tables = {r[1].split(".")[0] for r in before if r[0] == "column"}
    assert {"covertype_rows", "batch_status", "rejected_rows", "schema_migrations"} <= tables
    assert {"batch_statistics", "batch_totals"} <= tables  # views have columns too

    assert apply_migrations(batches_dsn) == []
    assert query(batches_dsn, "SELECT version, name, applied_at FROM schema_migrations") == rows
    assert catalog(batches_dsn) == before
    assert pending(batches_dsn) == []


def test_plain_sql_files_are_idempotent_when_applied_directly(batches_dsn: str) -> None:
    # What Ansible's postgresql_script would do: run the file, twice, outside our runner.
    conn = psycopg2.connect(batches_dsn)
    try:
        for _ in range(2):
            for m in discover():
                with conn, conn.cursor() as cur:
                    cur.execute(m.sql())
    finally:
        conn.close()
    assert applied_versions(batches_dsn) == SHIPPED
    assert apply_migrations(batches_dsn) == []


def test_concurrent_callers_apply_each_file_once(batches_dsn: str) -> None:
    callers = 6
    barrier = threading.Barrier(callers)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            results.append(apply_migrations(batches_dsn))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(v for r in results for v in r) == SHIPPED
    assert applied_versions(batches_dsn) == SHIPPED


def test_only_pending_files_are_applied(batches_dsn: str, tmp_path: Path) -> None:
    shutil.copy(SCHEMA_DIR / "001_initial.sql", tmp_path)
    assert apply_migrations(batches_dsn, tmp_path) == [1]
    (tmp_path / "002_batch_note.sql").write_text(
        "ALTER TABLE batch_status ADD COLUMN IF NOT EXISTS note text;\n"
        "INSERT INTO schema_migrations (version, name) VALUES (2, 'batch_note')"
        " ON CONFLICT (version) DO NOTHING;\n"
    )
    assert [m.version for m in pending(batches_dsn, tmp_path)] == [2]
    assert apply_migrations(batches_dsn, tmp_path) == [2]
    assert apply_migrations(batches_dsn, tmp_path) == []
    assert applied_versions(batches_dsn) == [1, 2]
    columns = query(
        batches_dsn,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'batch_status'",
    )
    assert ("note",) in columns


def test_a_failing_file_is_rolled_back_and_stops_the_run(batches_dsn: str, tmp_path: Path) -> None:
    shutil.copy(SCHEMA_DIR / "001_initial.sql", tmp_path)
    (tmp_path / "002_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT no_such_function();\n"
    )
    (tmp_path / "003_after.sql").write_text("CREATE TABLE after_broken (id int);\n")
    with pytest.raises(MigrationError, match=r"002_broken\.sql failed .* rolled back"):
        apply_migrations(batches_dsn, tmp_path)
    assert applied_versions(batches_dsn) == [1]  # 001 committed on its own
    assert query(batches_dsn, "SELECT to_regclass('half_done'), to_regclass('after_broken')") == [
        (None, None)
    ]


def test_misnamed_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_initial.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNN_lower_snake_name"):
        discover(tmp_path)
    (tmp_path / "1_initial.sql").unlink()
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "001_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="version 1 is also"):
        discover(tmp_path)


def run_cli(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BATCHES_DB_DSN": dsn, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "app.batch_store", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
    )


def test_cli_migrate_reports_what_changed(batches_dsn: str) -> None:
    first = run_cli("migrate", dsn=batches_dsn)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"applied": SHIPPED, "current": SHIPPED[-1]}
    second = run_cli("migrate", dsn=batches_dsn)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == {"applied": [], "current": SHIPPED[-1]}
    status = run_cli("status", dsn=batches_dsn)
    assert json.loads(status.stdout) == {"applied": SHIPPED, "pending": []}


def test_cli_failure_is_clear_and_hides_the_password() -> None:
    dsn = f"postgresql://batches:s3cret-pw@127.0.0.1:{free_port()}/batches_db?connect_timeout=5"
    result = run_cli("migrate", dsn=dsn)
    assert result.returncode == 1
    assert (
        "error: cannot use the batch store at postgresql://batches:***@127.0.0.1" in result.stderr
    )
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_dsn_passwords_are_redacted() -> None:
    assert redact_dsn("postgresql://u:p%40ss@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact_dsn("host=db user=u password='a b' dbname=x") == (
        "host=db user=u password=*** dbname=x"
    )
    assert redact_dsn("postgresql://db/x?password=s3cret") == "postgresql://db/x?password=***"
    assert redact_dsn("postgresql://u@db/x") == "postgresql://u@db/x"


@pytest.fixture
def migrated(batches_dsn: str) -> str:
    apply_migrations(batches_dsn)
    return batches_dsn


def insert_raw(conn: psycopg2.extensions.connection, values: list[str]) -> None:
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO covertype_rows (group_number, batch_number, fetched_at,"
            f" {', '.join(SQL_COLUMNS)}) VALUES (1, 1, now(), {', '.join(['%s'] * 13)})",
            values,
        )


def violates(conn: psycopg2.extensions.connection, values: list[str]) -> bool:
    with conn.cursor() as cur:
        cur.execute("SAVEPOINT probe")
        try:
            insert_raw(conn, values)
        except psycopg2.errors.CheckViolation:
            cur.execute("ROLLBACK TO SAVEPOINT probe")
            return True
        cur.execute("ROLLBACK TO SAVEPOINT probe")
        return False


def with_value(column: str, value: str) -> list[str]:
    row = list(GOOD)
    row[COLUMNS.index(column)] = value
    return row


def test_check_constraints_mirror_the_data_contract(migrated: str) -> None:
    conn = psycopg2.connect(migrated)
    try:
        for column, (low, high) in NUMERIC_RANGES.items():
            assert not violates(conn, with_value(column, str(low))), (column, low)
            assert not violates(conn, with_value(column, str(high))), (column, high)
            assert violates(conn, with_value(column, str(low - 1))), (column, low - 1)
            assert violates(conn, with_value(column, str(high + 1))), (column, high + 1)
        for name in WILDERNESS_AREAS:
            assert not violates(conn, with_value("Wilderness_Area", name))
        assert violates(conn, with_value("Wilderness_Area", "Comanche"))
        for code in SOIL_TYPES:
            assert not violates(conn, with_value("Soil_Type", code))
        assert violates(conn, with_value("Soil_Type", "C0000"))
        for cover in range(1, 8):
            assert not violates(conn, with_value("Cover_Type", str(cover)))
        assert violates(conn, with_value("Cover_Type", "0"))
        assert violates(conn, with_value("Cover_Type", "8"))
    finally:
        conn.close()


def test_row_hash_and_split_are_computed_by_the_database_as_in_python(migrated: str) -> None:
    import csv

    with SAMPLE_CSV.open(newline="") as f:
        reader = csv.reader(f)
        next(reader)
        rows = [row for _, row in zip(range(500), reader, strict=False)]
    conn = psycopg2.connect(migrated)
    try:
        for row in rows:
            insert_raw(conn, row)
        conn.commit()
        with conn.cursor() as cur:
            cur.execute(
                f"SELECT {', '.join(SQL_COLUMNS)}, row_hash, is_holdout FROM covertype_rows"
            )
            stored = cur.fetchall()
        # A client cannot override the derived columns.
        with pytest.raises(psycopg2.errors.GeneratedAlways), conn.cursor() as cur:
            cur.execute("UPDATE covertype_rows SET is_holdout = NOT is_holdout")
        conn.rollback()
    finally:
        conn.close()
    assert len(stored) == len(rows)
    for record in stored:
        values = [str(v) for v in record[:13]]
        assert bytes(record[13]) == row_hash(values)
        assert record[14] == is_holdout(row_hash(values))
