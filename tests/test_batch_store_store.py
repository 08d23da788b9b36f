"""Ingestion into a real PostgreSQL: a full batch of the real dataset, duplicates, rejected
rows, all-or-nothing on failure, the split, batch_status and the statistics views."""

from __future__ import annotations

import csv
import gzip
import json
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache

import psycopg2
import pytest

from app.batch_store import (
    DeliveryNotFoundError,
    StoreError,
    StoreReport,
    apply_migrations,
    save_delivery,
    store_batch,
    store_delivery,
)
from app.batch_store.read import batch_statistics, batch_totals
from app.batch_store.validation import is_holdout, row_hash
from app.covertype import COLUMNS
from tests.conftest import FULL_DATASET

BATCH = 5810  # rows per delivered batch of the full dataset
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@cache
def dataset_rows(n: int) -> tuple[tuple[str, ...], ...]:
    """The first n rows of the shipped dataset, as the data API delivers them (strings)."""
    with gzip.open(FULL_DATASET, "rt", newline="") as f:
        reader = csv.reader(f)
        assert tuple(next(reader)) == COLUMNS
        return tuple(tuple(row) for _, row in zip(range(n), reader, strict=False))


def batch(i: int) -> list[list[str]]:
    """Delivered batch i (1-based): a 5,810-row slice of the real data."""
    return [list(r) for r in dataset_rows(BATCH * 10)[(i - 1) * BATCH : i * BATCH]]


def with_value(row: list[str], column: str, value: object) -> list[object]:
    bad: list[object] = list(row)
    bad[COLUMNS.index(column)] = value
    return bad


@pytest.fixture
def store(batches_dsn: str) -> str:
    apply_migrations(batches_dsn)
    return batches_dsn


