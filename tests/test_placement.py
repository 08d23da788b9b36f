"""Services on several hosts, as Ansible derives them from an inventory
(group_vars/all/placement.yml with ansible/filter_plugins/placement.py): one host keeps
everything on loopback; the lab's three hosts open each port to exactly its callers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

ANSIBLE = REPO_ROOT / "ansible"
PORTS = yaml.safe_load((ANSIBLE / "group_vars" / "all" / "ports.yml").read_text())
FACTS = [
    "mlops_listen",
    "common_firewall_private_ports",
    "postgresql_hba_entries",
    "postgresql_listen_addresses",
    "mysql_bind_address",
    "mysql_user_hosts",
    "proxy_inference_api_upstream",
    "airflow_training_tasks",
]
ANSIBLE_BIN = Path(sys.executable).parent / "ansible"


def placement(inventory: str | Path, host: str, *extra: str) -> dict[str, object]:
    """The placement facts of one host, as the playbook would see them (no connection).
    inventory: a folder of ansible/inventories/, or the path of an inventory file."""
    hosts_file = inventory if isinstance(inventory, Path) else f"inventories/{inventory}/hosts.yml"
    expression = "{{ {" + ", ".join(f"'{f}': {f}" for f in FACTS) + "} | to_json }}"
    result = subprocess.run(
        [ANSIBLE_BIN, "-i", str(hosts_file), host, *extra,
         "-m", "ansible.builtin.debug", "-a", f"msg={expression}", "-o"],
        cwd=ANSIBLE, env={**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg")},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    line = result.stdout.strip().splitlines()[-1]
    return json.loads(json.loads(line.split("=>", 1)[1])["msg"])


def test_one_host_keeps_every_backend_on_loopback() -> None:
    facts = placement("local", "mlops-local")
    assert set(facts["mlops_listen"].values()) == {"127.0.0.1"}
    assert facts["common_firewall_private_ports"] == []
    assert facts["postgresql_hba_entries"] == []
    assert facts["postgresql_listen_addresses"] == "localhost"
    assert facts["mysql_bind_address"] == "127.0.0.1"
    assert facts["mysql_user_hosts"] == ["localhost", "127.0.0.1"]
    # The LocalExecutor: one training task (each extra one only adds its start on one host).
    assert int(facts["airflow_training_tasks"]) == 1


@pytest.fixture(scope="module")
def lab() -> dict[str, dict[str, object]]:
    """The lab with the LocalExecutor (its inventory's default is the CeleryExecutor)."""
    hosts = yaml.safe_load((ANSIBLE / "inventories" / "lab" / "hosts.yml").read_text())
    return {
        name: placement("lab", name, "-e", "mlops_airflow_executor=LocalExecutor")
        for name in hosts["all"]["children"]["mlops"]["hosts"]
    }


def rules(facts: dict[str, object]) -> dict[int, list[str]]:
    return {r["port"]: r["sources"] for r in facts["common_firewall_private_ports"]}


def test_the_lab_opens_each_private_port_to_exactly_its_callers(lab) -> None:
    data, control, serve = "10.77.0.11", "10.77.0.12", "10.77.0.13"
    assert rules(lab["lab-data"]) == {
        PORTS["postgresql_port"]: [control, serve],  # Airflow and MLflow's users; the UI
        PORTS["mysql_port"]: [control],  # MLflow
        PORTS["minio_api_port"]: [control],  # MLflow's artifact proxy
        PORTS["minio_console_port"]: [serve],  # the TLS proxy
    }
    assert rules(lab["lab-control"]) == {
        PORTS["mlflow_port"]: [serve],  # the inference API, the UI, the proxy
        PORTS["airflow_api_port"]: [serve],  # the proxy
        PORTS["data_api_port"]: [serve],  # the proxy (the DAG is on the same host)
    }
    assert rules(lab["lab-serve"]) == {PORTS["inference_api_port"]: [control]}  # the reload
    assert data not in str(lab["lab-data"]["common_firewall_private_ports"])


def test_the_lab_databases_admit_each_client_host_for_its_own_databases(lab) -> None:
    data = lab["lab-data"]
    assert data["postgresql_listen_addresses"] == "localhost,10.77.0.11"
    assert {(e["source"], e["databases"], e["users"]) for e in data["postgresql_hba_entries"]} == {
        ("10.77.0.12/32", "batches_db,airflow", "batches,airflow"),
        ("10.77.0.13/32", "batches_db", "batches_reader"),
        ("10.77.0.12/32", "mlflow_auth", "mlflow_auth"),
    }
    assert data["mysql_bind_address"] == "127.0.0.1,10.77.0.11"
    assert data["mysql_user_hosts"] == ["localhost", "127.0.0.1", "10.77.0.12"]
    # What nobody calls from another host stays on loopback.
    assert lab["lab-serve"]["mlops_listen"]["ui"] == "127.0.0.1"
    assert lab["lab-control"]["mlops_listen"]["minio_api"] == "127.0.0.1"


@pytest.fixture(scope="module")
def lab_celery() -> dict[str, dict[str, object]]:
    hosts = yaml.safe_load((ANSIBLE / "inventories" / "lab" / "hosts.yml").read_text())
    return {name: placement("lab", name) for name in hosts["all"]["children"]["mlops"]["hosts"]}


def test_the_lab_with_celery_workers_opens_what_the_workers_call(lab, lab_celery) -> None:
    """Workers on lab-control and lab-serve: the serve host's worker reaches the broker, the
    databases (its tasks and Celery's result backend) and the api-server's Execution API;
    the api-server reads its task logs. The LocalExecutor (the `lab` fixture) opens none of it."""
    control, serve = "10.77.0.12", "10.77.0.13"
    assert rules(lab_celery["lab-control"]) == {
        **rules(lab["lab-control"]),
        PORTS["redis_port"]: [serve],
    }
    assert rules(lab_celery["lab-serve"]) == {
        **rules(lab["lab-serve"]),
        PORTS["airflow_worker_log_server_port"]: [control],
    }
    assert rules(lab_celery["lab-data"]) == rules(lab["lab-data"])
    assert lab_celery["lab-control"]["mlops_listen"]["redis"] == "0.0.0.0"
    assert lab["lab-control"]["mlops_listen"]["redis"] == "127.0.0.1"
    hba = {(e["source"], e["databases"]) for e in lab_celery["lab-data"]["postgresql_hba_entries"]}
    assert (f"{serve}/32", "batches_db,airflow") in hba
    hba_local = {(e["source"], e["databases"]) for e in lab["lab-data"]["postgresql_hba_entries"]}
    assert (f"{serve}/32", "batches_db,airflow") not in hba_local


def test_a_second_inference_host_is_a_replica_behind_the_proxy(tmp_path: Path) -> None:
    """The lab with lab-control in group inference_api too: the proxy on lab-serve balances
    both, and lab-control's inference API opens to the proxy's host only."""
    lab_dir = ANSIBLE / "inventories" / "lab"
    inventory = yaml.safe_load((lab_dir / "hosts.yml").read_text())
    inventory["all"]["children"]["inference_api"]["hosts"]["lab-control"] = None
    (tmp_path / "group_vars").symlink_to(lab_dir / "group_vars")
    hosts_file = tmp_path / "hosts.yml"
    hosts_file.write_text(yaml.safe_dump(inventory))
    serve, control = placement(hosts_file, "lab-serve"), placement(hosts_file, "lab-control")
    port = PORTS["inference_api_port"]
    upstreams = sorted(serve["proxy_inference_api_upstream"].split())
    assert upstreams == [f"10.77.0.12:{port}", f"127.0.0.1:{port}"]
    assert control["mlops_listen"]["inference_api"] == "0.0.0.0"
    assert rules(control)[port] == ["10.77.0.13"]  # the proxy's host
    # With one inference host the proxy has one upstream (the lab's own inventory).
    assert placement("lab", "lab-serve")["proxy_inference_api_upstream"] == f"127.0.0.1:{port}"


def test_training_tasks_follow_the_executor(lab, lab_celery) -> None:
    """TRAINING_TASKS: 1 with the LocalExecutor; with Celery one per worker slot: the lab's
    two workers times airflow_celery_worker_concurrency (2)."""
    assert {int(f["airflow_training_tasks"]) for f in lab.values()} == {1}
    assert {int(f["airflow_training_tasks"]) for f in lab_celery.values()} == {4}
    three_slots = placement(
        "lab", "lab-control", "-e", "mlops_airflow_executor=CeleryExecutor",
        "-e", "airflow_celery_worker_concurrency=3",
    )  # fmt: skip
    assert int(three_slots["airflow_training_tasks"]) == 6
