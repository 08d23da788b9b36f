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
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import psycopg2
import psycopg2.errors
from psycopg2.extras import execute_values

from app.batch_store.columns import SQL_CATEGORICAL_COLUMNS, SQL_COLUMNS
from app.batch_store.db import Connection, DsnOrConnection, connection
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


class IngestError(RuntimeError):
    """Storing a batch failed; nothing of it was stored."""


@dataclass(frozen=True)
class IngestReport:
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

    @property
    def has_new_rows(self) -> bool:
        return self.new > 0

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly (Airflow XCom, log lines)."""
        data = asdict(self)
        data["fetched_at"] = self.fetched_at.isoformat()
        return data


def _json_safe(value: object) -> object:
    """The raw row made storable as jsonb: PostgreSQL text cannot hold NUL characters or
    unpaired surrogates, and one odd value must not make the whole batch fail."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(_json_safe(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no NaN or infinity
    if value is None or isinstance(value, bool | int | float):
        return value
    return repr(value)


def _raw_json(row: object) -> str:
    try:
        return json.dumps(_json_safe(row), allow_nan=False)
    except (ValueError, RecursionError):  # a self-referencing structure, say
        return json.dumps(repr(row))


def _copy_buffer(valid: Sequence[tuple[str, ...]]) -> io.StringIO:
    # Values are validated digits and known category names: no tab, newline or backslash can
    # occur, so COPY's text format needs no escaping.
    return io.StringIO("".join("\t".join(values) + "\n" for values in valid))


def _store(
    conn: Connection,
    group_number: int,
    batch_number: int,
    fetched_at: datetime,
    valid: Sequence[tuple[str, ...]],
    rejected: Sequence[Rejection],
) -> int:
    params = {"group": group_number, "batch": batch_number, "fetched_at": fetched_at}
    # One transaction. Not `with conn:`: when the connection dies, its rollback would raise
    # "connection already closed" and hide the real error.
    cur = conn.cursor()
    try:
        cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (INGEST_LOCK_NAMESPACE, group_number))
        new = 0
        if valid:
            cur.execute(_CREATE_STAGING)
            cur.copy_expert(
                f"COPY covertype_staging ({_STAGING_COLUMNS}) FROM STDIN", _copy_buffer(valid)
            )
            cur.execute(_INSERT_NEW, params)
            new = cur.rowcount
        if rejected:
            execute_values(
                cur,
                "INSERT INTO rejected_rows"
                " (group_number, batch_number, fetched_at, row_index, raw_row, reason) VALUES %s",
                [
                    (group_number, batch_number, fetched_at, r.index, _raw_json(r.row), r.reason)
                    for r in rejected
                ],
                template="(%s, %s, %s, %s, %s::jsonb, %s)",
                page_size=1000,
            )
        cur.execute(
            _UPSERT_STATUS,
            {
                **params,
                "received": len(valid) + len(rejected),
                "new": new,
                "duplicate": len(valid) - new,
                "rejected": len(rejected),
            },
        )
        try:
            conn.commit()
        except psycopg2.Error as exc:
            raise IngestError(
                f"committing batch {batch_number} of group {group_number} failed, so whether it"
                " is stored is unknown; ingesting it again is safe (duplicates are skipped):"
                f" {str(exc).strip()}"
            ) from exc
    except BaseException:
        with contextlib.suppress(psycopg2.Error):
            conn.rollback()
        raise
    finally:
        with contextlib.suppress(psycopg2.Error):
            cur.close()
    return new


def ingest_batch(
    target: DsnOrConnection,
    group_number: int,
    batch_number: int,
    rows: Sequence[object],
    fetched_at: datetime | None = None,
) -> IngestReport:
    """Validate and store one delivered batch; see the module docstring.

    `target` is a DSN or an open connection with autocommit off (committed on success, rolled
    back on failure, left open). Raises IngestError, with nothing stored, when the database
    write fails.
    """
    if type(group_number) is not int or group_number < 1:
        raise ValueError(f"group_number must be an integer >= 1, got {group_number!r}")
    if type(batch_number) is not int or batch_number < 0:
        raise ValueError(f"batch_number must be an integer >= 0, got {batch_number!r}")
    if fetched_at is None:
        fetched_at = datetime.now(UTC)
    elif fetched_at.tzinfo is None:
        raise ValueError("fetched_at must be timezone-aware")
    started = time.perf_counter()
    result = validate_rows(rows)
    with connection(target) as conn:
        if conn.autocommit:
            raise ValueError("ingest_batch needs a connection with autocommit off")
        try:
            new = _store(
                conn, group_number, batch_number, fetched_at, result.valid, result.rejected
            )
        except psycopg2.errors.UndefinedTable as exc:
            raise IngestError(
                "the batch store schema is missing: run `python -m app.batch_store migrate`"
                f" ({str(exc).strip()})"
            ) from exc
        except psycopg2.Error as exc:
            raise IngestError(
                f"storing batch {batch_number} of group {group_number} failed and was rolled"
                f" back, nothing of it is stored: {str(exc).strip()}"
            ) from exc
    return IngestReport(
        group_number=group_number,
        batch_number=batch_number,
        fetched_at=fetched_at,
        received=len(rows),
        new=new,
        duplicate=len(result.valid) - new,
        rejected=len(result.rejected),
        reasons=result.summary(),
        seconds=time.perf_counter() - started,
    )
