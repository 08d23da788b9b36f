"""Every setting of every process, read from environment variables in one place.

On the VM, Ansible renders /etc/mlops/<service>.env and the systemd unit loads it with
EnvironmentFile=; in tests the fixtures set the same variables. Nothing else reads os.environ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """A setting is present but unusable; the message names the variable."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _env_int(name: str, default: int, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from exc
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _env_float(name: str, default: float, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from exc
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _env_optional_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from exc


@dataclass(frozen=True)
class DataApiSettings:
    """The batch data provider (unit data-api, port 8001)."""

    dataset_path: Path = field(
        default_factory=lambda: Path(_env("DATA_API_DATASET", str(REPO_ROOT / "data" / "covertype.csv.gz")))
    )
    state_file: Path = field(
        default_factory=lambda: Path(_env("DATA_API_STATE_FILE", str(REPO_ROOT / "var" / "data-api-state.json")))
    )
    interval_seconds: float = field(
        default_factory=lambda: _env_float("DATA_API_INTERVAL_SECONDS", 300.0, minimum=0.001)
    )
    n_batches: int = field(default_factory=lambda: _env_int("DATA_API_BATCHES", 10, minimum=1))
    n_groups: int = field(default_factory=lambda: _env_int("DATA_API_GROUPS", 10, minimum=1))
    # None means fresh OS randomness; tests set a seed to make samples reproducible.
    seed: int | None = field(default_factory=lambda: _env_optional_int("DATA_API_SEED"))
    host: str = field(default_factory=lambda: _env("DATA_API_HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: _env_int("DATA_API_PORT", 8001, minimum=1))


@dataclass(frozen=True)
class BatchStoreSettings:
    """PostgreSQL batches_db, used by the pipeline (Airflow) and read-only by the UI."""

    dsn: str = field(
        default_factory=lambda: _env("BATCHES_DB_DSN", "postgresql://batches@127.0.0.1:5432/batches_db")
    )


@dataclass(frozen=True)
class DataClientSettings:
    """How the DAG reaches the data API."""

    base_url: str = field(default_factory=lambda: _env("DATA_API_URL", "http://127.0.0.1:8001"))
    group_number: int = field(default_factory=lambda: _env_int("DATA_API_GROUP", 1, minimum=1))
    connect_timeout: float = field(default_factory=lambda: _env_float("DATA_API_CONNECT_TIMEOUT", 5.0, minimum=0.1))
    read_timeout: float = field(default_factory=lambda: _env_float("DATA_API_READ_TIMEOUT", 60.0, minimum=0.1))
