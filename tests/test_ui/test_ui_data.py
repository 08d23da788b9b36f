"""The data page with NiceGUI's simulated user, on a real PostgreSQL batches_db read through a
role that may only SELECT the statistics views."""

from __future__ import annotations

from collections import Counter

import psycopg2
import psycopg2.errors
import pytest
from nicegui import ui
from nicegui.testing import User

from app.batch_store.migrations import apply_migrations
from app.covertype import COLUMNS, COVER_TYPES, NUMERIC_RANGES, SOIL_TYPES, WILDERNESS_AREAS
from app.settings import UiSettings
from tests.servers import PostgresServer
from tests.test_ui.conftest import StartUser, reader_dsn
from tests.test_ui.support import SEE_RETRIES, BatchesStore, sample_rows
from ui import batch_progress


def text_of(user: User, marker: str) -> str:
    (element,) = user.find(marker=marker).elements
    return element.text  # type: ignore[attr-defined, no-any-return]


def texts_in(user: User, marker: str) -> str:
    """The text of every label inside the marked element (a card, say), joined."""
    (element,) = user.find(marker=marker).elements
    return " ".join(e.text for e in element.descendants() if isinstance(e, ui.label))


def is_valid(row: list[str]) -> bool:
    if len(row) != len(COLUMNS):
        return False
    values = dict(zip(COLUMNS, row, strict=True))
    in_range = all(low <= int(values[c]) <= high for c, (low, high) in NUMERIC_RANGES.items())
    return (
        in_range
        and values["Wilderness_Area"] in WILDERNESS_AREAS
        and values["Soil_Type"] in SOIL_TYPES
    )


def expected(store: BatchesStore, group: int) -> dict[int, dict[str, int]]:
    """Per batch of `group`: received, rejected and stored rows per class, worked out from
    the deliveries alone (a row is stored once per group, under the first batch that sent it)."""
    seen: set[tuple[str, ...]] = set()
    result: dict[int, dict[str, int]] = {}
    for g, batch, rows in store.deliveries:
        if g != group:
            continue
        counts = result.setdefault(batch, {"received": 0, "rejected": 0, "duplicate": 0})
        counts["received"] += len(rows)
        classes: Counter[int] = Counter()
        for row in rows:
            if not is_valid(row):
                counts["rejected"] += 1
            elif tuple(row) in seen:
                counts["duplicate"] += 1
            else:
                seen.add(tuple(row))
                classes[int(row[-1])] += 1
        for cover in COVER_TYPES:
            counts[f"cover_type_{cover}"] = counts.get(f"cover_type_{cover}", 0) + classes[cover]
    return result


@pytest.mark.asyncio
async def test_batch_progress_from_the_real_database(
    ui_user: StartUser, batches_store: BatchesStore
) -> None:
    user = await ui_user(BATCHES_DB_DSN=batches_store.reader_dsn)
    await user.open("/data")
    await user.should_see(marker="totals", retries=SEE_RETRIES)

    batches = expected(batches_store, group=1)
    received = sum(b["received"] for b in batches.values())
    rejected = sum(b["rejected"] for b in batches.values())
    duplicates = sum(b["duplicate"] for b in batches.values())
    stored = received - rejected - duplicates
    assert (rejected, duplicates) == (3, 50)
    assert text_of(user, "total-batches-received") == "2 (latest: 2)"
    assert text_of(user, "total-rows-received") == f"{received:,}"
    assert text_of(user, "total-rows-stored").startswith(f"{stored:,} (")
    assert text_of(user, "total-duplicates") == f"{duplicates:,}"
    assert text_of(user, "total-rejected-rows") == f"{rejected:,}"
    assert text_of(user, "total-last-update").endswith(" UTC")
    # Batches 1 and 2 and nothing skipped: progress, not a gap.
    await user.should_not_see(marker="batch-gap")

    (chart,) = user.find(marker="class-chart").elements
    assert chart.options["xAxis"]["data"] == ["1", "2"]
    for number, series in zip(sorted(COVER_TYPES), chart.options["series"], strict=True):
        assert series["name"] == COVER_TYPES[number]
        assert series["data"] == [
            batches[1][f"cover_type_{number}"],
            batches[2][f"cover_type_{number}"],
        ]

    (table,) = user.find(marker="batches-table").elements
    assert [(r["batch_number"], r["fetch_count"], r["rows_rejected"]) for r in table.rows] == [
        (1, 1, 0),
        (2, 2, 3),
    ]

    # Group 2 has its own progress.
    (group,) = user.find(marker="group").elements
    assert group.options == {1: "Group 1", 2: "Group 2"}
    group.value = 2
    await user.should_see(marker="total-batches-received")
    assert text_of(user, "total-batches-received") == "1 (latest: 1)"
    assert text_of(user, "total-rows-received") == f"{expected(batches_store, 2)[1]['received']:,}"


