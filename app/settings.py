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


# One environment variable per fact, read by every process that needs it (the pipeline, the
# inference API and the UI); Ansible renders each from one variable in group_vars.
def _tracking_uri() -> str:
    return _env("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")


def _model_name() -> str:
    return _env("MLFLOW_REGISTERED_MODEL", "forest-cover")


def _model_alias() -> str:
    return _env("MLFLOW_PRODUCTION_ALIAS", "production")


def _batches_dsn() -> str:
    return _env("BATCHES_DB_DSN", "postgresql://batches@127.0.0.1:5432/batches_db")


def _inference_api_url() -> str:
    return _env("INFERENCE_API_URL", "http://127.0.0.1:8000")


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class DataApiSettings:
    """The batch data provider (unit data-api, port 8001)."""

    # Gzip or plain CSV with the header of app.covertype.COLUMNS.
    dataset_path: Path = field(
        default_factory=lambda: Path(
            _env("DATA_API_DATASET", str(REPO_ROOT / "data" / "covertype.csv.gz"))
        )
    )
    # Where each group's start time is kept across restarts (the directory must be writable).
    state_file: Path = field(
        default_factory=lambda: Path(
            _env("DATA_API_STATE_FILE", str(REPO_ROOT / "var" / "data-api-state.json"))
        )
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
    # One line per request on stderr (the journal, on the VM).
    access_log: bool = field(default_factory=lambda: _env_bool("DATA_API_ACCESS_LOG", True))


@dataclass(frozen=True)
class BatchStoreSettings:
    """PostgreSQL batches_db, used by the pipeline (Airflow) and read-only by the UI."""

    # libpq URL or key=value string; a password in it never reaches a log line (db.redact_dsn).
    dsn: str = field(default_factory=_batches_dsn, repr=False)


@dataclass(frozen=True)
class DataClientSettings:
    """How the DAG reaches the data API (app/data_client.py)."""

    base_url: str = field(default_factory=lambda: _env("DATA_API_URL", "http://127.0.0.1:8001"))
    group_number: int = field(default_factory=lambda: _env_int("DATA_API_GROUP", 1, minimum=1))
    connect_timeout: float = field(
        default_factory=lambda: _env_float("DATA_API_CONNECT_TIMEOUT", 5.0, minimum=0.1)
    )
    # Longest wait for the next bytes of a response.
    read_timeout: float = field(
        default_factory=lambda: _env_float("DATA_API_READ_TIMEOUT", 60.0, minimum=0.1)
    )
    # Cap on a whole call: a server that trickles bytes never trips read_timeout.
    total_timeout: float = field(
        default_factory=lambda: _env_float("DATA_API_TOTAL_TIMEOUT", 120.0, minimum=0.1)
    )


INFERENCE_BACKENDS = ("auto", "onnx", "sklearn")


def _env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _env(name, default).strip().lower() or default
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


@dataclass(frozen=True)
class InferenceSettings:
    """The inference API (unit inference-api, port 8000; app/inference)."""

    # The tracking server, which also proxies artifacts: this process holds no S3 credentials.
    mlflow_tracking_uri: str = field(default_factory=_tracking_uri)
    model_name: str = field(default_factory=_model_name)
    model_alias: str = field(default_factory=_model_alias)
    # How often the watcher asks MLflow where the alias points (and retries when nothing loaded).
    poll_interval_seconds: float = field(
        default_factory=lambda: _env_float("INFERENCE_POLL_SECONDS", 30.0, minimum=0.05)
    )
    max_rows: int = field(default_factory=lambda: _env_int("INFERENCE_MAX_ROWS", 10_000, minimum=1))
    host: str = field(default_factory=lambda: _env("INFERENCE_API_HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: _env_int("INFERENCE_API_PORT", 8000, minimum=1))
    # auto: the run's ONNX form when it reproduces the sklearn labels at load time, else sklearn.
    backend: str = field(
        default_factory=lambda: _env_choice("INFERENCE_BACKEND", "auto", INFERENCE_BACKENDS)
    )
    # onnxruntime threads per call; 1 suits many small concurrent requests.
    onnx_threads: int = field(
        default_factory=lambda: _env_int("INFERENCE_ONNX_THREADS", 1, minimum=1)
    )
    # Large ONNX batches (app.inference.app.SPLIT_ROWS rows and more) are split over this many
    # worker threads at once; 2 uses both cores of the VM for a 1,000-row request.
    batch_threads: int = field(
        default_factory=lambda: _env_int("INFERENCE_BATCH_THREADS", 2, minimum=1)
    )
    # MLflow's client retries a refused connection 7 times with backoff (about 2 minutes) by
    # default; the watcher polls again anyway, so a call should fail fast and say why.
    mlflow_http_retries: int = field(
        default_factory=lambda: _env_int("INFERENCE_MLFLOW_HTTP_RETRIES", 1, minimum=0)
    )
    mlflow_http_timeout_seconds: int = field(
        default_factory=lambda: _env_int("INFERENCE_MLFLOW_HTTP_TIMEOUT", 60, minimum=1)
    )
    access_log: bool = field(default_factory=lambda: _env_bool("INFERENCE_ACCESS_LOG", False))
    # uvicorn worker processes. Each holds the model and follows the alias; one process's
    # Python work is bound to one core by the GIL, so single-row requests need 2 to use a
    # second core (docs/benchmarks.md, "Inference API").
    workers: int = field(default_factory=lambda: _env_int("INFERENCE_WORKERS", 1, minimum=1))
    # Where an explicit reload (POST /model/reload) is written for the API's other worker
    # processes, which follow it within TARGET_CHECK_SECONDS (app.inference.model_holder).
    # None: one process, nothing shared. `python -m app.inference` sets one when workers > 1.
    target_file: str | None = field(default_factory=lambda: _env_optional("INFERENCE_TARGET_FILE"))
    # Bearer token of the requests that change state (POST /model/reload). None: they are
    # refused (401) to everyone; the platform always sets one.
    admin_token: str | None = field(
        default_factory=lambda: _env_optional("INFERENCE_API_TOKEN"), repr=False
    )
    # true: POST /predict needs an API key (X-API-Key: one of api_keys, or the admin token).
    require_api_key: bool = field(
        default_factory=lambda: _env_bool("INFERENCE_REQUIRE_API_KEY", False)
    )
    # Comma-separated API keys for /predict (used only when require_api_key is true).
    api_keys: tuple[str, ...] = field(
        default_factory=lambda: tuple(
            k.strip() for k in _env("INFERENCE_API_KEYS", "").split(",") if k.strip()
        ),
        repr=False,
    )


@dataclass(frozen=True)
class MlflowSettings:
    """Where the pipeline logs runs and registers models (app/pipeline)."""

    # The tracking server also proxies artifacts: the pipeline holds no S3 credentials.
    tracking_uri: str = field(default_factory=_tracking_uri)
    experiment_name: str = field(
        default_factory=lambda: _env("MLFLOW_EXPERIMENT_NAME", "forest_cover")
    )
    registered_model_name: str = field(default_factory=_model_name)
    production_alias: str = field(default_factory=_model_alias)


@dataclass(frozen=True)
class TrainingSettings:
    """What the pipeline trains and the rule that decides what gets promoted (app/pipeline)."""

    seed: int = field(default_factory=lambda: _env_int("TRAINING_SEED", 42, minimum=0))
    # Threads per fit (forests' n_jobs, boosting's OpenMP, BLAS). 1 by default: on a busy
    # 2-core machine two OpenMP threads made boosting 2-20x slower than one (spinning threads
    # waiting for a descheduled peer). On an idle VM 2 is faster, best with
    # OMP_WAIT_POLICY=PASSIVE in the worker's environment.
    n_jobs: int = field(default_factory=lambda: _env_int("TRAINING_N_JOBS", 1, minimum=1))
    # Comma-separated subset of app.pipeline.candidates.CANDIDATE_NAMES, in training order.
    candidates: str = field(
        default_factory=lambda: _env(
            "TRAINING_CANDIDATES",
            "hist_gradient_boosting,extra_trees,random_forest,logistic_regression",
        )
    )
    # JSON object of hyperparameter overrides per candidate, e.g.
    # {"random_forest": {"n_estimators": 50}}; names are checked against the estimator.
    param_overrides: str = field(default_factory=lambda: _env("TRAINING_PARAM_OVERRIDES", ""))
    # Held-out metric that ranks candidates and decides promotion: accuracy or macro_f1.
    metric: str = field(
        default_factory=lambda: _env_choice(
            "PROMOTION_METRIC", "accuracy", ("accuracy", "macro_f1")
        )
    )
    # A challenger must beat production by at least this much (absolute, 0..1) on the same
    # held-out rows; within it the two tie and the smaller model wins.
    promotion_margin: float = field(
        default_factory=lambda: _env_float("PROMOTION_MARGIN", 0.005, minimum=0.0)
    )
    # Largest serialized model (cloudpickle, MB = 10**6 bytes) that may become production.
    max_model_mb: float = field(
        default_factory=lambda: _env_float("PROMOTION_MAX_MODEL_MB", 50.0, minimum=0.0)
    )
    # Log every candidate's model, not only the champion's (costs upload time and storage).
    log_all_models: bool = field(
        default_factory=lambda: _env_bool("TRAINING_LOG_ALL_MODELS", False)
    )
    # How many mapped training tasks a DAG run splits its candidates over (at most one per
    # candidate). Every task pays Airflow's start (a process, imports, reading the rows: several
    # seconds) before it fits anything, so on one host, where the fits share the same cores
    # anyway, 1 is fastest; with Celery workers on several hosts, one per free worker slot
    # trains that many candidates at once (ansible: airflow_training_tasks).
    training_tasks: int = field(default_factory=lambda: _env_int("TRAINING_TASKS", 1, minimum=1))


def _env_optional(name: str) -> str | None:
    return os.environ.get(name) or None


@dataclass(frozen=True)
class UiSettings:
    """The NiceGUI front end (unit ui, port 8503; ui/). It only reads: the inference API and
    MLflow over HTTP, batches_db through a read-only role."""

    host: str = field(default_factory=lambda: _env("UI_HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: _env_int("UI_PORT", 8503, minimum=1))
    inference_api_url: str = field(default_factory=_inference_api_url)
    mlflow_tracking_uri: str = field(default_factory=_tracking_uri)
    # The UI's MLflow login (READ on the model and its experiment), the names MLflow's own
    # client reads; None: anonymous, which MLflow's basic-auth app refuses.
    mlflow_username: str | None = field(
        default_factory=lambda: _env_optional("MLFLOW_TRACKING_USERNAME")
    )
    mlflow_password: str | None = field(
        default_factory=lambda: _env_optional("MLFLOW_TRACKING_PASSWORD"), repr=False
    )
    # The inference API's admin token, sent with the reload button's request.
    inference_api_token: str | None = field(
        default_factory=lambda: _env_optional("INFERENCE_API_TOKEN"), repr=False
    )
    model_name: str = field(default_factory=_model_name)
    model_alias: str = field(default_factory=_model_alias)
    # A read-only role: SELECT on the batch_statistics and batch_totals views only.
    batches_db_dsn: str = field(
        default_factory=lambda: _env(
            "BATCHES_DB_DSN", "postgresql://batches_reader@127.0.0.1:5432/batches_db"
        ),
        repr=False,
    )
    # What the browser opens: addresses as the user's machine sees them, not as this process
    # does (on Vagrant these are the forwarded ports).
    airflow_url: str = field(
        default_factory=lambda: _env("UI_AIRFLOW_URL", "http://localhost:8080")
    )
    mlflow_url: str = field(default_factory=lambda: _env("UI_MLFLOW_URL", "http://localhost:5000"))
    minio_console_url: str = field(
        default_factory=lambda: _env("UI_MINIO_CONSOLE_URL", "http://localhost:9001")
    )
    # A backend that is down must cost the page a notice, not a long wait.
    http_connect_timeout: float = field(
        default_factory=lambda: _env_float("UI_HTTP_CONNECT_TIMEOUT", 3.0, minimum=0.1)
    )
    http_read_timeout: float = field(
        default_factory=lambda: _env_float("UI_HTTP_READ_TIMEOUT", 15.0, minimum=0.1)
    )
    # Loading a model from the registry takes longer than any other call.
    reload_timeout: float = field(
        default_factory=lambda: _env_float("UI_RELOAD_TIMEOUT", 300.0, minimum=1.0)
    )
    db_connect_timeout: int = field(
        default_factory=lambda: _env_int("UI_DB_CONNECT_TIMEOUT", 3, minimum=1)
    )
    # Signs NiceGUI's session cookie, which the login needs; generated by provisioning.
    # None: the UI refuses to start.
    storage_secret: str | None = field(
        default_factory=lambda: _env_optional("UI_STORAGE_SECRET"), repr=False
    )
    # true: the session cookie is Secure (sent only over HTTPS). The platform sets it: browsers
    # reach the UI through the TLS proxy only. False by default for `python -m ui` on plain
    # HTTP, where a Secure cookie would never come back and every login would loop.
    secure_cookie: bool = field(default_factory=lambda: _env_bool("UI_SECURE_COOKIE", False))
    # The one login of the UI's pages (ui/auth.py). The password has no default: generated by
    # provisioning (12+ characters); None: the UI refuses to start.
    admin_username: str = field(default_factory=lambda: _env("UI_ADMIN_USERNAME", "admin"))
    admin_password: str | None = field(
        default_factory=lambda: _env_optional("UI_ADMIN_PASSWORD"), repr=False
    )


@dataclass(frozen=True)
class InferenceClientSettings:
    """How the pipeline reaches the inference API to ask for a reload (best effort)."""

    # Unset: no inference API to tell (the API follows the alias by itself anyway).
    base_url: str | None = field(default_factory=lambda: _env("INFERENCE_API_URL", "") or None)
    # The API's admin token (POST /model/reload needs it).
    admin_token: str | None = field(
        default_factory=lambda: _env_optional("INFERENCE_API_TOKEN"), repr=False
    )


@dataclass(frozen=True)
class DagSettings:
    """Retry policy of the DAG's service-facing tasks, read when the DAG file is parsed."""

    retries: int = field(default_factory=lambda: _env_int("PIPELINE_TASK_RETRIES", 3, minimum=0))
    retry_delay_seconds: float = field(
        default_factory=lambda: _env_float("PIPELINE_RETRY_DELAY_SECONDS", 10.0, minimum=0.0)
    )
