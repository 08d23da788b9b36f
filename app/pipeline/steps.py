"""The steps of the forest_cover_mlops_pipeline DAG, as plain functions.

The DAG file only wires these together; each takes a PipelineConfig and the previous step's
JSON-serialisable result (what Airflow passes between tasks as XCom), so every step can be run
and tested without a scheduler.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from app.settings import DataClientSettings, InferenceClientSettings, MlflowSettings

log = logging.getLogger(__name__)

# Airflow connection ids; each may also be given as an AIRFLOW_CONN_<ID> environment variable.
BATCHES_DB_CONN_ID = "batches_db"
DATA_API_CONN_ID = "data_api"
MLFLOW_CONN_ID = "mlflow"
INFERENCE_API_CONN_ID = "inference_api"


@dataclass(frozen=True)
class PipelineConfig:
    batches_dsn: str
    data_api_url: str
    group_number: int
    mlflow_tracking_uri: str
    inference_api_url: str | None

    @classmethod
    def from_airflow(cls) -> PipelineConfig:
        """Airflow connections first (the UI is where an operator changes them), then the
        environment variables every setting in app.settings already knows."""
        client = DataClientSettings()
        data_conn = _connection(DATA_API_CONN_ID)
        group = client.group_number
        if data_conn is not None and data_conn.extra_dejson.get("group_number") is not None:
            group = int(data_conn.extra_dejson["group_number"])
        db_conn = _connection(BATCHES_DB_CONN_ID)
        mlflow_conn = _connection(MLFLOW_CONN_ID)
        inference_conn = _connection(INFERENCE_API_CONN_ID)
        batches_dsn = _postgres_dsn(db_conn) if db_conn else os.environ.get("BATCHES_DB_DSN")
        if not batches_dsn:
            raise RuntimeError(
                f"no batches database: set the Airflow connection {BATCHES_DB_CONN_ID!r} "
                "(AIRFLOW_CONN_BATCHES_DB) or BATCHES_DB_DSN"
            )
        return cls(
            batches_dsn=batches_dsn,
            data_api_url=_http_url(data_conn) if data_conn else client.base_url,
            group_number=group,
            mlflow_tracking_uri=_http_url(mlflow_conn)
            if mlflow_conn
            else MlflowSettings().tracking_uri,
            inference_api_url=_http_url(inference_conn)
            if inference_conn
            else InferenceClientSettings().base_url,
        )


def _connection(conn_id: str) -> Any | None:
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id)
    except Exception:  # AirflowNotFoundException: the setting falls back to the environment
        return None


def _postgres_dsn(conn: Any) -> str:
    uri = str(conn.get_uri())
    # Airflow writes postgres connections as "postgres://"; libpq accepts both spellings.
    return "postgresql://" + uri.split("://", 1)[1].split("?", 1)[0]


def _http_url(conn: Any) -> str:
    scheme = "https" if conn.conn_type == "https" else "http"
    host = conn.host or "127.0.0.1"
    if "://" in host:  # a host entered as a full URL in the UI
        return host.rstrip("/")
    port = f":{conn.port}" if conn.port else ""
    path = f"/{conn.schema.strip('/')}" if conn.schema else ""
    return f"{scheme}://{host}{port}{path}"


def fetch_batch(config: PipelineConfig) -> dict[str, Any]:
    """Ask the data API for the group's current batch. Exhaustion is a normal result; real
    errors (timeouts, 5xx, malformed answers) raise, so the task's retries apply."""
    from app.data_client import DataApiClient, Exhausted, Timeouts

    settings = DataClientSettings()
    with DataApiClient(config.data_api_url, Timeouts.of(None, settings)) as client:
        result = client.fetch_batch(config.group_number)
    if isinstance(result, Exhausted):
        log.info("data API has no new batch for group %s: %s", config.group_number, result.detail)
        return {"status": "exhausted", "group_number": config.group_number, "detail": result.detail}
    log.info(
        "fetched batch %s of group %s: %d rows",
        result.batch_number,
        result.group_number,
        len(result.rows),
    )
    return {
        "status": "new",
        "group_number": result.group_number,
        "batch_number": result.batch_number,
        "rows": result.rows,
    }


