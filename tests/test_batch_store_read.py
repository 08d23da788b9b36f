"""The readers the pipeline uses: split frames, the data fingerprint, the batch numbers."""

from __future__ import annotations

import csv
import gzip
from datetime import UTC, datetime
from functools import cache

import pandas as pd
import psycopg2
import pytest

from app.batch_store import (
    apply_migrations,
    batch_numbers,
    data_fingerprint,
    load_rows,
    missing_batches,
    seen_batches,
    store_batch,
)
from app.batch_store.validation import is_holdout, row_hash
from app.covertype import CATEGORICAL_COLUMNS, COLUMNS, NUMERIC_COLUMNS
from tests.conftest import FULL_DATASET
from tests.servers import PostgresServer

BATCH = 5810
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@cache
def dataset_rows(n: int) -> tuple[tuple[str, ...], ...]:
    with gzip.open(FULL_DATASET, "rt", newline="") as f:
        reader = csv.reader(f)
        assert tuple(next(reader)) == COLUMNS
        return tuple(tuple(row) for _, row in zip(range(n), reader, strict=False))


def batch(i: int, size: int = BATCH) -> list[list[str]]:
    return [list(r) for r in dataset_rows(BATCH * 3)[(i - 1) * BATCH : (i - 1) * BATCH + size]]


def expected_frame(batches: dict[int, list[list[str]]], holdout: bool) -> pd.DataFrame:
    records = [
        [*row, number]
        for number, rows in batches.items()
        for row in rows
        if is_holdout(row_hash(row)) == holdout
    ]
    frame = pd.DataFrame(records, columns=[*COLUMNS, "batch_number"])
    for column in [*NUMERIC_COLUMNS, "Cover_Type", "batch_number"]:
        frame[column] = frame[column].astype("int64")
    for column in CATEGORICAL_COLUMNS:
        frame[column] = frame[column].astype("str")
    return frame


@pytest.fixture
def store(batches_dsn: str) -> str:
    apply_migrations(batches_dsn)
    return batches_dsn


def test_train_and_holdout_frames(store: str) -> None:
    batches = {1: batch(1), 2: batch(2)}
    for number, rows in batches.items():
        store_batch(store, 1, number, rows, fetched_at=T0)
    train = load_rows(store, "train")
    holdout = load_rows(store, "holdout", group_number=1)

    assert list(train.columns) == [*COLUMNS, "batch_number"]
    for column in [*NUMERIC_COLUMNS, "Cover_Type", "batch_number"]:
        assert train[column].dtype == "int64", column
    for column in CATEGORICAL_COLUMNS:
        assert pd.api.types.is_string_dtype(train[column]), column
    pd.testing.assert_frame_equal(train, expected_frame(batches, holdout=False))
    pd.testing.assert_frame_equal(holdout, expected_frame(batches, holdout=True))
    assert len(train) + len(holdout) == 2 * BATCH
    assert 0.18 < len(holdout) / (2 * BATCH) < 0.22
    # No row is in both splits.
    assert train.merge(holdout, on=list(COLUMNS)).empty


def test_held_out_set_only_grows(store: str) -> None:
    store_batch(store, 1, 1, batch(1), fetched_at=T0)
    first = load_rows(store, "holdout", 1)
    store_batch(store, 1, 2, batch(2), fetched_at=T0)
    store_batch(store, 1, 3, batch(1)[:100] + batch(3, 200), fetched_at=T0)
    later = load_rows(store, "holdout", 1)
    pd.testing.assert_frame_equal(later.iloc[: len(first)], first)
    assert len(later) > len(first)


def test_group_filter_and_empty_store(store: str) -> None:
    empty = load_rows(store, "train")
    assert list(empty.columns) == [*COLUMNS, "batch_number"]
    assert empty.empty
    store_batch(store, 1, 1, batch(1, 300), fetched_at=T0)
    store_batch(store, 2, 5, batch(2, 200), fetched_at=T0)
    assert set(load_rows(store, "train", 2)["batch_number"]) == {5}
    both = len(load_rows(store, "train")) + len(load_rows(store, "holdout"))
    assert both == 500
    assert load_rows(store, "holdout", 3).empty


