"""The NiceGUI app: three pages, each a function of the settings, behind a login (ui/auth.py),
and a health route."""

from __future__ import annotations

from nicegui import app, ui

from app.settings import UiSettings
from ui import auth, data_page, layout, model_page, predict_page

TITLE = "Forest cover"


def register_pages(settings: UiSettings) -> None:
    """Register the routes on NiceGUI's app (once per process, or per simulated test app)."""
    auth.check_settings(settings)
    auth.register(settings, TITLE)

    @ui.page("/", title=f"Predict · {TITLE}")
    def predict() -> None:
        layout.header(settings, "Predict")
        with layout.page_body():
            predict_page.build(settings)

    @ui.page("/model", title=f"Model · {TITLE}")
    async def model() -> None:
        layout.header(settings, "Model")
        with layout.page_body():
            await model_page.build(settings)

    @ui.page("/data", title=f"Data · {TITLE}")
    async def data() -> None:
        layout.header(settings, "Data")
        with layout.page_body():
            await data_page.build(settings)

    @app.get("/health")
    def health() -> dict[str, str]:
        # The process answers; the backends' state is on the pages.
        return {"status": "alive"}


def run(settings: UiSettings) -> None:
    register_pages(settings)
    ui.run(
        host=settings.host,
        port=settings.port,
        title=TITLE,
        favicon="🌲",
        reload=False,
        show=False,
        storage_secret=settings.storage_secret,
        # Lax: the cookie still comes along when a person follows a link to the UI.
        session_middleware_kwargs={"https_only": settings.secure_cookie, "same_site": "lax"},
        uvicorn_logging_level="warning",
    )
