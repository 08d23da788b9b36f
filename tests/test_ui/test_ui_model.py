"""The model page with NiceGUI's simulated user: the served version from the real inference
API, every registered version from the real MLflow server, the reload button, and each half
standing alone when the other's backend is down."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from nicegui.testing import User

from tests.test_inference.support import ADMIN_HEADERS
from tests.test_ui.conftest import StartUser
from tests.test_ui.support import ALIAS, SEE_RETRIES, Served, SilentServer, closed_url
from ui.model_page import when


def text_of(user: User, marker: str) -> str:
    (element,) = user.find(marker=marker).elements
    return element.text  # type: ignore[attr-defined, no-any-return]


async def eventually(check: Callable[[], bool]) -> None:
    """Wait (0.1 s steps, bounded) until the page shows what `check` looks for."""
    for _ in range(SEE_RETRIES):
        try:
            if check():
                return
        except ValueError:  # the element is being rebuilt
            pass
        await asyncio.sleep(0.1)
    assert check()


def registry(served: Served) -> MlflowClient:
    return MlflowClient(served.tracking_uri, registry_uri=served.tracking_uri)


@pytest.fixture
def production_on_promoted(served: Served) -> Iterator[Served]:
    """Alias production on the promoted version and the API serving it, before and after."""

    def restore() -> None:
        registry(served).set_registered_model_alias(served.name, ALIAS, served.promoted)
        response = httpx.post(f"{served.api_url}/model/reload", headers=ADMIN_HEADERS, timeout=300)
        assert response.status_code == 200, response.text
        assert response.json()["model"]["version"] == served.promoted

    restore()
    yield served
    restore()


@pytest.mark.asyncio
async def test_the_served_version_and_every_registered_version_are_shown(
    ui_user: StartUser,
    production_on_promoted: Served,
    covertype_frames: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    served = production_on_promoted
    user = await ui_user(**served.env())
    await user.open("/model")
    await user.should_see(marker="serving-facts", retries=SEE_RETRIES)
    await user.should_see(marker="versions-chart", retries=SEE_RETRIES)

    promoted = registry(served).get_model_version(served.name, served.promoted)
    rejected = registry(served).get_model_version(served.name, served.rejected)
    train, _ = covertype_frames
    assert text_of(user, "fact-version") == served.promoted
    assert text_of(user, "fact-alias") == ALIAS
    assert text_of(user, "fact-batches-trained-on") == "4"
    assert text_of(user, "fact-rows-trained-on") == f"{int((train['batch_number'] <= 4).sum()):,}"
    assert text_of(user, "fact-trained-registered") == when(
        datetime.fromtimestamp(promoted.creation_timestamp / 1000, UTC)
    )
    assert text_of(user, "metric-accuracy") == f"{float(promoted.tags['accuracy']):.4f}"
    assert text_of(user, "metric-macro_f1") == f"{float(promoted.tags['macro_f1']):.4f}"
    (metrics,) = user.find(marker="metrics").elements
    by_name = {row["metric"]: row["value"] for row in metrics.rows}
    assert by_name["accuracy"] == f"{float(promoted.tags['accuracy']):.4f}"
    assert by_name["macro_f1"] == f"{float(promoted.tags['macro_f1']):.4f}"

    (chart,) = user.find(marker="versions-chart").elements
    labels = chart.options["xAxis"]["data"]
    assert labels == [f"v{served.promoted}\n({ALIAS})", f"v{served.rejected}"]
    accuracy, macro_f1, pins = chart.options["series"]
    assert [bar["value"] for bar in accuracy["data"]] == [
        round(float(promoted.tags["accuracy"]), 4),
        round(float(rejected.tags["accuracy"]), 4),
    ]
    assert [bar["value"] for bar in macro_f1["data"]] == [
        round(float(promoted.tags["macro_f1"]), 4),
        round(float(rejected.tags["macro_f1"]), 4),
    ]
    assert [bar["decision"] for bar in accuracy["data"]] == ["promoted", "not_promoted"]
    assert pins["data"][0][0] == labels[0] and pins["data"][1] is None

    (table,) = user.find(marker="versions-table").elements
    rows = {str(row["version"]): row for row in table.rows}
    assert rows[served.promoted]["decision"] == "promoted"
    assert rows[served.rejected]["decision"] == "not promoted"
    assert rows[served.rejected]["reason"] == rejected.tags["promotion_reason"]
    assert rows[served.promoted]["batches"] == "4"
    assert rows[served.rejected]["batches"] == "10"


@pytest.mark.asyncio
async def test_reload_loads_what_the_alias_points_to_now(
    ui_user: StartUser, production_on_promoted: Served
) -> None:
    served = production_on_promoted
    user = await ui_user(**served.env())
    await user.open("/model")
    await user.should_see(marker="serving-facts", retries=SEE_RETRIES)
    assert text_of(user, "fact-version") == served.promoted

    # Someone moves the alias by hand; the API (polling hourly here) has not noticed yet.
    registry(served).set_registered_model_alias(served.name, ALIAS, served.rejected)
    user.find(marker="reload").click()
    await user.should_see(f"Loaded version {served.rejected}", retries=SEE_RETRIES)
    # The page reads /model again after the reload.
    await eventually(lambda: text_of(user, "fact-version") == served.rejected)
    assert served.serving_version() == served.rejected

    user.find(marker="reload").click()
    await user.should_see(f"Already serving version {served.rejected}", retries=SEE_RETRIES)


@pytest.mark.asyncio
async def test_mlflow_down_leaves_the_served_model_on_the_page(
    ui_user: StartUser, production_on_promoted: Served
) -> None:
    served = production_on_promoted
    mlflow = closed_url()
    user = await ui_user(**{**served.env(), "MLFLOW_TRACKING_URI": mlflow})
    await user.open("/model")
    await user.should_see(marker="versions-notice", retries=SEE_RETRIES)
    await user.should_see(
        f"Version history unavailable: MLflow not reachable at {mlflow} (connection refused)."
    )
    await user.should_see(marker="serving-facts", retries=SEE_RETRIES)
    assert text_of(user, "fact-version") == served.promoted
    assert text_of(user, "fact-trained-registered") == "unknown (MLflow unavailable)"
    await user.should_not_see(marker="versions-chart")


@pytest.mark.asyncio
async def test_a_hung_mlflow_does_not_hold_up_the_served_model(
    ui_user: StartUser, production_on_promoted: Served
) -> None:
    served = production_on_promoted
    with SilentServer() as mlflow:
        user = await ui_user(
            **{**served.env(), "MLFLOW_TRACKING_URI": mlflow.url, "UI_HTTP_READ_TIMEOUT": "60"}
        )
        await user.open("/model")
        await user.should_see(marker="serving-facts", retries=SEE_RETRIES)
        assert text_of(user, "fact-version") == served.promoted
        assert text_of(user, "fact-trained-registered") == "asking MLflow..."
        await user.should_not_see(marker="versions-notice")
    await user.should_see(marker="versions-notice", retries=SEE_RETRIES)
    await user.should_see(f"MLflow not reachable at {mlflow.url} (connection failed)")
    assert text_of(user, "fact-trained-registered") == "unknown (MLflow unavailable)"


@pytest.mark.asyncio
async def test_inference_api_down_leaves_the_version_history_on_the_page(
    ui_user: StartUser, served: Served
) -> None:
    api = closed_url()
    user = await ui_user(**{**served.env(), "INFERENCE_API_URL": api})
    await user.open("/model")
    await user.should_see(marker="serving-notice", retries=SEE_RETRIES)
    await user.should_see(
        f"Cannot tell which model is served: Inference API not reachable at {api} "
        "(connection refused)."
    )
    await user.should_see(marker="versions-chart", retries=SEE_RETRIES)
    await user.should_not_see(marker="serving-facts")

    user.find(marker="reload").click()
    await user.should_see("Reload failed: Inference API not reachable", retries=SEE_RETRIES)


@pytest.mark.asyncio
async def test_a_model_not_registered_yet_is_said_plainly(
    ui_user: StartUser, served: Served
) -> None:
    user = await ui_user(**{**served.env(), "MLFLOW_REGISTERED_MODEL": f"{served.name}-not-yet"})
    await user.open("/model")
    await user.should_see(marker="versions-info", retries=SEE_RETRIES)
    await user.should_see(f"No version of {served.name}-not-yet is registered yet")
    await user.should_not_see(marker="versions-notice")


@pytest.mark.asyncio
async def test_a_server_that_is_not_mlflow_is_not_taken_for_an_empty_registry(
    ui_user: StartUser, served: Served
) -> None:
    # The inference API answers 404 to MLflow's paths: not "no model registered yet".
    user = await ui_user(**{**served.env(), "MLFLOW_TRACKING_URI": served.api_url})
    await user.open("/model")
    await user.should_see(marker="versions-notice", retries=SEE_RETRIES)
    await user.should_see("Version history unavailable: MLflow answered HTTP 404")
    await user.should_not_see(marker="versions-info")


@pytest.mark.asyncio
async def test_an_unreadable_answer_is_a_notice_and_a_logged_traceback(
    ui_user: StartUser, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend answering JSON of the wrong shape: the page says so in a sentence; the
    traceback goes to the log only."""
    body = json.dumps({"registered_model": {"aliases": [{"alias": ALIAS}]}}).encode()

    class Garbage(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        user = await ui_user(MLFLOW_TRACKING_URI=url)
        await user.open("/model")
        await user.should_see(marker="versions-notice", retries=SEE_RETRIES)
        await user.should_see(
            "Version history unavailable: MLflow gave an answer the UI could not read"
        )
        await user.should_not_see("Traceback")
    finally:
        server.shutdown()
        server.server_close()
    logged = [r for r in caplog.get_records("call") if r.levelno == logging.ERROR]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert logged[0].exc_info[0] is KeyError
    caplog.clear()  # expected: the fixture fails a test on any other ERROR


@pytest.mark.asyncio
async def test_everything_down_still_renders_the_page(ui_user: StartUser) -> None:
    user = await ui_user()
    await user.open("/model")
    await user.should_see(marker="serving-notice", retries=SEE_RETRIES)
    await user.should_see(marker="versions-notice", retries=SEE_RETRIES)
    for link in ("Airflow", "MLflow", "MinIO console"):
        await user.should_see(link)
    (minio,) = user.find(marker="external-minio-console").elements
    assert minio.props["href"] == "http://minio.test:9001"