def store_batch(config: PipelineConfig, fetched: dict[str, Any]) -> dict[str, Any]:
    """Validate and store the fetched rows in one transaction (nothing on failure)."""
    from app.batch_store.ingest import ingest_batch
    from app.batch_store.migrations import apply_migrations

    if fetched.get("status") != "new":
        return {
            "status": fetched.get("status", "unknown"),
            "new": 0,
            "detail": fetched.get("detail"),
        }
    # Cheap when the schema is current, and it lets a fresh database work without a manual step.
    apply_migrations(config.batches_dsn)
    report = ingest_batch(
        config.batches_dsn, fetched["group_number"], fetched["batch_number"], fetched["rows"]
    )
    summary = asdict(report)
    summary["fetched_at"] = report.fetched_at.isoformat()
    summary["status"] = "stored"
    summary["missing_batches"] = warn_on_gap(config, report.group_number, report.batch_number)
    log.info(
        "batch %s: %d received, %d new, %d duplicate, %d rejected %s",
        report.batch_number,
        report.received,
        report.new,
        report.duplicate,
        report.rejected,
        report.reasons or "",
    )
    return summary


def warn_on_gap(config: PipelineConfig, group_number: int, batch_number: int) -> list[int]:
    """The group's batch numbers that never arrived (see batch_store.read.missing_batches),
    with a warning in the task log while there are any: a gap is lost data, not progress."""
    from app.batch_store.read import missing_batches, seen_batches

    seen = seen_batches(config.batches_dsn, group_number)
    missing = missing_batches(seen)
    if missing:
        log.warning(
            "batch gap in group %s: batch %s stored, but batches %s were never received "
            "(seen: %s), so their rows are not in the training data; the data API moved on "
            "without this pipeline (GET /restart_data_generation?group_number=%s fetches the "
            "group again from batch 1)",
            group_number,
            batch_number,
            ", ".join(map(str, missing)),
            ", ".join(map(str, seen)),
            group_number,
        )
    return missing


def has_new_rows(report: dict[str, Any]) -> bool:
    return int(report.get("new", 0)) > 0


def _load(config: PipelineConfig, group_number: int):  # noqa: ANN202 - (train, holdout, fp)
    from app.batch_store.read import data_fingerprint, load_rows

    train = load_rows(config.batches_dsn, "train", group_number=group_number)
    holdout = load_rows(config.batches_dsn, "holdout", group_number=group_number)
    return train, holdout, data_fingerprint(config.batches_dsn, group_number=group_number)


def train_and_evaluate(
    config: PipelineConfig, report: dict[str, Any], dag_run_id: str | None = None
) -> dict[str, Any]:
    """Train every candidate on all training rows of the group so far, evaluate on the
    held-out rows, log everything to MLflow and log the champion's model."""
    from app.onnx_model import log_onnx_artifacts
    from app.pipeline.run import RunMetadata, train_and_log

    group = int(report["group_number"])
    train, holdout, fingerprint = _load(config, group)
    trained = train_and_log(
        train,
        holdout,
        RunMetadata(group_number=group, data_fingerprint=fingerprint, dag_run_id=dag_run_id),
        mlflow_settings=MlflowSettings(tracking_uri=config.mlflow_tracking_uri),
        champion_hook=log_onnx_artifacts,
    )
    return trained.to_dict()


def register_and_promote(config: PipelineConfig, trained: dict[str, Any]) -> dict[str, Any]:
    """Register the champion as a new version and move the production alias only if it beats
    the version the alias points to now on the current held-out rows."""
    from app.batch_store.read import load_rows
    from app.pipeline.run import TrainedRun
    from app.pipeline.run import register_and_promote as promote

    run = TrainedRun.from_dict(trained)
    holdout = load_rows(config.batches_dsn, "holdout", group_number=run.group_number)
    decision = promote(
        run, holdout, mlflow_settings=MlflowSettings(tracking_uri=config.mlflow_tracking_uri)
    )
    return decision


def reload_inference_api(config: PipelineConfig, promotion: dict[str, Any]) -> dict[str, Any]:
    """Tell the inference API to load the production model now. Best effort: the API follows
    the alias on its own too, so a failure is reported, never raised."""
    if not promotion.get("promoted"):
        return {"reloaded": False, "reason": "production alias unchanged"}
    if not config.inference_api_url:
        return {"reloaded": False, "reason": "no inference API configured"}
    url = f"{config.inference_api_url.rstrip('/')}/model/reload"
    try:
        response = requests.post(url, timeout=(3, 60))
    except requests.RequestException as exc:
        log.warning("inference API reload failed (%s); it will follow the alias itself", exc)
        return {"reloaded": False, "reason": f"{type(exc).__name__}: {exc}"}
    if response.status_code >= 400:
        log.warning(
            "inference API reload answered %s: %s", response.status_code, response.text[:500]
        )
        return {"reloaded": False, "reason": f"HTTP {response.status_code}"}
    return {"reloaded": True, "status": response.status_code, "url": urlsplit(url).path}
