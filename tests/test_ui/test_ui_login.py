"""The login in front of every page (ui/auth.py), with NiceGUI's simulated user against the
app `python -m ui` runs, and `python -m ui` itself refusing to start without a password."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from itsdangerous import TimestampSigner
from nicegui import core
from nicegui.testing import User

from tests.test_ui.conftest import StartUser, log_in
from tests.test_ui.support import (
    REPO_ROOT,
    SEE_RETRIES,
    UI_PASSWORD,
    UI_USERNAME,
    all_down_env,
    ui_server,
)
from ui import auth

PAGES = ("/", "/model", "/data")


async def status_and_location(user: User, path: str) -> tuple[int, str | None]:
    response = await user.http_client.get(path, follow_redirects=False)
    return response.status_code, response.headers.get("location")


def to_login(path: str) -> tuple[int, str]:
    return 303, f"/login?redirect_to={quote(path, safe='')}"


@pytest.mark.asyncio
async def test_every_page_without_a_login_redirects_to_the_login_page(
    ui_user: StartUser,
) -> None:
    user = await ui_user(login=False)
    for path in (*PAGES, "/model?x=1", "/no-such-page"):
        assert await status_and_location(user, path) == to_login(path), path
    # Open: the login page, NiceGUI's assets it needs, and the health check.
    assert (await status_and_location(user, "/login"))[0] == 200
    assert (await user.http_client.get("/health")).json() == {"status": "alive"}
    await user.open("/model")  # follows the redirect
    await user.should_see(marker="login")
    await user.should_not_see(marker="reload")


@pytest.mark.asyncio
async def test_a_wrong_password_stays_on_the_login_page_with_a_message(
    ui_user: StartUser, caplog: pytest.LogCaptureFixture
) -> None:
    user = await ui_user(login=False)
    await user.open("/")
    wrong = f"not-{UI_PASSWORD}"
    user.find(marker="login-username").type(UI_USERNAME)
    user.find(marker="login-password").type(wrong)
    started = time.monotonic()
    user.find(marker="login").click()
    await user.should_see("Wrong user name or password.", retries=SEE_RETRIES)
    # Each failure costs the delay (one guess a second for the whole process).
    assert time.monotonic() - started >= auth.FAILED_LOGIN_DELAY_SECONDS
    (password,) = user.find(marker="login-password").elements
    assert password.value == ""  # type: ignore[attr-defined]
    await user.should_not_see(marker="logout")
    assert await status_and_location(user, "/") == to_login("/")
    # The right user with a wrong password, or a wrong user with the right one: the same.
    user.find(marker="login-username").type("root")
    user.find(marker="login-password").type(UI_PASSWORD)
    user.find(marker="login").click()
    await user.should_see("Wrong user name or password.", retries=SEE_RETRIES)
    assert await status_and_location(user, "/") == to_login("/")
    logged = caplog.text
    assert "failed UI login" in logged
    assert wrong not in logged and UI_PASSWORD not in logged


@pytest.mark.asyncio
async def test_the_right_password_opens_the_page_the_user_was_going_to(
    ui_user: StartUser,
) -> None:
    user = await ui_user(login=False)
    await log_in(user, "/model")
    assert user.back_history[-1] == "/model"
    await user.should_see(marker="reload")
    await user.should_see(UI_USERNAME)
    for path in PAGES:
        assert (await status_and_location(user, path))[0] == 200, path
    # Logged in, the login page sends the user on.
    assert await status_and_location(user, "/login?redirect_to=/data") == (303, "/data")


@pytest.mark.asyncio
async def test_the_login_redirects_only_within_the_site(ui_user: StartUser) -> None:
    for target in ("https://evil.test/", "//evil.test/", "/\\evil.test", "evil", "/login"):
        assert auth.safe_target(target) == "/", target
    assert auth.safe_target("/model?x=1") == "/model?x=1"
    user = await ui_user(login=False)
    await log_in(user, f"/login?redirect_to={quote('//evil.test/')}")
    assert user.back_history[-1] == "/"


@pytest.mark.asyncio
async def test_logout_sends_every_page_back_to_the_login(ui_user: StartUser) -> None:
    user = await ui_user()
    assert (await status_and_location(user, "/model"))[0] == 200
    user.find(marker="logout").click()
    await user.should_see(marker="login", retries=SEE_RETRIES)
    for path in PAGES:
        assert await status_and_location(user, path) == to_login(path), path


@pytest.mark.asyncio
async def test_the_session_cookie_is_signed_with_the_storage_secret(
    ui_user: StartUser,
) -> None:
    """A logged-in session is found by the id in the cookie; that id is worth nothing without
    the storage secret's signature: a cookie altered, or signed with another key, is a new
    anonymous session."""
    secret = all_down_env()["UI_STORAGE_SECRET"]
    user = await ui_user(UI_STORAGE_SECRET=secret)
    cookies = user.http_client.cookies
    (name,) = [c.name for c in cookies.jar]
    logged_in = cookies[name]
    payload = logged_in.split(".")[0]
    session = json.loads(base64.b64decode(payload))
    assert set(session) == {"id"}  # only the id: the login is on the server

    async def status_with(cookie: str) -> int:
        # A browser of its own, holding only this cookie.
        transport = httpx.ASGITransport(core.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as browser:
            response = await browser.get("/model", headers={"cookie": f"{name}={cookie}"})
        return response.status_code

    def signed(secret: str) -> str:
        data = base64.b64encode(json.dumps(session).encode())
        return TimestampSigner(secret).sign(data).decode()

    # The control: the same id signed with the storage secret is the logged-in session.
    assert await status_with(signed(secret)) == 200
    assert await status_with(signed(f"another-{secret}")) == 303
    flipped = logged_in[:-3] + ("A" if logged_in[-3] != "A" else "B") + logged_in[-2:]
    assert await status_with(flipped) == 303
    assert await status_with(logged_in) == 200


@pytest.mark.asyncio
async def test_a_logged_out_session_cannot_reload_from_a_page_it_still_has(
    ui_user: StartUser,
) -> None:
    """Defence in depth: the model page's reload button checks the session itself, so a page
    left open after a logout (in another tab) sends no admin token."""
    user = await ui_user()
    await user.open("/model")
    await user.should_see(marker="reload")
    page = user.client
    # What the logout button does, from another tab of the same browser.
    from nicegui import app
    from nicegui.storage import request_contextvar

    request_contextvar.set(page.request)
    app.storage.user.clear()
    user.find(marker="reload").click()
    await user.should_see("Log in again to reload the model: nothing was sent")
    await user.should_see(marker="login", retries=SEE_RETRIES)


def run_ui(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ui"],
        cwd=REPO_ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_ui_refuses_to_start_without_a_password() -> None:
    env = {k: v for k, v in all_down_env().items() if k != "UI_ADMIN_PASSWORD"}
    refused = run_ui(env)
    assert refused.returncode == 2, refused.stderr
    assert "refusing to start: UI_ADMIN_PASSWORD is not set" in refused.stderr

    short = "Short-1"
    refused = run_ui({**env, "UI_ADMIN_PASSWORD": short})
    assert refused.returncode == 2, refused.stderr
    assert "UI_ADMIN_PASSWORD must have at least 12 characters" in refused.stderr
    assert short not in refused.stderr + refused.stdout

    env = {k: v for k, v in all_down_env().items() if k != "UI_STORAGE_SECRET"}
    refused = run_ui(env)
    assert refused.returncode == 2, refused.stderr
    assert "UI_STORAGE_SECRET is not set" in refused.stderr


@pytest.mark.parametrize("secure", [True, False])
def test_the_session_cookie_is_secure_when_asked(secure: bool, tmp_path: Path) -> None:
    """Behind the TLS proxy (the platform sets UI_SECURE_COOKIE=true) the session cookie is
    Secure, so a browser never sends it over plain HTTP; SameSite=Lax and HttpOnly always."""
    env = {**all_down_env(), "UI_SECURE_COOKIE": str(secure).lower()}
    with ui_server(env, tmp_path) as (url, _):
        response = httpx.get(f"{url}/login", timeout=30)
    assert response.status_code == 200
    (cookie,) = response.headers.get_list("set-cookie")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite"} <= attributes, cookie
    assert "samesite=lax" in cookie.lower()
    assert ("secure" in attributes) is secure, cookie
