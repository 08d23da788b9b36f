"""forest_cover_mlops_pipeline: fetch a Covertype batch every 5 minutes, store it, retrain,
register and promote the champion, and tell the inference API to reload.

    fetch_batch -> store_batch -> has_new_rows -> prepare_training
        -> train_candidate (mapped: TRAINING_TASKS tasks, a share of the candidates each)
        -> pick_champion
        -> register_and_promote -> reload_inference_api

The DAG is deliberately thin: every task is the function of the same name in
app.pipeline.steps, so it can be tested and run without Airflow. Configuration comes from
environment variables (app/settings.py; /etc/mlops/airflow.env on the VM); nothing is
hard-coded here. Tasks pass counts and ids between them, never rows: fetch_batch saves the
delivered batch in batches_db and store_batch reads it back by its id.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import TriggerRule, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

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

    @task(execution_timeout=timedelta(minutes=3), **SERVICE_RETRIES)
    def prepare_training(report: dict[str, Any]) -> list[dict[str, Any]]:
        # The MLflow parent run, and min(TRAINING_TASKS, candidates) small jobs for the mapped
        # task below.
        from app.pipeline.steps import prepare_training as step

        return step(_config(), report, dag_run_id=_run_id())

    # One task instance per job (dynamic task mapping): the executor runs them side by side
    # (LocalExecutor's parallelism, or any Celery worker), each candidate in its own child run.
    # The map index shows the job's candidates ("a+b") in the UI.
    @task(
        execution_timeout=timedelta(minutes=15),
        map_index_template="{{ candidate_names }}",
        **SERVICE_RETRIES,
    )
    def train_candidate(job: dict[str, Any]) -> list[dict[str, Any]]:
        from app.pipeline.steps import train_candidate as step

        context = get_current_context()
        context["candidate_names"] = "+".join(job["candidates"])  # type: ignore[typeddict-unknown-key]
        # A candidate that fails raises while retries are left (the retry reuses the others'
        # finished child runs); the last try returns the others' results instead.
        last_try = context["ti"].try_number > context["task"].retries
        return step(_config(), job, last_try=last_try)

    # Waits for every training task, retries included, and runs when at least one upstream
    # succeeded (prepare_training counts): a candidate that failed for good (in a task that
    # failed, or left out by its task's last try) is named on the parent run and the version;
    # with none trained it fails the run, after marking the parent run FAILED. Either way
    # nothing is registered from a half-run.
    @task(
        execution_timeout=timedelta(minutes=10),
        trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS,
        **SERVICE_RETRIES,
    )
    def pick_champion(
        jobs: list[dict[str, Any]], results: list[list[dict[str, Any]]]
    ) -> dict[str, Any]:
        from app.pipeline.run import CandidateFailedError
        from app.pipeline.steps import pick_champion as step

        try:
            return step(_config(), jobs, results)
        except CandidateFailedError as exc:
            # Every candidate failed: a retry of this task would find the same.
            raise AirflowFailException(str(exc)) from exc

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
    jobs = prepare_training(report)
    gate >> jobs
    results = train_candidate.expand(job=jobs)
    trained = pick_champion(jobs, results)
    reload_inference_api(register_and_promote(trained))


forest_cover_mlops_pipeline()
