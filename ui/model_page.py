"""Model: what the inference API serves now (with a reload button), and every registered
version's held-out scores from MLflow. Each half stands alone when the other's backend is down."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from nicegui import run, ui

from app.settings import UiSettings
from ui import auth, charts, inference_client, layout, registry_client
from ui.backend import as_backend_error, to_backend_error
from ui.inference_client import InferenceClient
from ui.registry_client import Registry, RegistryClient, VersionSummary

# Shown large, and first in the metrics table; the rest follow by name.
LEADING_METRICS = {"accuracy": "Held-out accuracy", "macro_f1": "Held-out macro-F1"}


def when(value: datetime | str | None) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return "unknown" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


class ModelPage:
    def __init__(self, settings: UiSettings) -> None:
        self.settings = settings
        self.inference = InferenceClient(settings)
        self.registry = RegistryClient(settings)
        # What the last load got from MLflow (None: still asking), and the served version with
        # the label that shows when it was trained (None: nothing served).
        self._registry: Any = None
        self._served: tuple[str | None, ui.label] | None = None
        with ui.row().classes("w-full items-center"):
            ui.label("Model").classes("text-h5")
            ui.space()
            ui.button("Refresh", icon="refresh", on_click=self.load).props("flat").mark("refresh")
        with ui.card().classes("w-full"):
            with ui.row().classes("w-full items-center"):
                ui.label("Serving now").classes("text-h6")
                ui.space()
                self.reload_button = ui.button(
                    "Reload model", icon="sync", on_click=self.reload
                ).mark("reload")
            self.serving = ui.column().classes("w-full").mark("serving")
        with ui.card().classes("w-full"):
            ui.label(f"Registered versions of {settings.model_name}").classes("text-h6")
            self.versions = ui.column().classes("w-full").mark("versions")
        for box in (self.serving, self.versions):
            with box:
                ui.spinner()

    async def load(self) -> None:
        """Ask both backends at once; each half is drawn as soon as its own answer is in, so a
        hung MLflow does not hold up the served model, nor the other way round."""
        self._registry, self._served = None, None
        await asyncio.gather(self._load_serving(), self._load_versions())

    async def _load_serving(self) -> None:
        info = await _outcome(self.inference.model_info)
        self._render_serving(info)
        self._show_trained()

    async def _load_versions(self) -> None:
        self._registry = await _outcome(self.registry.registry)
        self._render_versions(self._registry)
        self._show_trained()

    def _show_trained(self) -> None:
        """When the served version was trained: its registration time, from MLflow."""
        if self._served is None:
            return
        version, label = self._served
        if self._registry is None:
            label.text = "asking MLflow..."
        elif isinstance(self._registry, Registry):
            found = next((v for v in self._registry.versions if str(v.version) == version), None)
            label.text = when(found.created_at) if found else "unknown"
        else:
            label.text = "unknown (MLflow unavailable)"

    async def reload(self) -> None:
        # The page is only served after a login, but the button outlives it (a logout in
        # another tab, a new password): the admin token is sent only for a session that is
        # logged in now.
        if not auth.is_authenticated(self.settings):
            ui.notify("Log in again to reload the model: nothing was sent", type="warning")
            ui.navigate.to(f"{auth.LOGIN_PATH}?redirect_to=/model")
            return
        self.reload_button.props("loading")
        try:
            answer = await run.io_bound(self.inference.reload)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a notice
            error = to_backend_error(inference_client.SERVICE, exc)
            ui.notify(
                f"Reload failed: {error.service} {error.message}", type="warning", multi_line=True
            )
            return
        finally:
            self.reload_button.props(remove="loading")
        version = answer.get("model", {}).get("version")
        if answer.get("outcome") == "loaded":
            ui.notify(f"Loaded version {version}", type="positive")
        else:
            ui.notify(f"Already serving version {version}", type="info")
        await self.load()

    def _render_serving(self, info: Any) -> None:
        self.serving.clear()
        with self.serving:
            if error := as_backend_error(inference_client.SERVICE, info):
                layout.notice(
                    f"Cannot tell which model is served: {error.service} {error.message}.",
                    marker="serving-notice",
                )
                return
            version = info.get("version")
            self._served = (None if version is None else str(version), _serving_facts(info))

    def _render_versions(self, registry: Any) -> None:
        self.versions.clear()
        with self.versions:
            if error := as_backend_error(registry_client.SERVICE, registry):
                layout.notice(
                    f"Version history unavailable: {error.service} {error.message}.",
                    marker="versions-notice",
                )
                return
            if not registry.exists or not registry.versions:
                layout.info(
                    f"No version of {registry.name} is registered yet: the pipeline registers "
                    "one after its first training run.",
                    marker="versions-info",
                )
                return
            _versions_chart(registry, self.settings.model_alias)


async def _outcome(call: Callable[[], Any]) -> Any:
    """The call's result, or the exception it raised (drawn as a notice by the caller)."""
    try:
        return await run.io_bound(call)
    except Exception as exc:  # noqa: BLE001
        return exc


