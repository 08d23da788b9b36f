"""Predict: the feature form, prefilled with a real row, and the model's answer."""

from __future__ import annotations

import random
from typing import Any

from nicegui import run, ui

from app.covertype import COVER_TYPES
from app.settings import UiSettings
from ui import charts, examples, layout
from ui.backend import RejectedInput, to_backend_error
from ui.feature_form import FeatureForm, label_of
from ui.inference_client import SERVICE, InferenceClient

NOT_SENT = "Fix the highlighted fields: nothing was sent"


class PredictPage:
    def __init__(self, settings: UiSettings) -> None:
        self.client = InferenceClient(settings)
        # Per page, not global: each visitor gets their own sequence of examples.
        self.rng = random.Random()
        self.example: dict[str, int | str] = examples.random_example(self.rng)

        with ui.card().classes("w-full"):
            ui.label("Features").classes("text-h6")
            self.form = FeatureForm(on_change=self._describe_source)
            with ui.row().classes("items-center gap-4 pt-2"):
                self.predict_button = ui.button("Predict", icon="park", on_click=self.predict)
                self.predict_button.mark("predict")
                ui.button(
                    "Random real example", icon="shuffle", on_click=self.random_example
                ).props("outline").mark("random-example")
                self.example_label = ui.label().classes("text-caption").mark("example-source")
        self.result = ui.column().classes("w-full").mark("result")
        self._fill(self.example)

    def _fill(self, example: dict[str, int | str]) -> None:
        self.example = example
        self.form.fill(examples.features(example))
        self._describe_source()

    def _describe_source(self) -> None:
        # Typed by hand or drawn, a form that holds a bundled row is that row.
        real = examples.matching(self.form.raw_values())
        if real is not None:
            actual = COVER_TYPES[examples.actual_cover_type(real)]
            self.example_label.text = f"A real row from the dataset ({actual})"
        else:
            self.example_label.text = "Edited by hand"

    def random_example(self) -> None:
        self._fill(examples.random_example(self.rng, exclude=self.example))

    async def predict(self) -> None:
        if not self.form.validate():
            fields = ", ".join(label_of(c) for c in self.form.invalid_fields())
            ui.notify(f"{NOT_SENT} ({fields})", type="warning")
            return
        record = self.form.values()
        self.predict_button.props("loading")
        try:
            answer = await run.io_bound(self.client.predict, record)
        except RejectedInput as exc:
            if (
                exc.field
                and exc.field_message
                and self.form.show_error(exc.field, exc.field_message)
            ):
                ui.notify(f"The inference API refused {label_of(exc.field)}", type="warning")
            else:
                self._show_notice(f"The inference API refused the input: {exc.detail}")
            return
        except Exception as exc:  # noqa: BLE001 - every failure becomes a notice
            error = to_backend_error(SERVICE, exc)
            self._show_notice(f"Prediction unavailable: {error.service} {error.message}.")
            return
        finally:
            self.predict_button.props(remove="loading")
        self._show_result(answer, record)

    def _show_notice(self, message: str) -> None:
        self.result.clear()
        with self.result:
            layout.notice(message, marker="predict-notice")

    def _show_result(self, answer: dict[str, Any], record: dict[str, int | str]) -> None:
        prediction = answer["predictions"][0]
        name = prediction["cover_type_name"]
        alias = f" ({answer['model_alias']})" if answer.get("model_alias") else ""
        self.result.clear()
        with self.result, ui.card().classes("w-full"):
            ui.label("Prediction").classes("text-h6")
            with ui.row().classes("items-baseline gap-4"):
                ui.label(name).classes("text-h4 text-green-9").mark("predicted-class")
                ui.label(f"cover type {prediction['cover_type']}").classes("text-subtitle1")
            ui.label(
                f"Model {answer['model_name']} version {answer['model_version']}{alias},"
                f" {answer['backend']} backend"
            ).classes("text-body2").mark("model-version")
            real = examples.matching(dict(record))
            if real is not None:
                actual = COVER_TYPES[examples.actual_cover_type(real)]
                verdict = "right" if actual == name else "wrong"
                ui.label(f"This real row is {actual}: the model is {verdict}.").mark("verdict")
            ui.echart(charts.probabilities(prediction["probabilities"], name)).classes(
                "w-full h-72"
            ).mark("probabilities")


def build(settings: UiSettings) -> PredictPage:
    return PredictPage(settings)
