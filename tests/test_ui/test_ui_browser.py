"""The front end as the unit runs it (`python -m ui`, its own process) in a real headless
Chromium (Debian's `chromium`, driven by Playwright), against the real inference API, MLflow and
PostgreSQL: fill the form, predict, see the result. Screenshots go to test-artifacts/."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_ui.support import (
    ARTIFACTS,
    BatchesStore,
    Served,
    log_in_in_browser,
    login_env,
    ui_server,
)
from ui import examples
from ui.feature_form import label_of

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Playwright's own bound on each wait (ms): generous for a busy 2-core machine.
WAIT_MS = 60_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (scripts/bootstrap.sh)"
)


@pytest.fixture
def ui_process(
    served: Served, batches_store: BatchesStore, tmp_path: Path
) -> Iterator[tuple[str, Path]]:
    """`python -m ui` with the unit's kind of environment; yields (base URL, its log)."""
    env = {**served.env(), "BATCHES_DB_DSN": batches_store.reader_dsn, **login_env()}
    with ui_server(env, tmp_path) as started:
        yield started


def test_fill_the_form_predict_and_see_the_result_in_chromium(
    ui_process: tuple[str, Path], served: Served
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, _ = ui_process
    expect.set_options(timeout=WAIT_MS)
    ARTIFACTS.mkdir(exist_ok=True)
    # A real row of each kind of field; not the class most rows have.
    example = next(e for e in examples.EXAMPLES if examples.actual_cover_type(e) == 3)
    record = examples.features(example)
    page_errors: list[str] = []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            log_in_in_browser(page, url)

            elevation = page.get_by_label("Elevation", exact=True)
            expect(elevation).not_to_have_value("")  # prefilled with a real row

            # Out of range: the field says so and keeps what was typed (no silent clamping),
            # and Predict sends nothing.
            sent_before = served.predict_requests()
            elevation.fill("6000")
            elevation.press("Tab")
            expect(page.get_by_text("Must be between 0 and 5000")).to_be_visible()
            expect(elevation).to_have_value("6000")
            page.get_by_role("button", name="Predict").click()
            expect(page.get_by_text("Fix the highlighted fields: nothing was sent")).to_be_visible()
            assert served.predict_requests() == sent_before

            for column, value in record.items():
                if isinstance(value, int):
                    page.get_by_label(label_of(column), exact=True).fill(str(value))
            page.get_by_label(label_of("Wilderness_Area"), exact=True).click()
            page.get_by_role("option", name=str(record["Wilderness_Area"]), exact=True).click()
            soil = page.get_by_label(label_of("Soil_Type"), exact=True)
            soil.click()
            soil.fill(str(record["Soil_Type"]))
            page.get_by_role("option", name=f"{record['Soil_Type']} (Soil type").first.click()
            expect(page.get_by_text("Must be between 0 and 5000")).to_have_count(0)

            page.get_by_role("button", name="Predict").click()
            answer = served.predict(record)
            prediction = answer["predictions"][0]  # type: ignore[index]
            version = f"Model {served.name} version {answer['model_version']} (production)"
            expect(page.get_by_text(version)).to_be_visible()
            expect(page.get_by_text(prediction["cover_type_name"], exact=True)).to_be_visible()
            expect(page.get_by_text(f"cover type {prediction['cover_type']}")).to_be_visible()
            verdict = "right" if prediction["cover_type"] == 3 else "wrong"
            expect(
                page.get_by_text(f"This real row is Ponderosa Pine: the model is {verdict}.")
            ).to_be_visible()
            # The probability chart drew on its canvas.
            expect(page.locator(".nicegui-echart canvas").first).to_be_visible()
            assert served.predict_requests() == sent_before + 2  # the page's and ours
            # For the picture: the earlier warning gone, no focused field, no hovered button,
            # the chart's entry animation over.
            expect(page.get_by_text("Fix the highlighted fields")).to_be_hidden()
            page.evaluate("document.activeElement && document.activeElement.blur()")
            page.mouse.move(0, 0)
            page.wait_for_timeout(800)
            page.screenshot(path=str(ARTIFACTS / "ui-predict.png"), full_page=True)

            page.get_by_role("link", name="Model", exact=True).click()
            expect(page.get_by_text("Serving now")).to_be_visible()
            expect(page.get_by_text("Batches trained on")).to_be_visible()
            history = page.locator(".q-table").filter(has_text="Decision")
            versions = history.locator("tbody tr")
            expect(versions).to_have_count(2)
            expect(versions.filter(has_text="not promoted")).to_have_count(1)
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "ui-model.png"), full_page=True)

            page.get_by_role("link", name="Data", exact=True).click()
            expect(page.get_by_text("Rejected rows")).to_be_visible()
            expect(page.get_by_text("2 (latest: 2)")).to_be_visible()
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "ui-data.png"), full_page=True)

            page.get_by_role("button", name="Log out").click()
            expect(page).to_have_url(re.compile(r"/login"))
            page.goto(f"{url}/model")
            expect(page).to_have_url(f"{url}/login?redirect_to=%2Fmodel")
            expect(page.get_by_text("Serving now")).to_have_count(0)
            page.screenshot(path=str(ARTIFACTS / "ui-login.png"), full_page=True)
        finally:
            browser.close()
    assert not page_errors, page_errors
    assert (ARTIFACTS / "ui-predict.png").stat().st_size > 10_000


def test_chromium_is_the_debian_package() -> None:
    """The browser tests run Debian's chromium, never a downloaded one."""
    assert shutil.which("chromium") == str(CHROMIUM)
