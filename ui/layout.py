"""What every page shares: the header (pages, the platform's other UIs, who is logged in and
the logout button) and the notice a section shows in place of its content when its backend
fails."""

from __future__ import annotations

from nicegui import ui

from app.settings import UiSettings
from ui import auth

PAGES: tuple[tuple[str, str], ...] = (("Predict", "/"), ("Model", "/model"), ("Data", "/data"))


def slug(text: str) -> str:
    """A marker for `text` (NiceGUI markers are space-separated words)."""
    return "-".join(text.lower().replace("(", " ").replace(")", " ").split())


def header(settings: UiSettings, current: str) -> None:
    with ui.header().classes("items-center gap-6 px-6 bg-green-9"):
        ui.label("Forest cover").classes("text-h6 text-white")
        for title, path in PAGES:
            link = ui.link(title, path).classes("text-white no-underline")
            if title == current:
                link.classes("text-weight-bold underline")
        ui.space()
        for title, url in (
            ("Airflow", settings.airflow_url),
            ("MLflow", settings.mlflow_url),
            ("MinIO console", settings.minio_console_url),
        ):
            ui.link(title, url, new_tab=True).classes("text-white").mark(f"external-{slug(title)}")
        ui.label(settings.admin_username).classes("text-white text-caption").mark("logged-in-as")
        ui.button("Log out", icon="logout", on_click=auth.logout).props(
            "flat dense color=white"
        ).mark("logout")


def _banner(message: str, marker: str, card_classes: str, icon: str, color: str) -> ui.card:
    card = ui.card().classes(f"w-full {card_classes}").mark(marker)
    with card, ui.row().classes("items-center no-wrap"):
        ui.icon(icon, color=color).classes("text-2xl")
        ui.label(message).classes("text-body1")
    return card


def notice(message: str, *, marker: str = "notice") -> ui.card:
    """A warning in place of a section whose backend is down: what failed and what still works."""
    return _banner(message, marker, "bg-amber-1 border-l-4 border-amber-8", "warning", "amber-9")


def info(message: str, *, marker: str = "info") -> ui.card:
    """Nothing wrong, nothing to show yet."""
    return _banner(message, marker, "bg-blue-1", "info", "blue-9")


def page_body() -> ui.column:
    return ui.column().classes("w-full max-w-6xl mx-auto p-4 gap-4")
