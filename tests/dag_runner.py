"""Run the pipeline DAG once with dag.test() and print each task's final state as JSON.

Started by tests/test_dag.py in a subprocess, so that Airflow reads its configuration (the
test PostgreSQL metadata database, the pipeline's settings as environment variables) from a clean
environment, the way the scheduler's processes do.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    sys.path.insert(0, str(REPO_ROOT))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    if bag.import_errors:
        print(json.dumps({"import_errors": {k: str(v) for k, v in bag.import_errors.items()}}))
        return 2
    dag = bag.get_dag("forest_cover_mlops_pipeline")
    run = dag.test()
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    tries = {ti.task_id: ti.try_number for ti in run.get_task_instances()}
    print("DAG_RESULT " + json.dumps({"state": str(run.state), "tasks": states, "tries": tries}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
