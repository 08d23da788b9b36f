"""The steps of the forest_cover_mlops_pipeline DAG, as plain functions, one per task and
named like it.

The DAG file only wires these together; each takes a PipelineConfig and the previous step's
small JSON result (what Airflow passes between tasks as XCom: counts and ids, never rows), so
every step can be run and tested without a scheduler.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from app.settings import (
    BatchStoreSettings,
    DataClientSettings,
    InferenceClientSettings,
    MlflowSettings,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    batches_dsn: str
    data_api_url: str
    group_number: int
    mlflow_tracking_uri: str
    inference_api_url: str | None

    @classmethod
    def from_settings(cls) -> PipelineConfig:
        """From the environment (app.settings; /etc/mlops/airflow.env on the VM)."""
        client = DataClientSettings()
        return cls(
            batches_dsn=BatchStoreSettings().dsn,
            data_api_url=client.base_url,
            group_number=client.group_number,
            mlflow_tracking_uri=MlflowSettings().tracking_uri,
            inference_api_url=InferenceClientSettings().base_url,
        )


def fetch_batch(config: PipelineConfig) -> dict[str, Any]:
    """Ask the data API for the group's current batch and save it as delivered in batches_db;
    the result names the delivery, so the rows stay out of XCom. Exhaustion is a normal
    result; real errors (timeouts, 5xx, malformed answers) raise, so the task's retries
    apply."""
    from app.batch_store.deliveries import save_delivery
    from app.batch_store.migrations import apply_migrations
    from app.data_client import DataApiClient, Exhausted, Timeouts

    settings = DataClientSettings()
    with DataApiClient(config.data_api_url, Timeouts.from_settings(settings)) as client:
        result = client.fetch_batch(config.group_number)
    if isinstance(result, Exhausted):
        log.info("data API has no new batch for group %s: %s", config.group_number, result.detail)
        return {"status": "exhausted", "group_number": config.group_number, "detail": result.detail}
    # Cheap when the schema is current, and it lets a fresh database work without a manual step.
    apply_migrations(config.batches_dsn)
    delivery_id = save_delivery(
        config.batches_dsn, result.group_number, result.batch_number, result.rows
    )
    log.info(
        "fetched batch %s of group %s: %d rows, saved as delivery %s",
        result.batch_number,
        result.group_number,
        len(result.rows),
        delivery_id,
    )
    return {
        "status": "new",
        "group_number": result.group_number,
        "batch_number": result.batch_number,
        "rows": len(result.rows),
        "delivery_id": delivery_id,
    }


def store_batch(config: PipelineConfig, fetched: dict[str, Any]) -> dict[str, Any]:
    """Validate and store the fetched delivery in one transaction (nothing on failure). The
    group's deliveries that an earlier run saved but failed to store go first, oldest first,
    so a batch fetched while the database was failing is not lost."""
    from app.batch_store.deliveries import DeliveryNotFoundError, pending_deliveries
    from app.batch_store.store import store_delivery

    if fetched.get("status") != "new":
        return {
            "status": fetched.get("status", "unknown"),
            "new": 0,
            "detail": fetched.get("detail"),
        }
    delivery_id = int(fetched["delivery_id"])
    pending = pending_deliveries(config.batches_dsn, int(fetched["group_number"]))
    if delivery_id not in pending:
        raise DeliveryNotFoundError(
            f"delivery {delivery_id} is not waiting to be stored: an earlier try of this task"
            " stored it already (see batch_status), or it was never saved"
        )
    for earlier in pending[: pending.index(delivery_id)]:
        late = store_delivery(config.batches_dsn, earlier)
        log.warning(
            "stored delivery %s (batch %s, %d new rows), left behind by an earlier run",
            earlier,
            late.batch_number,
            late.new,
        )
    report = store_delivery(config.batches_dsn, delivery_id)
    summary = report.as_dict() | {"status": "stored", "delivery_id": delivery_id}
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


class DataChangedError(RuntimeError):
    """The stored rows differ from those the run was prepared on: a candidate trained now
    would not be comparable with the others (another writer than store_batch, or a second
    DAG run at once)."""


def _snapshot(config: PipelineConfig, group_number: int):  # noqa: ANN202 - (train, holdout, fp)
    """Both splits and their fingerprint from one snapshot of batches_db (REPEATABLE READ):
    the split is stored with each row (by hash), so every task that reads the same
    fingerprint trains and scores on the same rows, whichever worker it runs on."""
    from app.batch_store.db import connect
    from app.batch_store.read import data_fingerprint, load_rows

    conn = connect(config.batches_dsn)
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        train = load_rows(conn, "train", group_number=group_number)
        holdout = load_rows(conn, "holdout", group_number=group_number)
        fingerprint = data_fingerprint(conn, group_number=group_number)
        conn.rollback()
    finally:
        conn.close()
    return train, holdout, fingerprint


def prepare_training(
    config: PipelineConfig, report: dict[str, Any], dag_run_id: str | None = None
) -> list[dict[str, Any]]:
    """Open the run's MLflow parent run and return TRAINING_TASKS small jobs at most, one per
    candidate at most (each job's candidate names, the parent run's id, the data fingerprint
    and the seed): the list the training task maps over."""
    from app.pipeline.mapped import open_parent_run
    from app.pipeline.run import RunMetadata

    group = int(report["group_number"])
    train, holdout, fingerprint = _snapshot(config, group)
    jobs = open_parent_run(
        train,
        holdout,
        RunMetadata(group_number=group, data_fingerprint=fingerprint, dag_run_id=dag_run_id),
        mlflow_settings=MlflowSettings(tracking_uri=config.mlflow_tracking_uri),
    )
    log.info(
        "parent run %s: %s",
        jobs[0].parent_run_id,
        ", ".join(f"job {i}: {job.name}" for i, job in enumerate(jobs)),
    )
    return [job.to_dict() for job in jobs]


def train_candidate(
    config: PipelineConfig, job: dict[str, Any], *, last_try: bool = True
) -> list[dict[str, Any]]:
    """Train and log the job's candidates on the rows the run was prepared on. last_try: the
    task has no retry left, so candidates that failed are left out instead of raising
    (app.pipeline.mapped.train_job)."""
    from app.pipeline.mapped import TrainingJob, train_job

    training = TrainingJob.from_dict(job)
    if training.group_number is None:
        raise ValueError("a pipeline job names its group")
    train, holdout, fingerprint = _snapshot(config, training.group_number)
    if fingerprint != training.data_fingerprint:
        raise DataChangedError(
            f"batches_db holds other rows (fingerprint {fingerprint[:12]}) than the run was"
            f" prepared on ({str(training.data_fingerprint)[:12]})"
        )
    results = train_job(
        training,
        train,
        holdout,
        last_try=last_try,
        mlflow_settings=MlflowSettings(tracking_uri=config.mlflow_tracking_uri),
    )
    return [result.to_dict() for result in results]


def pick_champion(
    config: PipelineConfig,
    jobs: Sequence[dict[str, Any]],
    results: Iterable[Sequence[dict[str, Any]]],
) -> dict[str, Any]:
    """Choose the champion among the candidates that trained (results: each training task's
    list, flattened here), log it (with its ONNX form) and close the parent run; the result
    is what register_and_promote takes."""
    from app.batch_store.read import load_rows
    from app.onnx_model import log_onnx_artifacts
    from app.pipeline.mapped import CandidateResult, TrainingJob
    from app.pipeline.mapped import pick_champion as pick

    training = [TrainingJob.from_dict(j) for j in jobs]
    holdout = load_rows(config.batches_dsn, "holdout", group_number=training[0].group_number)
    trained = pick(
        training,
        [CandidateResult.from_dict(r) for task in results for r in task],
        holdout,
        mlflow_settings=MlflowSettings(tracking_uri=config.mlflow_tracking_uri),
        champion_hook=log_onnx_artifacts,
    )
    return trained.to_dict()


def train_and_evaluate(
    config: PipelineConfig, report: dict[str, Any], dag_run_id: str | None = None
) -> dict[str, Any]:
    """prepare_training, train_candidate for each job and pick_champion, one after the other
    in this process (benchmarks/pipeline_bench.py): what the DAG's tasks do, unparallelised.
    Each job gets its one try (last_try), as a task with no retries would."""
    jobs = prepare_training(config, report, dag_run_id=dag_run_id)
    results = [train_candidate(config, job) for job in jobs]
    return pick_champion(config, jobs, results)


def register_and_promote(config: PipelineConfig, trained: dict[str, Any]) -> dict[str, Any]:
    """Register the champion as a new version and move the production alias only if it beats
    the version the alias points to now on the current held-out rows."""
    from app.batch_store.read import load_rows
    from app.pipeline.registry import register_and_promote as register
    from app.pipeline.run import TrainedRun

    run = TrainedRun.from_dict(trained)
    holdout = load_rows(config.batches_dsn, "holdout", group_number=run.group_number)
    result = register(
        run, holdout, mlflow_settings=MlflowSettings(tracking_uri=config.mlflow_tracking_uri)
    )
    return result.to_dict()


def reload_inference_api(config: PipelineConfig, promotion: dict[str, Any]) -> dict[str, Any]:
    """Tell the inference API to load the production model now. Best effort: the API follows
    the alias on its own too, so a failure is reported, never raised."""
    if not promotion.get("promoted"):
        return {"reloaded": False, "reason": "production alias unchanged"}
    if not config.inference_api_url:
        return {"reloaded": False, "reason": "no inference API configured"}
    url = f"{config.inference_api_url.rstrip('/')}/model/reload"
    token = InferenceClientSettings().admin_token
    try:
        response = requests.post(
            url, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=(3, 60)
        )
    except requests.RequestException as exc:
        log.warning("inference API reload failed (%s); it will follow the alias itself", exc)
        return {"reloaded": False, "reason": f"{type(exc).__name__}: {exc}"}
    if response.status_code >= 400:
        log.warning(
            "inference API reload answered %s: %s", response.status_code, response.text[:500]
        )
        return {"reloaded": False, "reason": f"HTTP {response.status_code}"}
    return {"reloaded": True, "status": response.status_code, "url": urlsplit(url).path}
