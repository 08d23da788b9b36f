"""Batch progress from batches_db: the batch_statistics and batch_totals views, read through
app.batch_store.read on a read-only connection of the UI's own."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors

from app.batch_store import read
from app.settings import UiSettings
from ui.backend import BackendError

log = logging.getLogger("ui.batch_progress")

SERVICE = "Batch database"
APPLICATION_NAME = "mlops-ui"
# The page waits for this at most; the views are aggregates over at most ~600k rows.
STATEMENT_TIMEOUT_MS = 20_000


@dataclass(frozen=True)
class BatchProgress:
    # One dict per group (batch_totals) and per group and batch (batch_statistics).
    totals: list[dict[str, Any]]
    batches: list[dict[str, Any]]

    def groups(self) -> list[int]:
        return [int(t["group_number"]) for t in self.totals]

    def totals_of(self, group: int) -> dict[str, Any]:
        return next(t for t in self.totals if t["group_number"] == group)

    def batches_of(self, group: int) -> list[dict[str, Any]]:
        return [b for b in self.batches if b["group_number"] == group]

    def missing_of(self, group: int) -> list[int]:
        """Batch numbers the group never received below its latest (a gap, lost rows); one
        batch_statistics row stands for every batch number batch_status has seen."""
        return read.missing_batches(int(b["batch_number"]) for b in self.batches_of(group))


def _connect(settings: UiSettings) -> psycopg2.extensions.connection:
    # Read-only at the session level too: the role should only have SELECT, and if it has more
    # (a reused DSN), this process still cannot write.
    return psycopg2.connect(
        settings.batches_db_dsn,
        connect_timeout=settings.db_connect_timeout,
        application_name=APPLICATION_NAME,
        options=(
            f"-c default_transaction_read_only=on -c statement_timeout={STATEMENT_TIMEOUT_MS}"
        ),
    )


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def load(settings: UiSettings) -> BatchProgress:
    """Both views in one transaction (one consistent snapshot). Raises BackendError."""
    try:
        conn = _connect(settings)
    except psycopg2.Error as exc:
        log.warning("batch database: cannot connect: %s", _first_line(exc))
        raise BackendError(SERVICE, f"not reachable ({_first_line(exc)})") from None
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn:
            totals = read.batch_totals(conn)
            batches = read.batch_statistics(conn)
    except psycopg2.errors.UndefinedTable:
        raise BackendError(
            SERVICE, "has no batch statistics yet: the batch store schema is not set up"
        ) from None
    except psycopg2.errors.InsufficientPrivilege as exc:
        raise BackendError(SERVICE, f"refused the read ({_first_line(exc)})") from None
    except psycopg2.Error as exc:
        log.warning("batch database: read failed: %s", _first_line(exc))
        raise BackendError(SERVICE, f"read failed ({_first_line(exc)})") from None
    finally:
        conn.close()
    return BatchProgress(totals=totals, batches=batches)
