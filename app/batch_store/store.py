"""Store one delivered batch: validate, bulk-load the good rows, keep the bad ones, count.

Everything a call writes -- new rows, rejected rows, the batch_status counts -- commits in one
transaction or not at all. Good rows go through COPY into a temporary staging table and then
into covertype_rows with ON CONFLICT DO NOTHING on (group_number, row_hash), so a row already
stored (from an earlier fetch, or earlier in the same payload) counts as a duplicate and is
stored once.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

import psycopg2
import psycopg2.errors
from psycopg2.extras import execute_values

from app.batch_store.columns import SQL_CATEGORICAL_COLUMNS, SQL_COLUMNS
from app.batch_store.db import Connection, DsnOrConnection, connection
from app.batch_store.deliveries import delete_delivery, raw_json, take_delivery
from app.batch_store.validation import Rejection, validate_rows

# Serialises ingestion per group (pg_advisory_xact_lock(namespace, group_number)): two
# overlapping payloads inserted concurrently in different orders could otherwise deadlock.
INGEST_LOCK_NAMESPACE = 734_002

_STAGING_COLUMNS = ", ".join(SQL_COLUMNS)
_STAGING_DEFINITIONS = ", ".join(
    f"{c} text" if c in SQL_CATEGORICAL_COLUMNS else f"{c} integer" for c in SQL_COLUMNS
)
_CREATE_STAGING = f"""
CREATE TEMPORARY TABLE covertype_staging (
    ord bigint GENERATED ALWAYS AS IDENTITY, {_STAGING_DEFINITIONS}
) ON COMMIT DROP
"""
_INSERT_NEW = f"""
INSERT INTO covertype_rows (group_number, batch_number, fetched_at, {_STAGING_COLUMNS})
SELECT %(group)s, %(batch)s, %(fetched_at)s, {_STAGING_COLUMNS}
FROM covertype_staging
ORDER BY ord
ON CONFLICT (group_number, row_hash) DO NOTHING
"""
_UPSERT_STATUS = """
INSERT INTO batch_status AS s (
    group_number, batch_number, fetch_count, rows_received, rows_new, rows_duplicate,
    rows_rejected, first_seen_at, last_seen_at)
VALUES (%(group)s, %(batch)s, 1, %(received)s, %(new)s, %(duplicate)s, %(rejected)s,
        %(fetched_at)s, %(fetched_at)s)
ON CONFLICT (group_number, batch_number) DO UPDATE SET
    fetch_count    = s.fetch_count + 1,
    rows_received  = s.rows_received + EXCLUDED.rows_received,
    rows_new       = s.rows_new + EXCLUDED.rows_new,
    rows_duplicate = s.rows_duplicate + EXCLUDED.rows_duplicate,
    rows_rejected  = s.rows_rejected + EXCLUDED.rows_rejected,
    first_seen_at  = least(s.first_seen_at, EXCLUDED.first_seen_at),
    last_seen_at   = greatest(s.last_seen_at, EXCLUDED.last_seen_at)
