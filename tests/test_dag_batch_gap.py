"""A skipped batch number, seen by the real DAG (dag.test() on real Airflow, PostgreSQL and
MLflow): the run warns in its task log, normal progress does not, and batch_status keeps the
numbers the Data page reads the gap from.

The data API is a scripted server that moves on by itself, as a clock-driven server (ours
before issue 9) did to a client that was away.
"""

from __future__ import annotations

import logging
import re

import pytest

from app.batch_store import (
    DeliveryNotFoundError,
    apply_migrations,
    missing_batches,
    save_delivery,
    seen_batches,
    store_batch,
)
from app.pipeline import steps
from tests.dag_harness import run_dag, sample_rows
from tests.test_data_client import Reply, ScriptedServer

GROUP = 6
GAP_WARNING = re.compile(r"WARNING.*batch gap in group 6", re.IGNORECASE)


def test_a_skipped_batch_number_warns_in_the_run_and_progress_does_not(
    pipeline_env: dict[str, str],
    scripted_api: ScriptedServer,
) -> None:
    dsn = pipeline_env["BATCHES_DB_DSN"]
    # Batches 1 and 2 came in earlier runs.
    apply_migrations(dsn)
    store_batch(dsn, GROUP, 1, sample_rows(0, 300))
    store_batch(dsn, GROUP, 2, sample_rows(300, 600))
    scripted_api.replies = [
        Reply(body={"group_number": GROUP, "batch_number": 3, "data": sample_rows(600, 900)}),
        # The pipeline was away; the server did not wait for it.
        Reply(body={"group_number": GROUP, "batch_number": 7, "data": sample_rows(900, 1200)}),
    ]
    env = {**pipeline_env, "DATA_API_URL": scripted_api.url, "DATA_API_GROUP": str(GROUP)}

    progress = run_dag(env)
    assert progress["state"] == "success", progress["log"][-6000:]
    assert not GAP_WARNING.search(str(progress["log"])), "normal progress must not warn"
    assert missing_batches(seen_batches(dsn, GROUP)) == []

    gap = run_dag(env)
    assert gap["state"] == "success", gap["log"][-6000:]
    # A warning, not a failure: the new rows are stored and trained on.
    assert gap["tasks"]["train_candidate"] == "success"
    assert gap["tasks"]["pick_champion"] == "success"
    log = str(gap["log"])
    match = GAP_WARNING.search(log)
    assert match, log[-6000:]
    line = log[match.start() : log.find("\n", match.start())]
    assert "batch 7 stored, but batches 4, 5, 6 were never received" in line
    assert "seen: 1, 2, 3, 7" in line
    assert seen_batches(dsn, GROUP) == [1, 2, 3, 7]
    assert missing_batches(seen_batches(dsn, GROUP)) == [4, 5, 6]


def store_config(batches_dsn: str) -> steps.PipelineConfig:
    """A migrated batches_db, and nothing else the store step could call."""
    apply_migrations(batches_dsn)
    return steps.PipelineConfig(
        batches_dsn=batches_dsn,
        data_api_url="http://127.0.0.1:9",
        group_number=GROUP,
        mlflow_tracking_uri="http://127.0.0.1:9",
        inference_api_url=None,
    )


def test_the_store_step_reports_the_gap_and_warns_only_then(
    batches_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = store_config(batches_dsn)

    def store(batch: int, start: int) -> tuple[dict[str, object], list[str]]:
        caplog.clear()
        rows = sample_rows(start, start + 100)
        fetched = {
            "status": "new",
            "group_number": GROUP,
            "batch_number": batch,
            "rows": len(rows),
            "delivery_id": save_delivery(batches_dsn, GROUP, batch, rows),
        }
        with caplog.at_level(logging.INFO, logger="app.pipeline.steps"):
            summary = steps.store_batch(config, fetched)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        return summary, warnings

    for batch in (1, 2):
        summary, warnings = store(batch, 100 * batch)
        assert summary["missing_batches"] == [] and warnings == []
    summary, warnings = store(5, 500)
    assert summary["missing_batches"] == [3, 4]
    assert warnings == [
        "batch gap in group 6: batch 5 stored, but batches 3, 4 were never received (seen: 1, 2,"
        " 5), so their rows are not in the training data; the data API moved on without this"
        " pipeline (GET /restart_data_generation?group_number=6 fetches the group again from"
        " batch 1)"
    ]
    # After a restart of the group's data generation its second pass fills the gap in.
    for batch in (1, 2, 3):
        summary, _ = store(batch, 100 * batch)
    summary, warnings = store(4, 400)
    assert summary["missing_batches"] == [] and warnings == []


def test_the_store_step_stores_a_delivery_an_earlier_run_left_behind_first(
    batches_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = store_config(batches_dsn)
    # An earlier run fetched batch 1, then its store step failed: the delivery stayed.
    left = save_delivery(batches_dsn, GROUP, 1, sample_rows(0, 100))
    rows = sample_rows(100, 200)
    fetched = {
        "status": "new",
        "group_number": GROUP,
        "batch_number": 2,
        "rows": len(rows),
        "delivery_id": save_delivery(batches_dsn, GROUP, 2, rows),
    }
    with caplog.at_level(logging.INFO, logger="app.pipeline.steps"):
        summary = steps.store_batch(config, fetched)
    assert summary["batch_number"] == 2 and summary["missing_batches"] == []
    assert seen_batches(batches_dsn, GROUP) == [1, 2]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        f"stored delivery {left} (batch 1, 100 new rows), left behind by an earlier run"
    ]
    # A second try of the same task finds its delivery stored and says so.
    with pytest.raises(DeliveryNotFoundError, match="an earlier try of this task stored it"):
        steps.store_batch(config, fetched)
