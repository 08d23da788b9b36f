"""The predict page with NiceGUI's simulated user, against the real inference API process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nicegui import ui
from nicegui.testing import User

from app.covertype import CATEGORICAL_COLUMNS, FEATURE_COLUMNS, NUMERIC_COLUMNS
from tests.test_ui.conftest import StartUser
from tests.test_ui.support import SEE_RETRIES, Served, SilentServer, closed_url
from ui import examples
from ui.backend import RejectedInput
from ui.charts import CLASS_NAMES
from ui.inference_client import InferenceClient


def field(user: User, column: str) -> ui.element:
    (element,) = user.find(marker=column).elements
    return element


def form_values(user: User) -> dict[str, object]:
    return {column: field(user, column).value for column in FEATURE_COLUMNS}


def as_record(values: dict[str, object]) -> dict[str, int | str]:
    return {
        **{c: int(values[c]) for c in NUMERIC_COLUMNS},  # type: ignore[call-overload]
        **{c: str(values[c]) for c in CATEGORICAL_COLUMNS},
    }


def matching_example(values: dict[str, object]) -> dict[str, int | str] | None:
    return next(
        (e for e in examples.EXAMPLES if all(values[c] == e[c] for c in FEATURE_COLUMNS)), None
    )


@pytest.mark.asyncio
async def test_the_form_is_prefilled_with_a_real_example_and_can_draw_another(
    ui_user: StartUser,
) -> None:
    user = await ui_user()
    await user.open("/")
    first = form_values(user)
    example = matching_example(first)
    assert example is not None, first
    (source,) = user.find(marker="example-source").elements
    actual = CLASS_NAMES[examples.actual_cover_type(example) - 1]
    assert source.text == f"A real row from the dataset ({actual})"
    for column in FEATURE_COLUMNS:
        assert not field(user, column).error

    user.find(marker="random-example").click()
    second = form_values(user)
    assert matching_example(second) is not None and second != first
    # Ranges of the data contract are on the inputs (stepper and the browser's hints).
    assert (field(user, "Aspect").props["min"], field(user, "Aspect").props["max"]) == (0, 360)


@pytest.mark.asyncio
async def test_invalid_input_is_shown_at_the_field_and_nothing_is_sent(
    ui_user: StartUser, served: Served
) -> None:
    user = await ui_user(**served.env())
    await user.open("/")
    sent_before = served.predict_requests()

    user.find(marker="Elevation").clear().type("6000")
    user.find(marker="Slope").clear().type("12.5")
    user.find(marker="Hillshade_9am").clear()
    user.find(marker="Soil_Type").clear()
    assert field(user, "Elevation").error == "Must be between 0 and 5000"
    assert field(user, "Elevation").props["error-message"] == "Must be between 0 and 5000"
    assert field(user, "Slope").error == "Must be a whole number"
    assert field(user, "Hillshade_9am").error == "Required"
    assert field(user, "Soil_Type").error == "Required"
    assert not field(user, "Aspect").error

    user.find(marker="predict").click()
    await user.should_see("Fix the highlighted fields: nothing was sent")
    await user.should_not_see(marker="predicted-class")
    assert served.predict_requests() == sent_before

    # Corrected, the same form is sent.
    user.find(marker="Elevation").clear().type("3000")
    user.find(marker="Slope").clear().type("12")
    user.find(marker="Hillshade_9am").clear().type("200")
    field(user, "Soil_Type").value = "C7745"
    assert not any(field(user, c).error for c in FEATURE_COLUMNS)
    user.find(marker="predict").click()
    await user.should_see(marker="predicted-class", retries=SEE_RETRIES)
    assert served.predict_requests() == sent_before + 1
    # No longer the real row: the page does not claim to know its true class.
    (source,) = user.find(marker="example-source").elements
    assert source.text == "Edited by hand"
    await user.should_not_see(marker="verdict")


@pytest.mark.asyncio
async def test_a_prediction_shows_the_class_its_probabilities_and_the_model_version(
    ui_user: StartUser, served: Served
) -> None:
    user = await ui_user(**served.env())
    await user.open("/")
    example = matching_example(form_values(user))
    assert example is not None
    record = as_record(form_values(user))
    sent_before = served.predict_requests()

    user.find(marker="predict").click()
    await user.should_see(marker="predicted-class", retries=SEE_RETRIES)
    assert served.predict_requests() == sent_before + 1

    # What the API itself answers for the same record, asked directly.
    answer = served.predict(record)
    expected = answer["predictions"][0]  # type: ignore[index]
    assert answer["model_version"] == served.serving_version()
    (shown,) = user.find(marker="predicted-class").elements
    assert shown.text == expected["cover_type_name"]
    (version,) = user.find(marker="model-version").elements
    assert f"version {answer['model_version']} (production)" in version.text
    assert served.name in version.text
    (chart,) = user.find(marker="probabilities").elements
    bars = chart.options["series"][0]["data"]
    assert chart.options["yAxis"]["data"] == list(CLASS_NAMES)
    for name, bar in zip(CLASS_NAMES, bars, strict=True):
        assert bar["value"] == pytest.approx(expected["probabilities"][name], abs=1e-4)
    actual = examples.actual_cover_type(example)
    verdict = "right" if CLASS_NAMES[actual - 1] == expected["cover_type_name"] else "wrong"
    await user.should_see(f"This real row is {CLASS_NAMES[actual - 1]}: the model is {verdict}.")


@pytest.mark.asyncio
async def test_inference_api_down_shows_a_notice_and_the_page_keeps_working(
    ui_user: StartUser,
) -> None:
    api = closed_url()
    user = await ui_user(INFERENCE_API_URL=api)
    await user.open("/")
    user.find(marker="predict").click()
    await user.should_see(marker="predict-notice", retries=SEE_RETRIES)
    await user.should_see(
        f"Prediction unavailable: Inference API not reachable at {api} (connection refused)."
    )
    # The form and the header still work.
    user.find(marker="random-example").click()
    assert matching_example(form_values(user)) is not None
    await user.should_see("MinIO console")
    user.find("Data").click()
    await user.should_see("Batch progress")


@pytest.mark.asyncio
async def test_a_prediction_in_flight_does_not_freeze_the_page(ui_user: StartUser) -> None:
    """The call runs off the event loop: while the API hangs, the page still reacts; when the
    API drops the connection, the notice says so."""
    with SilentServer() as api:
        user = await ui_user(INFERENCE_API_URL=api.url, UI_HTTP_READ_TIMEOUT="30")
        await user.open("/")
        before = form_values(user)
        user.find(marker="predict").click()
        await asyncio.sleep(0.3)  # the handler is now waiting on the API
        user.find(marker="random-example").click()
        assert form_values(user) != before
        await user.should_not_see(marker="predict-notice")
        (button,) = user.find(marker="predict").elements
        assert "loading" in button.props
    # The API went away mid-call.
    await user.should_see(marker="predict-notice", retries=SEE_RETRIES)
    await user.should_see(f"Inference API not reachable at {api.url} (connection failed)")
    assert "loading" not in button.props


@pytest.mark.asyncio
async def test_a_hung_api_costs_the_read_timeout_and_a_notice(ui_user: StartUser) -> None:
    with SilentServer() as api:
        user = await ui_user(INFERENCE_API_URL=api.url, UI_HTTP_READ_TIMEOUT="1")
        await user.open("/")
        user.find(marker="predict").click()
        await user.should_see(marker="predict-notice", retries=SEE_RETRIES)
        await user.should_see(f"Inference API not reachable at {api.url} (no answer in time)")


@pytest.mark.asyncio
async def test_an_api_without_a_model_says_so(
    ui_user: StartUser, served: Served, tmp_path: Path
) -> None:
    from tests.test_inference.support import api_process

    env = {
        "MLFLOW_TRACKING_URI": served.tracking_uri,
        "MLFLOW_REGISTERED_MODEL": f"{served.name}-never-registered",
        "INFERENCE_POLL_SECONDS": "3600",
    }
    with api_process(env, tmp_path / "api.log") as url:
        user = await ui_user(INFERENCE_API_URL=url)
        await user.open("/")
        user.find(marker="predict").click()
        await user.should_see(marker="predict-notice", retries=SEE_RETRIES)
        await user.should_see("Prediction unavailable: Inference API has no model to serve yet")


def test_a_rejected_field_comes_back_named(served: Served) -> None:
    """If the API refuses a record (it checks the same contract), the client knows the field
    and reason, for the page to show at that field."""
    from app.settings import UiSettings

    client = InferenceClient(UiSettings(inference_api_url=served.api_url))
    record = as_record(dict(examples.features(examples.EXAMPLES[0])))
    record["Soil_Type"] = "C0000"
    with pytest.raises(RejectedInput) as caught:
        client.predict(record)
    assert caught.value.field == "Soil_Type"
    assert "C0000" in (caught.value.field_message or "")
