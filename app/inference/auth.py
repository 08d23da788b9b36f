"""Who may do what on the inference API: Litestar guards and their OpenAPI security schemes.

- Every request that changes state (POST /model/reload) needs the admin token,
  `Authorization: Bearer <INFERENCE_API_TOKEN>`: 401 without one, 403 with another.
- POST /predict is open unless INFERENCE_REQUIRE_API_KEY is true; then it needs
  `X-API-Key: <one of INFERENCE_API_KEYS>` (or the admin token, as either header).
- /health, /ready, GET /model and the OpenAPI schema stay open: they change nothing.
Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import SecurityScheme

from app.settings import InferenceSettings

ADMIN_SCHEME = "adminToken"
API_KEY_SCHEME = "apiKey"
API_KEY_HEADER = "X-API-Key"

SECURITY_SCHEMES = {
    ADMIN_SCHEME: SecurityScheme(
        type="http",
        scheme="bearer",
        description="The admin token (INFERENCE_API_TOKEN): needed by every request that "
        "changes state.",
    ),
    API_KEY_SCHEME: SecurityScheme(
        type="apiKey",
        name=API_KEY_HEADER,
        security_scheme_in="header",
        description="An API key (INFERENCE_API_KEYS): needed by /predict only when "
        "INFERENCE_REQUIRE_API_KEY is true.",
    ),
}
ADMIN_SECURITY: list[dict[str, list[str]]] = [{ADMIN_SCHEME: []}]
PREDICT_SECURITY: list[dict[str, list[str]]] = [{API_KEY_SCHEME: []}, {ADMIN_SCHEME: []}]

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]


def _bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    value = connection.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _matches(given: str, accepted: Iterable[str]) -> bool:
    # Every key is compared (no early exit), each in constant time.
    found = False
    for key in accepted:
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


# The app's InferenceSettings in its State, where require_admin finds the token.
STATE_KEY = "settings"


def require_admin(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard of every request that changes state."""
    settings: InferenceSettings = connection.app.state[STATE_KEY]
    token = _bearer(connection)
    if token is None:
        raise NotAuthorizedException(
            detail="this request changes state: send Authorization: Bearer <admin token>",
            headers={"WWW-Authenticate": 'Bearer realm="inference-api"'},
        )
    if not _matches(token, [settings.admin_token] if settings.admin_token else []):
        raise PermissionDeniedException(detail="the token is not the admin token")


def predict_guards(settings: InferenceSettings) -> list[Guard]:
    if not settings.require_api_key:
        return []
    accepted = [*settings.api_keys, *([settings.admin_token] if settings.admin_token else [])]

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        key = connection.headers.get(API_KEY_HEADER.lower()) or _bearer(connection)
        if not key:
            raise NotAuthorizedException(
                detail=f"predictions need an API key: send {API_KEY_HEADER}: <key>",
                headers={"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'},
            )
        if not _matches(key, accepted):
            raise PermissionDeniedException(detail="the API key is not accepted")

    return [guard]
