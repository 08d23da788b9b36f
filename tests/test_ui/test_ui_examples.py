"""The examples bundled in ui/ are real rows, valid under the data contract, and cover every
class; the settings read what the unit's env file sets."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from app.covertype import COLUMNS, COVER_TYPES, NUMERIC_RANGES, SOIL_TYPES, WILDERNESS_AREAS
from app.settings import SettingsError, UiSettings
from tests.test_ui.support import REPO_ROOT, SAMPLE_CSV
from ui import examples


def test_every_example_is_a_real_row_of_the_sample() -> None:
    frame = pd.read_csv(SAMPLE_CSV)
    real = {tuple(row) for row in frame[list(COLUMNS)].itertuples(index=False)}
    for example in examples.EXAMPLES:
        assert tuple(example[c] for c in COLUMNS) in real, example


def test_examples_are_valid_and_cover_every_class() -> None:
    for example in examples.EXAMPLES:
        for column, (low, high) in NUMERIC_RANGES.items():
            assert isinstance(example[column], int) and low <= example[column] <= high
        assert example["Wilderness_Area"] in WILDERNESS_AREAS
        assert example["Soil_Type"] in SOIL_TYPES
    assert {examples.actual_cover_type(e) for e in examples.EXAMPLES} == set(COVER_TYPES)


def test_examples_are_told_apart_by_their_features() -> None:
    features = [tuple(examples.features(e).values()) for e in examples.EXAMPLES]
    assert len(set(features)) == len(features)
    for example in examples.EXAMPLES:
        as_form = {c: float(v) if isinstance(v, int) else v for c, v in example.items()}
        assert examples.matching(as_form) is example
    assert examples.matching({**examples.EXAMPLES[0], "Slope": 89}) is None


def test_a_random_example_is_never_the_current_one() -> None:
    rng = random.Random(3)
    current = examples.EXAMPLES[0]
    for _ in range(200):
        following = examples.random_example(rng, exclude=current)
        assert following != current and following in examples.EXAMPLES
        current = following


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "UI_PORT",
        "INFERENCE_API_URL",
        "UI_STORAGE_SECRET",
        "BATCHES_DB_DSN",
        "UI_ADMIN_USERNAME",
        "UI_ADMIN_PASSWORD",
    ):
        monkeypatch.delenv(name, raising=False)
    defaults = UiSettings()
    assert (defaults.host, defaults.port) == ("127.0.0.1", 8503)
    assert defaults.inference_api_url == "http://127.0.0.1:8000"
    assert defaults.storage_secret is None
    # No default password (the UI then refuses to start: test_ui_login.py).
    assert (defaults.admin_username, defaults.admin_password) == ("admin", None)
    assert "batches_reader@" in defaults.batches_db_dsn

    monkeypatch.setenv("UI_PORT", "9999")
    monkeypatch.setenv("UI_AIRFLOW_URL", "http://vm.example:8080")
    monkeypatch.setenv("UI_STORAGE_SECRET", "s3cret")
    settings = UiSettings()
    assert settings.port == 9999
    assert settings.airflow_url == "http://vm.example:8080"
    assert settings.storage_secret == "s3cret"
    monkeypatch.setenv("UI_ADMIN_PASSWORD", "a-generated-password")
    assert UiSettings().admin_password == "a-generated-password"
    assert "a-generated-password" not in repr(UiSettings())

    monkeypatch.setenv("UI_HTTP_READ_TIMEOUT", "soon")
    with pytest.raises(SettingsError, match="UI_HTTP_READ_TIMEOUT"):
        UiSettings()


def test_the_ui_needs_only_its_own_dependencies() -> None:
    """The unit's venv has the `ui` extra only (nicegui, requests, psycopg2): importing every
    page must not pull in the pipeline's or the inference API's libraries."""
    import subprocess
    import sys

    blocked = ("pandas", "numpy", "mlflow", "sklearn", "litestar", "msgspec", "onnxruntime")
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import ui.app, ui.predict_page, ui.model_page, ui.data_page\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
