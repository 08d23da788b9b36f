"""The login in front of every page (NiceGUI's documented pattern: a middleware that sends
every request without a logged-in session to /login, and a login page).

The session is NiceGUI's `app.storage.user`: kept on the server, found through the id in the
session cookie that Starlette signs with UI_STORAGE_SECRET, so a cookie that was altered or
signed with another key is a new, anonymous session. A login records a fingerprint of the
credentials it matched: a new password (re-provisioning) logs every session out.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from urllib.parse import urlencode

from fastapi.responses import RedirectResponse
from nicegui import app, ui
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from app.settings import SettingsError, UiSettings

log = logging.getLogger(__name__)

LOGIN_PATH = "/login"
# What answers without a login: the login page itself, the health check (the unit's and the
# proxy's; it says only "alive") and NiceGUI's own assets and websocket (/_nicegui/...,
# /_nicegui_ws/...), which the login page needs. A websocket reaches only the page it was
# opened for, and a page is only built for a logged-in session (or is the login page).
OPEN_PATHS = frozenset({LOGIN_PATH, "/health"})
OPEN_PREFIX = "/_nicegui"
# Each wrong password costs this long, one attempt at a time for the whole process: at most
# one guess a second, whoever sends them.
FAILED_LOGIN_DELAY_SECONDS = 1.0
MIN_PASSWORD_LENGTH = 12


def check_settings(settings: UiSettings) -> None:
    """Refuse to start without what the login needs (secure by default: no page is served
    to anyone anonymous, and there is no default password)."""
    if not settings.storage_secret:
        raise SettingsError(
            "UI_STORAGE_SECRET is not set: it signs the session cookie the login needs"
        )
    if not settings.admin_password:
        raise SettingsError(
            "UI_ADMIN_PASSWORD is not set: the UI has no default password and serves no page "
            "without a login (provisioning generates one into the secrets folder's ui-admin)"
        )
    if len(settings.admin_password) < MIN_PASSWORD_LENGTH:
        raise SettingsError(
            f"UI_ADMIN_PASSWORD must have at least {MIN_PASSWORD_LENGTH} characters"
        )
    if not settings.admin_username:
        raise SettingsError("UI_ADMIN_USERNAME must not be empty")


def _digest(text: str) -> bytes:
    # Compared as digests: equal length whatever was typed, so the time taken says nothing
    # about the password's length.
    return hashlib.sha256(text.encode()).digest()


def credentials_match(settings: UiSettings, username: str, password: str) -> bool:
    assert settings.admin_password is not None  # check_settings ran at start
    user_ok = hmac.compare_digest(_digest(username), _digest(settings.admin_username))
    password_ok = hmac.compare_digest(_digest(password), _digest(settings.admin_password))
    return user_ok and password_ok


def _fingerprint(settings: UiSettings) -> str:
    """What a session records at login: changes with the user, the password and the secret."""
    assert settings.storage_secret is not None and settings.admin_password is not None
    message = f"{settings.admin_username}\0{settings.admin_password}".encode()
    return hmac.new(settings.storage_secret.encode(), message, hashlib.sha256).hexdigest()


def is_authenticated(settings: UiSettings) -> bool:
    """Whether the current request's session (a page's, or the page's whose event runs) has
    logged in with the credentials in force now."""
    user = app.storage.user
    recorded = user.get("credentials")
    return (
        user.get("authenticated") is True
        and isinstance(recorded, str)
        and hmac.compare_digest(recorded, _fingerprint(settings))
    )


def safe_target(redirect_to: str) -> str:
    """Where to go after the login: a path on this site only (no open redirect)."""
    if (
        not redirect_to.startswith("/")
        or redirect_to.startswith("//")
        or "\\" in redirect_to
        or redirect_to.startswith(LOGIN_PATH)
    ):
        return "/"
    return redirect_to


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIX)


class AuthMiddleware(BaseHTTPMiddleware):
    """Every request of a session that has not logged in goes to the login page, which then
    brings it back to where it was going."""

    def __init__(self, app: ASGIApp, settings: UiSettings) -> None:
        super().__init__(app)
        self.settings = settings

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        path = request.url.path
        if not is_open(path) and not is_authenticated(self.settings):
            target = path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(
                f"{LOGIN_PATH}?{urlencode({'redirect_to': target})}", status_code=303
            )
        return await call_next(request)


def logout() -> None:
    app.storage.user.clear()
    ui.navigate.to(LOGIN_PATH)


def register(settings: UiSettings, title: str) -> None:
    """The middleware and the login page; before ui.run, so the middleware runs inside
    NiceGUI's session middleware (it needs the session)."""
    app.add_middleware(AuthMiddleware, settings=settings)
    attempts = asyncio.Lock()  # FAILED_LOGIN_DELAY_SECONDS' one at a time

    @ui.page(LOGIN_PATH, title=f"Log in · {title}")
    def login(redirect_to: str = "/") -> RedirectResponse | None:
        target = safe_target(redirect_to)
        if is_authenticated(settings):
            return RedirectResponse(target, status_code=303)

        async def try_login() -> None:
            async with attempts:
                if credentials_match(settings, username.value or "", password.value or ""):
                    app.storage.user.update(
                        {
                            "authenticated": True,
                            "username": settings.admin_username,
                            "credentials": _fingerprint(settings),
                        }
                    )
                    ui.navigate.to(target)
                    return
                # Neither what was typed nor the right value goes anywhere: not the page,
                # not the log.
                log.warning("failed UI login")
                await asyncio.sleep(FAILED_LOGIN_DELAY_SECONDS)
            password.value = ""
            message.set_visibility(True)

        with ui.header().classes("items-center px-6 bg-green-9"):
            ui.label(title).classes("text-h6 text-white")
        with ui.card().classes("absolute-center w-80"):
            ui.label("Log in").classes("text-h6")
            username = ui.input("User name").classes("w-full").mark("login-username")
            username.props("autocomplete=username autofocus")
            password = ui.input("Password", password=True, password_toggle_button=True)
            password.classes("w-full").props("autocomplete=current-password")
            password.mark("login-password").on("keydown.enter", try_login)
            message = ui.label("Wrong user name or password.").classes("text-negative")
            message.mark("login-failed").set_visibility(False)
            ui.button("Log in", on_click=try_login).classes("w-full").mark("login")
        return None