def _serving_facts(info: dict[str, Any]) -> ui.label:
    """The facts grid; returns the label that says when the version was trained."""
    if not info.get("loaded"):
        reason = info.get("last_error") or "the API is still loading it"
        layout.notice(
            f"No model is loaded: {reason}. Predictions answer 503 until one is.",
            marker="serving-notice",
        )
    version = info.get("version")
    facts = [
        ("Model", info.get("name")),
        ("Version", version or "none"),
        ("Alias", info.get("alias")),
        ("Loaded from", info.get("loaded_from")),
        ("Backend", info.get("backend")),
        ("Trained (registered)", "unknown"),
        ("Loaded at", when(info.get("loaded_at"))),
        ("Batches trained on", _number(info.get("trained_batches"))),
        ("Rows trained on", _number(info.get("trained_rows"))),
        ("Run", info.get("run_id")),
    ]
    if info.get("loaded") and info.get("last_error"):
        facts.append(("Last error", f"{info['last_error']} (still serving the loaded version)"))
    labels: dict[str, ui.label] = {}
    with ui.grid(columns=2).classes("gap-x-8 gap-y-1").mark("serving-facts"):
        for name, value in facts:
            ui.label(name).classes("text-weight-medium")
            labels[name] = ui.label("unknown" if value is None else str(value)).mark(
                f"fact-{layout.slug(name)}"
            )
    metrics = info.get("metrics") or {}
    if metrics:
        with ui.row().classes("gap-8 pt-2"):
            for key, title in LEADING_METRICS.items():
                with ui.column().classes("gap-0"):
                    ui.label(title).classes("text-caption text-grey-8")
                    ui.label(_number(metrics.get(key))).classes("text-h5").mark(f"metric-{key}")
        ordered = [k for k in LEADING_METRICS if k in metrics] + sorted(
            k for k in metrics if k not in LEADING_METRICS
        )
        with ui.expansion("Every metric of the training run").classes("w-full max-w-md"):
            ui.table(
                columns=[
                    {"name": "metric", "label": "Metric", "field": "metric", "align": "left"},
                    {"name": "value", "label": "Value", "field": "value", "align": "right"},
                ],
                rows=[{"metric": k, "value": _number(float(metrics[k]))} for k in ordered],
                row_key="metric",
            ).props("dense flat").classes("w-full").mark("metrics")
    return labels["Trained (registered)"]


def _versions_chart(registry: Registry, alias: str) -> None:
    ui.echart(charts.version_scores(registry.versions, alias)).classes("w-full h-80").mark(
        "versions-chart"
    )
    ui.label(
        "Scores on the held-out rows of each version's training run. Green: promoted to "
        f"{alias} when registered; grey: not promoted (the table says why)."
    ).classes("text-caption text-grey-8")
    ui.table(
        columns=[
            {"name": "version", "label": "Version", "field": "version", "align": "left"},
            {"name": "aliases", "label": "Aliases", "field": "aliases", "align": "left"},
            {"name": "created", "label": "Registered", "field": "created", "align": "left"},
            {"name": "accuracy", "label": "Accuracy", "field": "accuracy"},
            {"name": "macro_f1", "label": "Macro-F1", "field": "macro_f1"},
            {"name": "batches", "label": "Batches", "field": "batches"},
            {"name": "rows", "label": "Train rows", "field": "rows"},
            {"name": "decision", "label": "Decision", "field": "decision", "align": "left"},
            {"name": "reason", "label": "Why", "field": "reason", "align": "left"},
        ],
        rows=[_version_row(v) for v in reversed(registry.versions)],
        row_key="version",
    ).props("dense flat wrap-cells").classes("w-full").mark("versions-table")


def _version_row(v: VersionSummary) -> dict[str, Any]:
    return {
        "version": v.version,
        "aliases": ", ".join(v.aliases),
        "created": when(v.created_at),
        "accuracy": _number(v.accuracy),
        "macro_f1": _number(v.macro_f1),
        "batches": _number(v.batches),
        "rows": _number(v.train_rows),
        "decision": (v.decision or "unknown").replace("_", " "),
        "reason": v.reason or "",
    }


async def build(settings: UiSettings) -> ModelPage:
    page = ModelPage(settings)
    # The skeleton goes to the browser first; the backends' answers fill it in.
    await ui.context.client.connected()
    await page.load()
    return page
