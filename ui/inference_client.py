"""Calls to the inference API (app/inference): /predict, /model, /model/reload.

Blocking (requests); the pages run them with nicegui.run.io_bound. A new session per call keeps
them safe from any thread.
"""

from __future__ import annotations

from typing import Any

import requests

from app.settings import UiSettings
from ui.backend import BackendError, RejectedInput, decode, error_detail, http_call, unreachable

SERVICE = "Inference API"


class InferenceClient:
    def __init__(self, settings: UiSettings) -> None:
        self.base_url = settings.inference_api_url.rstrip("/")
        self._timeout = (settings.http_connect_timeout, settings.http_read_timeout)
        self._reload_timeout = (settings.http_connect_timeout, settings.reload_timeout)
        # The API's admin token: every request that changes state needs it.
        self._admin = (
            {"Authorization": f"Bearer {settings.inference_api_token}"}
            if settings.inference_api_token
            else {}
        )

    def predict(self, record: dict[str, int | str]) -> dict[str, Any]:
        """The API's answer for one record: model_name, model_version, model_alias, backend
        and predictions[0] (cover_type, cover_type_name, probabilities by class name).
        Raises RejectedInput on a 4xx, BackendError when the API is down or has no model."""
        try:
            response = requests.post(f"{self.base_url}/predict", json=record, timeout=self._timeout)
        except requests.RequestException as exc:
            raise unreachable(SERVICE, self.base_url, exc) from None
        if 400 <= response.status_code < 500:
            field, message = _field_error(response)
            raise RejectedInput(error_detail(response), field, message)
        if response.status_code == 503:
            raise BackendError(SERVICE, f"has no model to serve yet: {error_detail(response)}")
        answer = decode(SERVICE, self.base_url, response)
        if not isinstance(answer, dict) or not answer.get("predictions"):
            raise BackendError(SERVICE, "answered without a prediction")
        return answer

    def model_info(self) -> dict[str, Any]:
        answer = http_call(
            SERVICE,
            self.base_url,
            lambda: requests.get(f"{self.base_url}/model", timeout=self._timeout),
        )
        if not isinstance(answer, dict):
            raise BackendError(SERVICE, "answered /model with something unexpected")
        return answer

    def reload(self) -> dict[str, Any]:
        """POST /model/reload: load what the alias points to now. Returns {outcome, model}."""
        answer = http_call(
            SERVICE,
            self.base_url,
            lambda: requests.post(
                f"{self.base_url}/model/reload", headers=self._admin, timeout=self._reload_timeout
            ),
        )
        if not isinstance(answer, dict):
            raise BackendError(SERVICE, "answered /model/reload with something unexpected")
        return answer


def _field_error(response: requests.Response) -> tuple[str | None, str | None]:
    """The field a Litestar validation error names in `extra`, and its message."""
    try:
        extra = response.json().get("extra")
    except (ValueError, AttributeError):
        return None, None
    if isinstance(extra, list) and extra and isinstance(extra[0], dict):
        key, message = extra[0].get("key"), extra[0].get("message")
        return (str(key) if key else None), (str(message) if message else None)
    return None, None
