"""Data: batch progress per group from batches_db (batch_totals and batch_statistics)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from nicegui import run, ui

from app.settings import UiSettings
from ui import batch_progress, charts, layout
from ui.backend import to_backend_error
from ui.batch_progress import BatchProgress

BATCH_COLUMNS: tuple[tuple[str, str], ...] = (
    ("batch_number", "Batch"),
    ("fetch_count", "Fetches"),
    ("rows_received", "Received"),
    ("rows_new", "New"),
    ("rows_duplicate", "Duplicates"),
    ("rows_rejected", "Rejected"),
    ("train_rows", "Train"),
    ("holdout_rows", "Held out"),
    ("last_seen_at", "Last fetched"),
)


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "never" if value is None else str(value)


def _count(value: Any) -> str:
    return f"{int(value):,}" if value is not None else "0"


class DataPage:
    def __init__(self, settings: UiSettings) -> None:
        self.settings = settings
        self.progress: BatchProgress | None = None
        with ui.row().classes("w-full items-center"):
            ui.label("Batch progress").classes("text-h5")
            ui.space()
            ui.button("Refresh", icon="refresh", on_click=self.load).props("flat").mark("refresh")
        self.body = ui.column().classes("w-full gap-4").mark("data")
        with self.body:
            ui.spinner()

    async def load(self) -> None:
        try:
            progress = await run.io_bound(batch_progress.load, self.settings)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a notice
            error = to_backend_error(batch_progress.SERVICE, exc)
            self.body.clear()
            with self.body:
                layout.notice(
                    f"Batch progress unavailable: {error.service} {error.message}.",
                    marker="data-notice",
                )
            return
        self.progress = progress
        self.body.clear()
        with self.body:
            if not progress.totals:
                layout.info(
                    "No batch has been received yet: the pipeline stores one every time it "
                    "fetches from the data API.",
                    marker="data-info",
                )
                return
            groups = progress.groups()
            if len(groups) > 1:
                ui.select(
                    {
                        g: f"Group {g}" + (" (gap)" if progress.missing_of(g) else "")
                        for g in groups
                    },
                    value=groups[0],
                    label="Group",
                    on_change=lambda e: self._render_group(int(e.value)),
                ).mark("group")
            self.group_box = ui.column().classes("w-full gap-4")
        self._render_group(groups[0])

    def _render_group(self, group: int) -> None:
        assert self.progress is not None
        totals = self.progress.totals_of(group)
        batches = self.progress.batches_of(group)
        self.group_box.clear()
        with self.group_box:
            latest = max(int(b["batch_number"]) for b in batches)
            missing = self.progress.missing_of(group)
            if missing:
                _gap_warning(group, missing, latest)
            tiles = (
                ("Batches received", f"{int(totals['batches'])} (latest: {latest})"),
                ("Rows received", _count(totals["rows_received"])),
                (
                    "Rows stored",
                    f"{_count(totals['rows_stored'])} ({_count(totals['train_rows'])} train, "
                    f"{_count(totals['holdout_rows'])} held out)",
                ),
                ("Duplicates", _count(totals["rows_duplicate"])),
                ("Rejected rows", _count(totals["rows_rejected"])),
                ("Last update", _when(totals["last_seen_at"])),
            )
            with ui.row().classes("w-full gap-4").mark("totals"):
                for name, value in tiles:
                    with ui.card().classes("min-w-48"):
                        ui.label(name).classes("text-caption text-grey-8")
                        ui.label(value).classes("text-h6").mark(f"total-{layout.slug(name)}")
            with ui.card().classes("w-full"):
                ui.label("Class distribution per batch (stored rows)").classes("text-h6")
                ui.echart(charts.class_distribution(batches)).classes("w-full h-80").mark(
                    "class-chart"
                )
            ui.table(
                columns=[
                    {"name": key, "label": label, "field": key, "align": "left"}
                    for key, label in BATCH_COLUMNS
                ],
                rows=[
                    {
                        key: _when(b[key]) if key == "last_seen_at" else int(b[key])
                        for key, _ in BATCH_COLUMNS
                    }
                    for b in batches
                ],
                row_key="batch_number",
            ).props("dense flat").classes("w-full").mark("batches-table")


def _gap_warning(group: int, missing: list[int], latest: int) -> None:
    # A skipped batch looks like progress in every count on the page (the latest batch goes
    # up): only this says that rows are missing from what the models are trained on.
    numbers = ", ".join(map(str, missing))
    plural = "es" if len(missing) > 1 else ""
    layout.notice(
        f"Batch{plural} {numbers} of group {group} never arrived (latest received: {latest}): "
        "the data API moved on without the pipeline, so their rows are missing from the "
        "training data. Restarting the group's data generation fetches them again.",
        marker="batch-gap",
    )


async def build(settings: UiSettings) -> DataPage:
    page = DataPage(settings)
    await ui.context.client.connected()
    await page.load()
    return page