def query(dsn: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def counts(dsn: str) -> tuple[int, int, int]:
    (row,) = query(
        dsn,
        "SELECT (SELECT count(*) FROM covertype_rows), (SELECT count(*) FROM rejected_rows),"
        " (SELECT count(*) FROM batch_status)",
    )
    return row


def status(dsn: str, group: int, batch_number: int) -> dict[str, object]:
    rows = query(
        dsn,
        "SELECT fetch_count, rows_received, rows_new, rows_duplicate, rows_rejected,"
        " first_seen_at, last_seen_at FROM batch_status"
        " WHERE group_number = %s AND batch_number = %s",
        (group, batch_number),
    )
    keys = ("fetches", "received", "new", "duplicate", "rejected", "first_seen", "last_seen")
    return dict(zip(keys, rows[0], strict=True))


def test_a_full_real_batch_is_stored(store: str) -> None:
    rows = batch(1)
    report = store_batch(store, 1, 1, rows, fetched_at=T0)
    assert (report.received, report.new, report.duplicate, report.rejected) == (BATCH, BATCH, 0, 0)
    assert report.reasons == {}
    assert report.new > 0
    assert report.as_dict()["fetched_at"] == T0.isoformat()
    json.dumps(report.as_dict())  # fit for an Airflow XCom
    assert counts(store) == (BATCH, 0, 1)
    stored = query(
        store,
        f"SELECT {', '.join(c.lower() for c in COLUMNS)}, group_number, batch_number, fetched_at"
        " FROM covertype_rows ORDER BY id",
    )
    assert [[str(v) for v in r[:13]] for r in stored] == rows  # values and order kept
    assert {r[13:] for r in stored} == {(1, 1, T0)}
    assert status(store, 1, 1) == {
        "fetches": 1,
        "received": BATCH,
        "new": BATCH,
        "duplicate": 0,
        "rejected": 0,
        "first_seen": T0,
        "last_seen": T0,
    }


def test_the_same_batch_twice_stores_nothing_twice(store: str) -> None:
    rows = batch(1)
    store_batch(store, 1, 1, rows, fetched_at=T0)
    again = store_batch(store, 1, 1, rows, fetched_at=T0 + timedelta(minutes=5))
    assert (again.received, again.new, again.duplicate, again.rejected) == (BATCH, 0, BATCH, 0)
    assert again.new == 0
    assert counts(store) == (BATCH, 0, 1)
    assert status(store, 1, 1) == {
        "fetches": 2,
        "received": 2 * BATCH,
        "new": BATCH,
        "duplicate": BATCH,
        "rejected": 0,
        "first_seen": T0,
        "last_seen": T0 + timedelta(minutes=5),
    }
    # Every stored row still belongs to the fetch that first delivered it.
    assert query(store, "SELECT DISTINCT fetched_at FROM covertype_rows") == [(T0,)]


def test_duplicates_inside_one_payload_and_across_batches(store: str) -> None:
    first = batch(1)
    payload = first[:100] + first[:10] + first[50:60]
    report = store_batch(store, 1, 1, payload, fetched_at=T0)
    assert (report.received, report.new, report.duplicate) == (120, 100, 20)
    # A later batch that repeats part of an earlier one (the course server's quirk).
    mixed = first[90:100] + batch(2)[:40]
    report2 = store_batch(store, 1, 2, mixed, fetched_at=T0 + timedelta(minutes=5))
    assert (report2.new, report2.duplicate) == (40, 10)
    assert query(
        store, "SELECT batch_number, count(*) FROM covertype_rows GROUP BY 1 ORDER BY 1"
    ) == [(1, 100), (2, 40)]


def test_groups_are_separate_namespaces_with_the_same_split(store: str) -> None:
    rows = batch(1)[:500]
    store_batch(store, 1, 1, rows, fetched_at=T0)
    report = store_batch(store, 2, 1, list(reversed(rows)), fetched_at=T0)
    assert (report.new, report.duplicate) == (500, 0)
    pairs = query(
        store,
        "SELECT a.is_holdout, b.is_holdout FROM covertype_rows a"
        " JOIN covertype_rows b USING (row_hash) WHERE a.group_number = 1 AND b.group_number = 2",
    )
    assert len(pairs) == 500
    assert all(a == b for a, b in pairs)


@pytest.mark.parametrize(
    ("make_bad", "reason", "kind"),
    [
        (lambda r: r[:12], "row has 12 fields, expected 13", "wrong field count"),
        (lambda r: "x", "row is a str, expected a list of 13", "not a list"),
        (
            lambda r: with_value(r, "Aspect", "400"),
            "Aspect: 400 is outside 0..360",
            "Aspect: out of range",
        ),
        (
            lambda r: with_value(r, "Slope", "1.5"),
            "Slope: '1.5' is not an integer",
            "Slope: not an integer",
        ),
        (
            lambda r: with_value(r, "Elevation", ""),
            "Elevation: '' is not an integer",
            "Elevation: not an integer",
        ),
        (
            lambda r: with_value(r, "Wilderness_Area", "Nowhere"),
            "Wilderness_Area: 'Nowhere' is not one of Rawah, Neota, Commanche, Cache",
            "Wilderness_Area: unknown value",
        ),
        (
            lambda r: with_value(r, "Soil_Type", "C9999"),
            "Soil_Type: 'C9999' is not one of the 40 ELU codes (C2702 ... C8776)",
            "Soil_Type: unknown value",
        ),
        (
            lambda r: with_value(r, "Cover_Type", "9"),
            "Cover_Type: 9 is outside 1..7",
            "Cover_Type: out of range",
        ),
    ],
    ids=["fields", "not-a-list", "range", "float", "empty", "wilderness", "soil", "cover"],
)
def test_rejected_rows_are_kept_with_their_reason(
    store: str, make_bad: Callable[[list[str]], object], reason: str, kind: str
) -> None:
    rows: list[object] = list(batch(1)[:200])
    bad = make_bad(batch(1)[7])
    rows[7] = bad
    rows[150] = bad
    report = store_batch(store, 3, 4, rows, fetched_at=T0)
    assert (report.received, report.new, report.duplicate, report.rejected) == (200, 198, 0, 2)
    assert report.reasons == {kind: 2}
    kept = query(
        store,
        "SELECT group_number, batch_number, fetched_at, row_index, raw_row, reason"
        " FROM rejected_rows ORDER BY row_index",
    )
    assert kept == [(3, 4, T0, 7, bad, reason), (3, 4, T0, 150, bad, reason)]
    assert status(store, 3, 4)["rejected"] == 2
    assert counts(store) == (198, 2, 1)


def test_odd_raw_values_are_stored_without_failing_the_batch(store: str) -> None:
    good = batch(1)[:10]
    odd = [
        ["\x00nul", "\ud800", float("nan"), {"a": [1, None]}, *good[0][4:]],
        {"not": "a row"},
        None,
        [1] * 13,
    ]
    report = store_batch(store, 1, 1, good + odd, fetched_at=T0)
    assert (report.new, report.rejected) == (10, 4)
    kept = [r[0] for r in query(store, "SELECT raw_row FROM rejected_rows ORDER BY row_index")]
    assert kept[0][:4] == ["\ufffdnul", "?", "nan", {"a": [1, None]}]
    assert kept[1:] == [{"not": "a row"}, None, [1] * 13]


def test_an_empty_payload_is_recorded(store: str) -> None:
    report = store_batch(store, 1, 1, [], fetched_at=T0)
    assert (report.received, report.new, report.rejected) == (0, 0, 0)
    assert status(store, 1, 1)["fetches"] == 1
    assert counts(store) == (0, 0, 1)


def add_trigger(dsn: str, table: str, when: str, level: str, body: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE SEQUENCE IF NOT EXISTS injected_seq")
        cur.execute(
            f"CREATE FUNCTION injected_failure() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN {body}; RETURN NEW; END $$"
        )
        cur.execute(
            f"CREATE TRIGGER injected {when} ON {table} FOR EACH {level}"
            " EXECUTE FUNCTION injected_failure()"
        )
    conn.close()


def fail_batch_status(dsn: str) -> None:
    """Every write to batch_status, the last step of storing a batch, fails."""
    add_trigger(
        dsn, "batch_status", "BEFORE INSERT OR UPDATE", "ROW",
        "RAISE EXCEPTION 'injected in batch_status'",
    )  # fmt: skip


def payload_with_rejects() -> list[object]:
    rows: list[object] = list(batch(2))
    rows[3] = rows[3][:5]
    return rows


def test_failure_midway_through_the_rows_stores_nothing(store: str) -> None:
    store_batch(store, 1, 1, batch(1), fetched_at=T0)
    before = (counts(store), status(store, 1, 1))
    # The 3,000th row of the insert fails inside PostgreSQL, after COPY succeeded.
    add_trigger(
        store,
        "covertype_rows",
        "BEFORE INSERT",
        "ROW",
        "IF nextval('injected_seq') >= 3000 THEN RAISE EXCEPTION 'injected at row 3000'; END IF",
    )
    with pytest.raises(StoreError, match="batch 2 of group 1 failed .*injected at row 3000"):
        store_batch(store, 1, 2, payload_with_rejects(), fetched_at=T0)
    assert (counts(store), status(store, 1, 1)) == before
    assert query(store, "SELECT count(*) FROM covertype_rows WHERE batch_number = 2") == [(0,)]


def test_failure_at_the_last_step_stores_nothing(store: str) -> None:
    # batch_status is written last: rows and rejected rows are in by then, and must go.
    fail_batch_status(store)
    with pytest.raises(StoreError, match="injected in batch_status"):
        store_batch(store, 1, 2, payload_with_rejects(), fetched_at=T0)
    assert counts(store) == (0, 0, 0)


def test_connection_killed_midway_stores_nothing(store: str) -> None:
    # The server ends the session itself right after the rejected rows are written.
    add_trigger(
        store,
        "rejected_rows",
        "AFTER INSERT",
        "STATEMENT",
        "PERFORM pg_terminate_backend(pg_backend_pid())",
    )
    with pytest.raises(StoreError, match="rolled back.*server closed the connection"):
        store_batch(store, 1, 2, payload_with_rejects(), fetched_at=T0)
    assert counts(store) == (0, 0, 0)


def test_missing_schema_says_how_to_fix_it(batches_dsn: str) -> None:
    with pytest.raises(StoreError, match="python -m app.batch_store migrate"):
        store_batch(batches_dsn, 1, 1, batch(1)[:5])


def test_arguments_are_checked(store: str) -> None:
    with pytest.raises(ValueError, match="group_number"):
        store_batch(store, 0, 1, [])
    with pytest.raises(ValueError, match="batch_number"):
        store_batch(store, 1, -1, [])
    with pytest.raises(ValueError, match="timezone"):
        store_batch(store, 1, 1, [], fetched_at=datetime(2026, 1, 1))


def test_a_caller_connection_is_used_and_left_open(store: str) -> None:
    conn = psycopg2.connect(store)
    try:
        report = store_batch(conn, 1, 1, batch(1)[:20], fetched_at=T0)
        assert report.new == 20
        assert not conn.closed
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM covertype_rows")
            assert cur.fetchone() == (20,)
        conn.rollback()
        conn.autocommit = True
        with pytest.raises(ValueError, match="autocommit"):
            store_batch(conn, 1, 1, batch(1)[:20])
    finally:
        conn.close()
    assert counts(store) == (20, 0, 1)


def test_split_is_deterministic_and_about_a_fifth(store: str) -> None:
    rows = batch(1)
    store_batch(store, 1, 1, rows, fetched_at=T0)
    stored = query(
        store,
        f"SELECT {', '.join(c.lower() for c in COLUMNS)}, is_holdout FROM covertype_rows",
    )
    expected = {tuple(r): is_holdout(row_hash(r)) for r in rows}
    assert {tuple(str(v) for v in s[:13]): s[13] for s in stored} == expected
    share = sum(expected.values()) / len(expected)
    assert 0.18 < share < 0.22
    # Stored again in another order and batch (another group), every row keeps its split.
    store_batch(store, 2, 7, list(reversed(rows)), fetched_at=T0)
    assert query(
        store,
        "SELECT count(*) FROM covertype_rows a JOIN covertype_rows b USING (row_hash)"
        " WHERE a.group_number = 1 AND b.group_number = 2 AND a.is_holdout <> b.is_holdout",
    ) == [(0,)]


def test_batch_statistics_and_totals(store: str) -> None:
    first, second = batch(1), batch(2)
    store_batch(store, 1, 1, first, fetched_at=T0)
    store_batch(store, 1, 1, first[:1000], fetched_at=T0 + timedelta(minutes=1))
    with_bad: list[object] = list(second[:3000]) + [second[0][:3], ["x"] * 13]
    store_batch(store, 1, 2, with_bad, fetched_at=T0 + timedelta(minutes=5))

    stats = batch_statistics(store, 1)
    assert [(s["group_number"], s["batch_number"]) for s in stats] == [(1, 1), (1, 2)]
    for s, rows in ((stats[0], first), (stats[1], second[:3000])):
        holdout = sum(is_holdout(row_hash(r)) for r in rows)
        classes = Counter(int(r[-1]) for r in rows)
        assert s["rows_stored"] == s["rows_new"] == len(rows)
        assert s["holdout_rows"] == holdout
        assert s["train_rows"] == len(rows) - holdout
        assert [s[f"cover_type_{c}"] for c in range(1, 8)] == [classes[c] for c in range(1, 8)]
    assert (stats[0]["fetch_count"], stats[0]["rows_received"], stats[0]["rows_duplicate"]) == (
        2,
        BATCH + 1000,
        1000,
    )
    assert (stats[1]["rows_received"], stats[1]["rows_rejected"]) == (3002, 2)
    assert stats[0]["first_seen_at"] == T0
    assert stats[0]["last_seen_at"] == T0 + timedelta(minutes=1)

    (totals,) = batch_totals(store)
    assert totals["group_number"] == 1
    assert totals["batches"] == 2
    for key in ("rows_received", "rows_new", "rows_duplicate", "rows_rejected", "rows_stored"):
        assert totals[key] == stats[0][key] + stats[1][key], key
    for c in range(1, 8):
        assert (
            totals[f"cover_type_{c}"] == stats[0][f"cover_type_{c}"] + stats[1][f"cover_type_{c}"]
        )
    assert totals["train_rows"] + totals["holdout_rows"] == BATCH + 3000
    assert totals["first_seen_at"] == T0
    assert totals["last_seen_at"] == T0 + timedelta(minutes=5)
    assert batch_statistics(store, 2) == []


def test_concurrent_ingests_of_overlapping_payloads_do_not_deadlock(store: str) -> None:
    # Opposite insertion orders of the same rows deadlock two plain transactions; the per-group
    # advisory lock serialises them, and every row is counted new exactly once.
    rows = batch(1)[:3000]
    payloads = [rows, list(reversed(rows))]
    barrier = threading.Barrier(2)
    reports: list[StoreReport] = []
    errors: list[BaseException] = []

    def run(payload: list[list[str]]) -> None:
        try:
            barrier.wait()
            reports.append(store_batch(store, 1, 1, payload, fetched_at=T0))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sorted((r.new, r.duplicate) for r in reports) == [(0, 3000), (3000, 0)]
    assert counts(store) == (3000, 0, 1)
    assert status(store, 1, 1)["fetches"] == 2


# --- deliveries: the DAG's fetch_batch saves a batch, store_batch stores it by id ---------


def deliveries(dsn: str) -> list[tuple]:
    return query(dsn, "SELECT id, group_number, batch_number, row_count FROM batch_deliveries")


def test_a_saved_delivery_is_stored_once_and_then_gone(store: str) -> None:
    payload = payload_with_rejects()
    delivery = save_delivery(store, 3, 2, payload, fetched_at=T0)
    assert deliveries(store) == [(delivery, 3, 2, len(payload))]
    report = store_delivery(store, delivery)
    assert (report.group_number, report.batch_number, report.fetched_at) == (3, 2, T0)
    # The rows came back from jsonb as delivered: the one truncated row is rejected.
    assert (report.received, report.rejected) == (len(payload), 1)
    assert report.new + report.duplicate == len(payload) - 1
    assert counts(store)[1] == 1
    assert deliveries(store) == []
    with pytest.raises(DeliveryNotFoundError, match=f"delivery {delivery} is not in"):
        store_delivery(store, delivery)


def test_a_failed_store_keeps_the_delivery_for_the_next_try(store: str) -> None:
    delivery = save_delivery(store, 1, 2, payload_with_rejects(), fetched_at=T0)
    fail_batch_status(store)
    with pytest.raises(StoreError, match="injected in batch_status"):
        store_delivery(store, delivery)
    assert counts(store) == (0, 0, 0)
    assert [d[0] for d in deliveries(store)] == [delivery]
    conn = psycopg2.connect(store)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP TRIGGER injected ON batch_status")
    conn.close()
    assert store_delivery(store, delivery).new > 0
    assert deliveries(store) == []
