"""forest_cover_mlops_pipeline: fetch a Covertype batch every 5 minutes, store it, retrain,
register and promote the champion, and tell the inference API to reload.

The DAG is deliberately thin: every task is the function of the same name in
app.pipeline.steps, so it can be tested and run without Airflow. Configuration comes from
environment variables (app/settings.py; /etc/mlops/airflow.env on the VM); nothing is
hard-coded here. Tasks pass counts and ids between them, never rows: fetch_batch saves the
delivered batch in batches_db and store_batch reads it back by its id.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import dag, get_current_context, task

from app.settings import DagSettings

_retry = DagSettings()
# Retry policy for steps that talk to other services: the data API may restart and MLflow may
# be briefly unavailable; exponential backoff avoids hammering either of them.
SERVICE_RETRIES: dict[str, Any] = {
    "retries": _retry.retries,
    "retry_delay": timedelta(seconds=_retry.retry_delay_seconds),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=2),
}


def _config():  # noqa: ANN202 - imported lazily so parsing the DAG file stays fast
    from app.pipeline.steps import PipelineConfig

    return PipelineConfig.from_settings()


def _run_id() -> str:
    return str(get_current_context()["run_id"])


@dag(
    dag_id="forest_cover_mlops_pipeline",
    description="Covertype batches -> PostgreSQL -> candidates -> MLflow registry -> inference",
    schedule=timedelta(minutes=5),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=20),
    default_args={"owner": "mlops", "execution_timeout": timedelta(minutes=5)},
    tags=["forest-cover", "mlops"],
    doc_md=__doc__,
)
def forest_cover_mlops_pipeline() -> None:
    @task(execution_timeout=timedelta(minutes=2), **SERVICE_RETRIES)
    def fetch_batch() -> dict[str, Any]:
        from app.pipeline.steps import fetch_batch as step

        return step(_config())

    @task(execution_timeout=timedelta(minutes=3))
    def store_batch(fetched: dict[str, Any]) -> dict[str, Any]:
        from app.pipeline.steps import store_batch as step

        return step(_config(), fetched)

    @task.short_circuit(execution_timeout=timedelta(minutes=1))
    def has_new_rows(report: dict[str, Any]) -> bool:
        # Nothing new (exhausted, or a repeat of stored rows) is a normal outcome: skip the rest.
        from app.pipeline.steps import has_new_rows as step

        return step(report)

    @task(execution_timeout=timedelta(minutes=15), **SERVICE_RETRIES)
    def train_and_evaluate(report: dict[str, Any]) -> dict[str, Any]:
        from app.pipeline.steps import train_and_evaluate as step

        return step(_config(), report, dag_run_id=_run_id())

    @task(execution_timeout=timedelta(minutes=10), **SERVICE_RETRIES)
    def register_and_promote(trained: dict[str, Any]) -> dict[str, Any]:
        from app.pipeline.steps import register_and_promote as step

        return step(_config(), trained)

    @task(execution_timeout=timedelta(minutes=1))
    def reload_inference_api(promotion: dict[str, Any]) -> dict[str, Any]:
        # Best effort: the inference API also follows the alias on its own, so a failure here
        # is logged and returned, never raised.
        from app.pipeline.steps import reload_inference_api as step

        return step(_config(), promotion)

    report = store_batch(fetch_batch())
    gate = has_new_rows(report)
    trained = train_and_evaluate(report)
    gate >> trained
    reload_inference_api(register_and_promote(trained))


forest_cover_mlops_pipeline()
