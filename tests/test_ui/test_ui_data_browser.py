"""The Data page's gap warning as a user sees it: `python -m ui` (its own process) in Debian's
headless Chromium, on a real PostgreSQL batches_db read through a SELECT-only role. Only the
batch database is up; the page's other backends point at closed ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.batch_store.migrations import apply_migrations
from app.batch_store.store import store_batch
from tests.servers import PostgresServer
from tests.test_ui.conftest import reader_dsn
from tests.test_ui.support import (
    ARTIFACTS,
    closed_url,
    log_in_in_browser,
    login_env,
    sample_rows,
    ui_server,
)
from tests.test_ui.test_ui_browser import CHROMIUM, CHROMIUM_ARGS, WAIT_MS

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (scripts/bootstrap.sh)"
)


@pytest.fixture
def ui_with_a_gap(batches_dsn: str, postgres: PostgresServer, tmp_path: Path) -> Iterator[str]:
    """Group 5 got batches 1, 2 and 6 (3-5 were skipped); `python -m ui` reads it."""
    apply_migrations(batches_dsn)
    rows = sample_rows()
    for batch, delivered in ((1, rows[0:300]), (2, rows[300:600]), (6, rows[600:900])):
        store_batch(batches_dsn, 5, batch, delivered)
    env = {
        "BATCHES_DB_DSN": reader_dsn(postgres, batches_dsn),
        "INFERENCE_API_URL": closed_url(),
        "MLFLOW_TRACKING_URI": closed_url(),
        **login_env(),
    }
    with ui_server(env, tmp_path) as (url, _):
        yield url


def test_the_gap_warning_is_visible_in_chromium(ui_with_a_gap: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    ARTIFACTS.mkdir(exist_ok=True)
    page_errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            log_in_in_browser(page, ui_with_a_gap, "/data")
            warning = page.get_by_text("Batches 3, 4, 5 of group 5 never arrived")
            expect(warning).to_be_visible()
            expect(warning).to_contain_text("(latest received: 6)")
            expect(page.get_by_text("3 (latest: 6)")).to_be_visible()
            # Above the counts, where it is seen first.
            tiles = page.get_by_text("Batches received", exact=True)
            assert warning.bounding_box()["y"] < tiles.bounding_box()["y"]  # type: ignore[index]
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "ui-data-gap.png"), full_page=True)
        finally:
            browser.close()
    assert not page_errors, page_errors