def test_bad_arguments(store: str) -> None:
    with pytest.raises(ValueError, match="split"):
        load_rows(store, "test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group_number"):
        load_rows(store, "train", 0)


def test_fingerprint_depends_on_the_rows_only(store: str, postgres: PostgresServer) -> None:
    empty = data_fingerprint(store)
    rows = batch(1, 1000)
    store_batch(store, 1, 1, rows[:600], fetched_at=T0)
    store_batch(store, 1, 2, rows[600:], fetched_at=T0)
    full = data_fingerprint(store, 1)
    assert full != empty
    assert len(full) == 64 and int(full, 16) >= 0

    # The same rows in another database, in another order and batching: same fingerprint.
    other = postgres.create_database("batches_fingerprint_other")
    apply_migrations(other)
    store_batch(other, 1, 1, list(reversed(rows)), fetched_at=T0)
    assert data_fingerprint(other, 1) == full
    # Duplicates change nothing, one more row changes it.
    store_batch(other, 1, 2, rows[:10], fetched_at=T0)
    assert data_fingerprint(other, 1) == full
    store_batch(other, 1, 3, batch(2, 1), fetched_at=T0)
    assert data_fingerprint(other, 1) != full
    # Per group.
    assert data_fingerprint(store, 2) == empty
    store_batch(store, 2, 1, rows, fetched_at=T0)
    assert data_fingerprint(store, 2) == full


def test_batch_numbers(store: str) -> None:
    assert batch_numbers(store, 1) == []
    store_batch(store, 1, 2, batch(2, 50), fetched_at=T0)
    store_batch(store, 1, 1, batch(1, 50), fetched_at=T0)
    store_batch(store, 1, 3, batch(1, 50), fetched_at=T0)  # all duplicates: nothing stored
    store_batch(store, 2, 9, batch(1, 5), fetched_at=T0)
    assert batch_numbers(store, 1) == [1, 2]
    assert batch_numbers(store, 2) == [9]


@pytest.mark.parametrize(
    ("seen", "missing"),
    [
        ([], []),
        ([1], []),
        ([1, 2, 3], []),
        ([1, 2, 6], [3, 4, 5]),  # a client away for a while, served by a clock-driven server
        ([6, 2, 1], [3, 4, 5]),
        ([3, 4], [1, 2]),  # the first batches went to someone else
        ([0, 1, 2], []),  # a server that counts from 0
        ([0, 2], [1]),
        ([1, 1, 2], []),
    ],
)
def test_missing_batches(seen: list[int], missing: list[int]) -> None:
    assert missing_batches(seen) == missing


def test_seen_batches_counts_every_delivery(store: str) -> None:
    assert seen_batches(store, 1) == []
    store_batch(store, 1, 1, batch(1, 50), fetched_at=T0)
    store_batch(store, 1, 2, batch(1, 50), fetched_at=T0)  # nothing new, but it was seen
    store_batch(store, 1, 6, batch(2, 50), fetched_at=T0)
    store_batch(store, 1, 6, batch(2, 60), fetched_at=T0)
    store_batch(store, 2, 4, [["not", "a", "row"]], fetched_at=T0)  # every row rejected
    assert seen_batches(store, 1) == [1, 2, 6]
    assert missing_batches(seen_batches(store, 1)) == [3, 4, 5]
    assert seen_batches(store, 2) == [4]


def test_readers_accept_an_open_connection(store: str) -> None:
    store_batch(store, 1, 1, batch(1, 100), fetched_at=T0)
    conn = psycopg2.connect(store)
    try:
        total = len(load_rows(conn, "train")) + len(load_rows(conn, "holdout"))
        assert total == 100
        assert batch_numbers(conn, 1) == [1]
        assert data_fingerprint(conn) == data_fingerprint(store)
        assert not conn.closed
    finally:
        conn.close()
