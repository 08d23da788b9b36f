"""Batches as the data API delivered them, kept in batches_db between the DAG's fetch_batch
and store_batch tasks (table batch_deliveries, schema/002_deliveries.sql).

fetch_batch saves the payload and passes on only the delivery's id, so the rows stay out of
Airflow's XCom; app.batch_store.store.store_delivery validates and stores them and deletes
the delivery in the same transaction.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg2.extensions

from app.batch_store.db import Connection, DsnOrConnection, connection


class DeliveryNotFoundError(LookupError):
    """No saved delivery has this id: an earlier try stored it, or it was never saved."""


@dataclass(frozen=True)
class Delivery:
    id: int
    group_number: int
    batch_number: int
    fetched_at: datetime
    rows: list[object]


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


def raw_json(row: object) -> str:
    try:
        return json.dumps(_json_safe(row), allow_nan=False)
    except (ValueError, RecursionError):  # a self-referencing structure, say
        return json.dumps(repr(row))


def save_delivery(
    target: DsnOrConnection,
    group_number: int,
    batch_number: int,
    rows: Sequence[object],
    fetched_at: datetime | None = None,
) -> int:
    """Keep a delivered batch as it came (malformed rows too) and return its id."""
    fetched_at = fetched_at or datetime.now(UTC)
    with connection(target) as conn:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO batch_deliveries"
                " (group_number, batch_number, fetched_at, row_count, payload)"
                " VALUES (%s, %s, %s, %s, %s::jsonb) RETURNING id",
                (group_number, batch_number, fetched_at, len(rows), raw_json(list(rows))),
            )
            delivery_id = int(cur.fetchone()[0])
        conn.commit()
    return delivery_id


def take_delivery(conn: Connection, delivery_id: int) -> Delivery:
    """The saved delivery, locked until the caller's transaction ends (a second store of it
    waits, then finds it gone)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT group_number, batch_number, fetched_at, payload FROM batch_deliveries"
            " WHERE id = %s FOR UPDATE",
            (delivery_id,),
        )
        found = cur.fetchone()
    if found is None:
        conn.rollback()
        raise DeliveryNotFoundError(
            f"delivery {delivery_id} is not in batch_deliveries: an earlier try stored it"
            " (see batch_status), or it was never saved"
        )
    group_number, batch_number, fetched_at, payload = found
    return Delivery(delivery_id, group_number, batch_number, fetched_at, payload)


def delete_delivery(cur: psycopg2.extensions.cursor, delivery_id: int) -> None:
    cur.execute("DELETE FROM batch_deliveries WHERE id = %s", (delivery_id,))


def pending_deliveries(target: DsnOrConnection, group_number: int) -> list[int]:
    """Ids of the group's deliveries saved but not stored yet, oldest first: this run's, and
    those of earlier runs whose store step failed."""
    with connection(target) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id FROM batch_deliveries WHERE group_number = %s ORDER BY id", (group_number,)
        )
        return [int(r[0]) for r in cur.fetchall()]