"""


class Delivered(NamedTuple):
    """Which batch a payload is: its group and batch number and when it was fetched (the
    statements' parameters, by these names)."""

    group: int
    batch: int
    fetched_at: datetime


class StoreError(RuntimeError):
    """Storing a batch failed; nothing of it was stored."""


@dataclass(frozen=True)
class StoreReport:
    group_number: int
    batch_number: int
    fetched_at: datetime
    received: int
    new: int
    duplicate: int
    rejected: int
    # How many rejected rows had each kind of problem, e.g. {"Aspect: out of range": 3}.
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly (Airflow XCom, log lines)."""
        data = asdict(self)
        data["fetched_at"] = self.fetched_at.isoformat()
        return data


def _copy_buffer(valid: Sequence[tuple[str, ...]]) -> io.StringIO:
    # Values are validated digits and known category names: no tab, newline or backslash can
    # occur, so COPY's text format needs no escaping.
    return io.StringIO("".join("\t".join(values) + "\n" for values in valid))


def _write(
    cur: psycopg2.extensions.cursor,
    which: Delivered,
    valid: Sequence[tuple[str, ...]],
    rejected: Sequence[Rejection],
) -> int:
    """The batch's rows, rejected rows and counts, inside the caller's transaction; returns
    how many rows were new."""
    cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (INGEST_LOCK_NAMESPACE, which.group))
    new = 0
    if valid:
        cur.execute(_CREATE_STAGING)
        cur.copy_expert(
            f"COPY covertype_staging ({_STAGING_COLUMNS}) FROM STDIN", _copy_buffer(valid)
        )
        cur.execute(_INSERT_NEW, which._asdict())
        new = cur.rowcount
    if rejected:
        execute_values(
            cur,
            "INSERT INTO rejected_rows"
            " (group_number, batch_number, fetched_at, row_index, raw_row, reason) VALUES %s",
            [
                (
                    which.group,
                    which.batch,
                    which.fetched_at,
                    r.index,
                    raw_json(r.row),
                    r.reason,
                )
                for r in rejected
            ],  # fmt: skip
            template="(%s, %s, %s, %s, %s::jsonb, %s)",
            page_size=1000,
        )
    counts = {"received": len(valid) + len(rejected), "new": new, "rejected": len(rejected)}
    cur.execute(_UPSERT_STATUS, {**which._asdict(), **counts, "duplicate": len(valid) - new})
    return new


def _commit(conn: Connection, which: Delivered) -> None:
    try:
        conn.commit()
    except psycopg2.Error as exc:
        raise StoreError(
            f"committing batch {which.batch} of group {which.group} failed, so whether"
            " it is stored is unknown; storing it again is safe (duplicates are skipped):"
            f" {str(exc).strip()}"
        ) from exc


def _store(
    conn: Connection,
    which: Delivered,
    valid: Sequence[tuple[str, ...]],
    rejected: Sequence[Rejection],
    also: Callable[[psycopg2.extensions.cursor], None] | None = None,
) -> int:
    """_write, then `also` (more statements for the same transaction), then commit; on any
    error roll back, so nothing of it is stored."""
    # Not `with conn:`: when the connection dies, its rollback would raise "connection already
    # closed" and hide the real error.
    cur = conn.cursor()
    try:
        new = _write(cur, which, valid, rejected)
        if also is not None:
            also(cur)
        _commit(conn, which)
    except BaseException:
        with contextlib.suppress(psycopg2.Error):
            conn.rollback()
        raise
    finally:
        with contextlib.suppress(psycopg2.Error):
            cur.close()
    return new


def _check_identity(group_number: int, batch_number: int, fetched_at: datetime | None) -> datetime:
    if type(group_number) is not int or group_number < 1:
        raise ValueError(f"group_number must be an integer >= 1, got {group_number!r}")
    if type(batch_number) is not int or batch_number < 0:
        raise ValueError(f"batch_number must be an integer >= 0, got {batch_number!r}")
    if fetched_at is None:
        return datetime.now(UTC)
    if fetched_at.tzinfo is None:
        raise ValueError("fetched_at must be timezone-aware")
    return fetched_at


def _validate_and_store(
    conn: Connection,
    which: Delivered,
    rows: Sequence[object],
    also: Callable[[psycopg2.extensions.cursor], None] | None = None,
) -> StoreReport:
    started = time.perf_counter()
    result = validate_rows(rows)
    if conn.autocommit:
        raise ValueError("storing a batch needs a connection with autocommit off")
    try:
        new = _store(conn, which, result.valid, result.rejected, also)
    except psycopg2.errors.UndefinedTable as exc:
        raise StoreError(
            "the batch store schema is missing: run `python -m app.batch_store migrate`"
            f" ({str(exc).strip()})"
        ) from exc
    except psycopg2.Error as exc:
        raise StoreError(
            f"storing batch {which.batch} of group {which.group} failed and was rolled back,"
            f" nothing of it is stored: {str(exc).strip()}"
        ) from exc
    return StoreReport(
        group_number=which.group,
        batch_number=which.batch,
        fetched_at=which.fetched_at,
        received=len(rows),
        new=new,
        duplicate=len(result.valid) - new,
        rejected=len(result.rejected),
        reasons=result.summary(),
        seconds=time.perf_counter() - started,
    )


def store_batch(
    target: DsnOrConnection,
    group_number: int,
    batch_number: int,
    rows: Sequence[object],
    fetched_at: datetime | None = None,
) -> StoreReport:
    """Validate and store one delivered batch; see the module docstring.

    `target` is a DSN or an open connection with autocommit off (committed on success, rolled
    back on failure, left open). Raises StoreError, with nothing stored, when the database
    write fails.
    """
    fetched_at = _check_identity(group_number, batch_number, fetched_at)
    which = Delivered(group_number, batch_number, fetched_at)
    with connection(target) as conn:
        return _validate_and_store(conn, which, rows)


def store_delivery(target: DsnOrConnection, delivery_id: int) -> StoreReport:
    """Store a batch saved by app.batch_store.deliveries.save_delivery and delete the saved
    delivery in the same transaction: either the batch is stored and the delivery gone, or
    nothing changed. Raises DeliveryNotFoundError when there is no such delivery (an earlier
    try stored it, or it was never saved)."""
    with connection(target) as conn:
        try:
            delivery = take_delivery(conn, delivery_id)
        except psycopg2.Error as exc:
            with contextlib.suppress(psycopg2.Error):
                conn.rollback()
            raise StoreError(f"reading delivery {delivery_id} failed: {str(exc).strip()}") from exc
        which = Delivered(delivery.group_number, delivery.batch_number, delivery.fetched_at)
        return _validate_and_store(
            conn, which, delivery.rows, also=lambda cur: delete_delivery(cur, delivery_id)
        )
