"""Settings objects end up in log lines and tracebacks (a dataclass's repr is its fields):
none may show a secret it holds."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from app import settings

# Every environment variable that carries a secret, with a value no default could contain.
SECRETS = {
    "BATCHES_DB_DSN": "postgresql://batches:dsn-Secret-1@127.0.0.1:5432/batches_db",
    "INFERENCE_API_TOKEN": "token-Secret-2",
    "INFERENCE_API_KEYS": "apikey-Secret-3,apikey-Secret-4",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-Secret-5",
    "UI_STORAGE_SECRET": "storage-Secret-6",
    "UI_ADMIN_PASSWORD": "ui-Secret-7",
}
MARKERS = (
    "dsn-Secret-1",
    "token-Secret-2",
    "apikey-Secret-3",
    "apikey-Secret-4",
    "mlflow-Secret-5",
    "storage-Secret-6",
    "ui-Secret-7",
)

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
