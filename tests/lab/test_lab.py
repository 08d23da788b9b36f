"""The lab: three machines in their own network namespaces (scripts/lab.sh), provisioned by
the unchanged site.yml with ansible/inventories/lab/. Slow (a quarter of an hour on 2 cores):
it runs with `make test-lab` (MLOPS_TEST_LAB=1), not in `make test`.

Everything here talks only to addresses inside the lab's namespace (`scripts/lab.sh exec`,
`scripts/lab.sh ssh`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
import yaml

from tests.conftest import REPO_ROOT

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("MLOPS_TEST_LAB") != "1", reason="the lab: make test-lab (MLOPS_TEST_LAB=1)"
    ),
    # A fresh lab (rootfs, three provisionings) takes longer than the suite's 600 s.
    pytest.mark.timeout(3600),
]

LAB = REPO_ROOT / "scripts" / "lab.sh"
T = TypeVar("T")
INVENTORY = yaml.safe_load(
    (REPO_ROOT / "ansible" / "inventories" / "lab" / "hosts.yml").read_text()
)
HOSTS = INVENTORY["all"]["children"]["mlops"]["hosts"]
PORTS = yaml.safe_load((REPO_ROOT / "ansible" / "group_vars" / "all" / "ports.yml").read_text())


def address(host: str) -> str:
    return HOSTS[host]["ansible_host"]


def on(host: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LAB), "ssh", host.removeprefix("lab-"), command],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def can_connect(client: str, server: str, port: int) -> bool:
    """A TCP connection from one lab machine to another (bash's /dev/tcp, 3 s)."""
    probe = f"timeout 3 bash -c 'exec 3<>/dev/tcp/{address(server)}/{port}' 2>/dev/null"
    return on(client, probe).returncode == 0


@pytest.fixture(scope="module")
def lab() -> None:
    if os.environ.get("MLOPS_LAB_REUSE") != "1":
        started = time.monotonic()
        result = subprocess.run([str(LAB), "up"], capture_output=True, text=True, timeout=3600)
        # What lab.sh printed (boot time, provisioning recaps) is kept for the notes.
        MEASURED.parent.mkdir(exist_ok=True)
        MEASURED.with_name("lab-up.log").write_text(result.stdout + result.stderr)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
        record(lab_up_seconds=round(time.monotonic() - started, 1))


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_every_machine_is_healthy_with_its_firewall_and_sysctls(lab, host: str) -> None:
    status = on(host, "mlops-status")
    assert status.returncode == 0, status.stdout + status.stderr
    ruleset = on(host, "nft list ruleset").stdout
    assert "policy drop" in ruleset, ruleset
    assert on(host, "ip -4 -br addr show host0").stdout.split()[2].startswith(address(host))
    assert on(host, "test -s /etc/sysctl.d/60-mlops.conf").returncode == 0


@pytest.mark.parametrize(
    ("client", "server", "port", "allowed"),
    [
        ("lab-control", "lab-data", PORTS["postgresql_port"], True),  # Airflow, batches_db
        ("lab-serve", "lab-data", PORTS["postgresql_port"], True),  # the UI's reader role
        ("lab-control", "lab-data", PORTS["mysql_port"], True),  # MLflow
        ("lab-serve", "lab-data", PORTS["mysql_port"], False),  # nobody on serve needs it
        ("lab-serve", "lab-data", PORTS["minio_api_port"], False),  # only MLflow's host
        ("lab-serve", "lab-control", PORTS["mlflow_port"], True),  # inference API, UI
        ("lab-data", "lab-control", PORTS["mlflow_port"], False),
        ("lab-control", "lab-serve", PORTS["inference_api_port"], True),  # the DAG's reload
        ("lab-data", "lab-serve", PORTS["inference_api_port"], False),
        ("lab-control", "lab-serve", PORTS["ui_port"], False),  # behind the proxy only
        ("lab-data", "lab-serve", PORTS["proxy_ui_port"], True),  # what people open
    ],
)
def test_each_port_answers_exactly_the_hosts_that_use_it(lab, client, server, port, allowed):
    assert can_connect(client, server, port) is allowed


def test_the_ui_answers_through_the_proxy_inside_the_lab(lab) -> None:
    ca = REPO_ROOT / "ansible" / ".secrets" / "lab" / "proxy-ca" / "ca.crt"
    url = f"https://{address('lab-serve')}:{PORTS['proxy_ui_port']}/health"
    result = subprocess.run(
        [str(LAB), "exec", "curl", "-sS", "--cacert", str(ca), "-o", "/dev/null",
         "-w", "%{http_code}", url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.stdout == "200", result.stdout + result.stderr


def lab_executor() -> str:
    """The executor the lab was provisioned with (airflow.cfg on the scheduler's host)."""
    found = on("lab-control", "sed -n 's/^executor *= *//p' /etc/mlops/airflow.cfg").stdout
    return found.strip()


@pytest.mark.parametrize(
    ("client", "server", "port", "allowed"),
    [
        ("lab-serve", "lab-control", PORTS["redis_port"], True),  # the worker on serve
        ("lab-data", "lab-control", PORTS["redis_port"], False),  # no worker on data
        ("lab-control", "lab-serve", PORTS["airflow_worker_log_server_port"], True),  # logs
        ("lab-data", "lab-serve", PORTS["airflow_worker_log_server_port"], False),
        ("lab-serve", "lab-data", PORTS["minio_api_port"], False),  # artifacts via MLflow
    ],
)
def test_with_celery_workers_only_their_callers_reach_redis_and_their_logs(
    lab, client, server, port, allowed
):
    """With `-e mlops_airflow_executor=CeleryExecutor` (workers on lab-control and lab-serve,
    Redis on lab-control): the broker and the workers' log servers open to exactly their
    callers."""
    if lab_executor() != "CeleryExecutor":
        pytest.skip("the lab runs the LocalExecutor (provision it with the CeleryExecutor)")
    assert can_connect(client, server, port) is allowed


# --- the DAG on two Celery workers ------------------------------------------------------------
DAG_ID = "forest_cover_mlops_pipeline"
WORKERS = sorted(INVENTORY["all"]["children"]["airflow_workers"]["hosts"])
MEASURED = REPO_ROOT / "test-artifacts" / "lab-measurements.json"


def airflow_rows(query: str) -> list[list[str]]:
    """Rows of a query on Airflow's database (PostgreSQL on lab-data)."""
    done = on("lab-data", f"runuser -u postgres -- psql -d airflow -AtF '|' -c \"{query}\"")
    assert done.returncode == 0, done.stderr
    return [line.split("|") for line in done.stdout.splitlines() if line]


def wait_for(find: Callable[[], T | None], what: str, timeout: float, every: float = 3) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        time.sleep(every)
    runs = airflow_rows(
        f"SELECT run_id, state FROM dag_run WHERE dag_id = '{DAG_ID}' ORDER BY start_date"
    )
    pytest.fail(f"no {what} within {timeout:.0f} s; runs: {runs}")


def trained_runs(state: str = "success") -> list[str]:
    """Runs in this state that trained and registered (not short-circuited), oldest first."""
    return [
        row[0]
        for row in airflow_rows(
            f"SELECT r.run_id FROM dag_run r JOIN task_instance t ON t.run_id = r.run_id"
            f" AND t.dag_id = r.dag_id WHERE r.dag_id = '{DAG_ID}' AND r.state = '{state}'"
            " AND t.task_id = 'register_and_promote' AND t.state = 'success'"
            " ORDER BY r.start_date"
        )
    ]


def training_tasks(run_id: str) -> list[dict[str, str]]:
    rows = airflow_rows(
        "SELECT map_index, state, hostname, try_number FROM task_instance"
        f" WHERE dag_id = '{DAG_ID}' AND run_id = '{run_id}' AND task_id LIKE 'train_candidate%'"
        " ORDER BY map_index"
    )
    return [dict(zip(("map_index", "state", "hostname", "try"), row, strict=True)) for row in rows]


def run_seconds(run_id: str) -> float:
    (row,) = airflow_rows(
        "SELECT EXTRACT(EPOCH FROM end_date - start_date) FROM dag_run"
        f" WHERE dag_id = '{DAG_ID}' AND run_id = '{run_id}'"
    )
    return round(float(row[0]), 1)


def record(**numbers: object) -> None:
    MEASURED.parent.mkdir(exist_ok=True)
    known = json.loads(MEASURED.read_text()) if MEASURED.exists() else {}
    MEASURED.write_text(json.dumps(known | numbers, indent=2) + "\n")


@pytest.fixture(scope="module")
def celery(lab) -> None:
    if lab_executor() != "CeleryExecutor":
        pytest.skip("the lab runs the LocalExecutor (provision it with the CeleryExecutor)")


def test_the_dag_promotes_a_model_trained_on_both_workers(celery) -> None:
    # Provisioning unpauses the DAG: its first run starts at once.
    # (The first with mapped training tasks: a reused lab may hold runs of an older DAG.)
    run_id = wait_for(
        lambda: next((r for r in trained_runs() if training_tasks(r)), None),
        "trained and promoted run",
        900,
    )
    tasks = training_tasks(run_id)
    assert len(tasks) >= len(WORKERS), tasks
    assert {t["hostname"] for t in tasks} == set(WORKERS), tasks
    ready = on("lab-serve", "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/ready")
    assert ready.stdout == "200", "the inference API did not load the promoted model"
    record(dag_run_seconds_two_workers=run_seconds(run_id), training_tasks=len(tasks))


def test_a_killed_worker_s_task_is_retried_on_the_other(celery) -> None:
    """SIGKILL every process of lab-serve's worker while it trains: Airflow finds the task's
    heartbeat gone, retries it on lab-control, and the run succeeds. The next run, with that
    worker still down, gives the DAG's time on one worker."""
    killed, other = "lab-serve", "lab-control"
    before = set(trained_runs())

    def training_on_killed() -> tuple[str, str] | None:
        for run_id, map_index in airflow_rows(
            "SELECT run_id, map_index FROM task_instance WHERE dag_id = '" + DAG_ID + "'"
            " AND task_id LIKE 'train_candidate%' AND state = 'running'"
            f" AND hostname = '{killed}'"
        ):
            return run_id, map_index
        return None

    run_id, map_index = wait_for(training_on_killed, f"training task on {killed}", 600, 1)
    unit = "airflow-celery-worker.service"
    try:
        # The stop cancels the restart (2 s later): the retry must go to the other worker.
        on(killed, f"systemctl kill -s SIGKILL {unit}; systemctl stop {unit}")
        wait_for(lambda: run_id in trained_runs(), f"success of {run_id}", 900)
        (task,) = [t for t in training_tasks(run_id) if t["map_index"] == map_index]
        assert (task["hostname"], task["state"]) == (other, "success"), task
        assert int(task["try"]) >= 2, task
        record(dag_run_seconds_with_a_killed_worker=run_seconds(run_id))
        after = wait_for(
            lambda: [r for r in trained_runs() if r not in before and r != run_id],
            "a run on one worker",
            900,
        )[0]
        assert {t["hostname"] for t in training_tasks(after)} == {other}
        record(dag_run_seconds_one_worker=run_seconds(after))
    finally:
        on(killed, f"systemctl start {unit}")


def test_memory_per_host_is_recorded(lab) -> None:
    """The PSS of every process of each machine (its own PID namespace; `free` would show the
    host's memory, the machines being containers)."""
    pss = "cat /proc/[0-9]*/smaps_rollup 2>/dev/null | awk '/^Pss:/ {s += $2} END {print s}'"
    used = {host: int(on(host, pss).stdout.strip() or 0) // 1024 for host in sorted(HOSTS)}
    assert all(mib > 100 for mib in used.values()), used
    record(memory_pss_mib=used)


def test_a_second_provisioning_changes_nothing(lab) -> None:
    started = time.monotonic()
    result = subprocess.run([str(LAB), "provision"], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    recap = dict(re.findall(r"^\s*(lab-\w+)\s*:.*?changed=(\d+)", result.stdout, re.M))
    assert recap == dict.fromkeys(sorted(HOSTS), "0"), recap
    record(repeat_provisioning_seconds=round(time.monotonic() - started, 1))
