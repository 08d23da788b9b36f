"""What the pages show when a backend fails: one exception type carrying a sentence for the
user, made from whatever requests or psycopg2 raised. The traceback goes nowhere near the page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import requests

log = logging.getLogger("ui.backend")


class BackendError(Exception):
    """A backend could not answer; `message` is what the page shows."""

    def __init__(self, service: str, message: str) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.message = message


class RejectedInput(Exception):
    """The inference API refused the input (4xx): `field` names what it did not accept."""

    def __init__(self, detail: str, field: str | None, field_message: str | None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.field_message = field_message


def _cause(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.ReadTimeout):
        return "no answer in time"
    if isinstance(exc, requests.ConnectionError):
        text = str(exc)
        if "Connection refused" in text:
            return "connection refused"
        if "Name or service not known" in text or "nodename nor servname" in text:
            return "unknown host"
        return "connection failed"
    return type(exc).__name__


def unreachable(service: str, base_url: str, exc: requests.RequestException) -> BackendError:
    cause = _cause(exc)
    log.warning("%s at %s: %s (%s)", service, base_url, cause, exc)
    return BackendError(service, f"not reachable at {base_url} ({cause})")


def decode(service: str, base_url: str, response: requests.Response) -> Any:
    """The JSON of a 2xx answer; BackendError with the answer's reason for anything else."""
    if response.ok:
        try:
            return response.json()
        except ValueError:
            raise BackendError(service, f"answered {base_url} with something not JSON") from None
    detail = error_detail(response)
    log.warning("%s at %s answered %s: %s", service, base_url, response.status_code, detail)
    raise BackendError(service, f"answered HTTP {response.status_code}: {detail}")


def http_call(service: str, base_url: str, call: Callable[[], requests.Response]) -> Any:
    """Run `call` and decode its answer; any failure becomes a BackendError."""
    try:
        response = call()
    except requests.RequestException as exc:
        raise unreachable(service, base_url, exc) from None
    return decode(service, base_url, response)


def error_detail(response: requests.Response) -> str:
    """The reason a JSON error body gives (Litestar's detail, MLflow's message), else its text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason
    if isinstance(body, dict):
        for key in ("detail", "message"):
            if isinstance(body.get(key), str):
                return str(body[key])[:500]
    return str(body)[:300]


def to_backend_error(service: str, exc: Exception) -> BackendError:
    """`exc` if it is a BackendError, else one for the page: an unexpected exception's
    traceback goes to the log (at ERROR, so tests notice), never to the page."""
    if isinstance(exc, BackendError):
        return exc
    log.error("unexpected failure reading from %s", service, exc_info=exc)
    return BackendError(
        service, "gave an answer the UI could not read (details are in the UI's log)"
    )


def as_backend_error(service: str, result: object) -> BackendError | None:
    """For a value that may be an exception (asyncio.gather style): its BackendError, or None
    when it is a real result."""
    return to_backend_error(service, result) if isinstance(result, Exception) else None
