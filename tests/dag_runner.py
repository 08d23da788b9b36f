"""Run the pipeline DAG once with dag.test() and print each task's final state as JSON.

Started by tests/test_dag.py in a subprocess, so that Airflow reads its configuration (the
test PostgreSQL metadata database, the pipeline's settings as environment variables) from a clean
environment, the way the scheduler's processes do.
"""

from __future__ import annotations

import json
import sys
import time
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
    started = time.perf_counter()
    run = dag.test()
    seconds = time.perf_counter() - started
    tis = run.get_task_instances()
    # A mapped task's instances share its task id: `tasks` holds their state when they all
    # agree ("mixed" otherwise), `mapped` each one's, by map index.
    states: dict[str, set[str]] = {}
    mapped: dict[str, list[dict[str, object]]] = {}
    for ti in tis:
        states.setdefault(ti.task_id, set()).add(str(ti.state))
        if ti.map_index >= 0:
            mapped.setdefault(ti.task_id, []).append(
                {
                    "map_index": ti.map_index,
                    "name": ti.rendered_map_index,
                    "state": str(ti.state),
                    "try_number": ti.try_number,
                }
            )
    tasks = {k: v.pop() if len(v) == 1 else "mixed" for k, v in states.items()}
    tries = {ti.task_id: ti.try_number for ti in tis if ti.map_index < 0}
    for entries in mapped.values():
        entries.sort(key=lambda e: int(str(e["map_index"])))
    outcome = {
        "state": str(run.state),
        "tasks": tasks,
        "tries": tries,
        "mapped": mapped,
        "seconds": seconds,
    }
    print("DAG_RESULT " + json.dumps(outcome))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