@pytest.mark.asyncio
async def test_a_skipped_batch_number_shows_a_warning(
    ui_user: StartUser, batches_dsn: str, postgres: PostgresServer
) -> None:
    """Group 3 got batches 1, 2 and 6 (a data API that moved on while the pipeline was away,
    even one delivery of batch 6 whose rows were all duplicates counts); group 4 got 1 and 2."""
    from app.batch_store.store import store_batch

    apply_migrations(batches_dsn)
    rows = sample_rows()
    for group, batch, delivered in [
        (3, 1, rows[0:300]),
        (3, 2, rows[300:600]),
        (3, 6, rows[0:100]),
        (4, 1, rows[600:700]),
        (4, 2, rows[700:800]),
    ]:
        store_batch(batches_dsn, group, batch, delivered)
    user = await ui_user(BATCHES_DB_DSN=reader_dsn(postgres, batches_dsn))
    await user.open("/data")
    await user.should_see(marker="batch-gap", retries=SEE_RETRIES)
    warning = texts_in(user, "batch-gap")
    assert "Batches 3, 4, 5 of group 3 never arrived (latest received: 6)" in warning
    assert "missing from the training data" in warning
    assert text_of(user, "total-batches-received") == "3 (latest: 6)"
    (group,) = user.find(marker="group").elements
    assert group.options == {3: "Group 3 (gap)", 4: "Group 4"}

    group.value = 4
    await user.should_see("2 (latest: 2)")
    await user.should_not_see(marker="batch-gap")


@pytest.mark.asyncio
async def test_no_batches_yet(ui_user: StartUser, batches_dsn: str) -> None:
    apply_migrations(batches_dsn)
    user = await ui_user(BATCHES_DB_DSN=batches_dsn)
    await user.open("/data")
    await user.should_see(marker="data-info", retries=SEE_RETRIES)
    await user.should_see("No batch has been received yet")


@pytest.mark.asyncio
async def test_a_database_without_the_schema_says_so(ui_user: StartUser, batches_dsn: str) -> None:
    user = await ui_user(BATCHES_DB_DSN=batches_dsn)
    await user.open("/data")
    await user.should_see(marker="data-notice", retries=SEE_RETRIES)
    await user.should_see("the batch store schema is not set up")


@pytest.mark.asyncio
async def test_database_down_shows_a_notice_and_the_rest_keeps_working(
    ui_user: StartUser,
) -> None:
    user = await ui_user()
    await user.open("/data")
    await user.should_see(marker="data-notice", retries=SEE_RETRIES)
    await user.should_see("Batch progress unavailable: Batch database not reachable (")
    # No DSN (and so no password) on the page.
    await user.should_not_see("batches_reader@")
    await user.should_see("MinIO console")
    user.find("Predict").click()
    await user.should_see(marker="predict")


def test_the_ui_connection_cannot_write(batches_store: BatchesStore) -> None:
    """Even with a DSN whose role may write, the UI's own session is read-only."""
    conn = batch_progress._connect(UiSettings(batches_db_dsn=batches_store.dsn))
    try:
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction), conn.cursor() as cur:
            cur.execute("DELETE FROM batch_status")
    finally:
        conn.close()
    progress = batch_progress.load(UiSettings(batches_db_dsn=batches_store.reader_dsn))
    assert progress.groups() == [1, 2]
