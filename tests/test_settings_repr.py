"""Settings objects end up in log lines and tracebacks (a dataclass's repr is its fields):
none may show a secret it holds."""

from __future__ import annotations

import dataclasses
import inspect
import secrets

import pytest

from app import settings

# Every environment variable that carries a secret, with generated values no default could
# contain; the markers are the secret parts of them.
_TOKENS = {
    name: secrets.token_hex(12)
    for name in ("dsn", "token", "key1", "key2", "mlflow", "storage", "ui")
}
SECRETS = {
    "BATCHES_DB_DSN": f"postgresql://batches:{_TOKENS['dsn']}@127.0.0.1:5432/batches_db",
    "INFERENCE_API_TOKEN": _TOKENS["token"],
    "INFERENCE_API_KEYS": f"{_TOKENS['key1']},{_TOKENS['key2']}",
    "MLFLOW_TRACKING_PASSWORD": _TOKENS["mlflow"],
    "UI_STORAGE_SECRET": _TOKENS["storage"],
    "UI_ADMIN_PASSWORD": _TOKENS["ui"],
}
MARKERS = tuple(_TOKENS.values())

SETTINGS_CLASSES = [
    cls
    for _, cls in inspect.getmembers(settings, inspect.isclass)
    if dataclasses.is_dataclass(cls) and cls.__module__ == settings.__name__
]


def test_every_settings_class_is_checked() -> None:
    assert {"UiSettings", "InferenceSettings", "BatchStoreSettings"} <= {
        cls.__name__ for cls in SETTINGS_CLASSES
    }


@pytest.mark.parametrize("cls", SETTINGS_CLASSES, ids=lambda cls: cls.__name__)
def test_repr_shows_no_secret(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    shown = repr(cls())
    for marker in MARKERS:
        assert marker not in shown, (cls.__name__, marker)
