"""What the pipeline and the UI read back from the batch store.

Each function takes a DSN (its own short-lived connection) or an open connection, whose
transaction it leaves to the caller.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from psycopg2.extras import RealDictCursor

from app.batch_store.columns import SQL_NAMES
from app.batch_store.db import DsnOrConnection, connection
from app.covertype import CATEGORICAL_COLUMNS, COLUMNS, NUMERIC_COLUMNS, TARGET_COLUMN

if TYPE_CHECKING:
    import pandas as pd

Split = Literal["train", "holdout"]
FRAME_COLUMNS: tuple[str, ...] = (*COLUMNS, "batch_number")

_SELECT_LIST = ", ".join(f'{SQL_NAMES[name]} AS "{name}"' for name in COLUMNS)
_DTYPES: dict[str, str] = {
    **{name: "int64" for name in (*NUMERIC_COLUMNS, TARGET_COLUMN, "batch_number")},
    **{name: "str" for name in CATEGORICAL_COLUMNS},
}


def _group_filter(group_number: int | None) -> tuple[str, tuple[object, ...]]:
    if group_number is None:
        return "", ()
    if type(group_number) is not int or group_number < 1:
        raise ValueError(f"group_number must be an integer >= 1 or None, got {group_number!r}")
    return " AND group_number = %s", (group_number,)


def load_rows(
    target: DsnOrConnection, split: Split, group_number: int | None = None
) -> pd.DataFrame:
    """Every stored row of one split (of one group, or of all groups), in the order stored.

    Columns: app/covertype.COLUMNS with their original names (integers as int64, the two
    categories as str) plus batch_number. The database streams CSV through COPY, which pandas
    parses in C: no per-row Python.
    """
    # pandas is imported here because the UI's venv, which reads statistics, does not have it.
    import pandas as pd

    if split not in ("train", "holdout"):
        raise ValueError(f"split must be 'train' or 'holdout', got {split!r}")
    where, params = _group_filter(group_number)
    buffer = io.BytesIO()
    with connection(target) as conn, conn.cursor() as cur:
        query = cur.mogrify(
            f"SELECT {_SELECT_LIST}, batch_number FROM covertype_rows"
            f" WHERE is_holdout = %s{where} ORDER BY group_number, id",
            (split == "holdout", *params),
        ).decode()
        cur.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER true)", buffer)
    buffer.seek(0)
    frame = pd.read_csv(buffer, dtype=_DTYPES)
    return frame[list(FRAME_COLUMNS)]


def data_fingerprint(target: DsnOrConnection, group_number: int | None = None) -> str:
    """sha256 (hex) over the sorted row hashes stored so far: equal fingerprints mean the same
    rows, whatever the order or time they arrived in."""
    where, params = _group_filter(group_number)
    with connection(target) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT encode(sha256(coalesce(string_agg(row_hash, ''::bytea ORDER BY row_hash),"
            f" ''::bytea)), 'hex') FROM covertype_rows WHERE true{where}",
            params,
        )
        (fingerprint,) = cur.fetchone()
    return str(fingerprint)


def batch_numbers(target: DsnOrConnection, group_number: int) -> list[int]:
    """The batches of a group that contributed at least one stored row, ascending."""
    where, params = _group_filter(group_number)
    with connection(target) as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT DISTINCT batch_number FROM covertype_rows WHERE true{where}"
            " ORDER BY batch_number",
            params,
        )
        return [row[0] for row in cur.fetchall()]


def missing_batches(seen: Iterable[int]) -> list[int]:
    """The batch numbers below the highest one seen that never arrived: a gap, not progress.

    Counting starts at 1, or at 0 when 0 was seen (some copies of the course's server count
    from 0). The data API moves a group on one batch per request, so a pipeline that fetches
    every interval sees every number; a missing one means the server moved on without us (a
    server that follows the clock, a fetch that was served but never stored) and its rows are
    not in the training data. A restarted group's second pass fills gaps in.
    """
    numbers = set(seen)
    if not numbers:
        return []
    return [n for n in range(min(1, min(numbers)), max(numbers)) if n not in numbers]


def seen_batches(target: DsnOrConnection, group_number: int) -> list[int]:
    """Every batch number the group was ever delivered (batch_status), ascending, whether or
    not its rows were new."""
    where, params = _group_filter(group_number)
    with connection(target) as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT batch_number FROM batch_status WHERE true{where} ORDER BY batch_number",
            params,
        )
        return [row[0] for row in cur.fetchall()]


def batch_statistics(
    target: DsnOrConnection, group_number: int | None = None
) -> list[dict[str, object]]:
    """The batch_statistics view as dicts (one per group and batch), ordered."""
    where, params = _group_filter(group_number)
    with connection(target) as conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            f"SELECT * FROM batch_statistics WHERE true{where} ORDER BY group_number, batch_number",
            params,
        )
        return [dict(row) for row in cur.fetchall()]


def batch_totals(target: DsnOrConnection) -> list[dict[str, object]]:
    """The batch_totals view: one dict per group."""
    with connection(target) as conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT * FROM batch_totals ORDER BY group_number")
        return [dict(row) for row in cur.fetchall()]
