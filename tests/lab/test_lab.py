"""The lab: three machines in their own network namespaces (scripts/lab.sh), provisioned by
the unchanged site.yml with ansible/inventories/lab/. Slow (a quarter of an hour on 2 cores):
it runs with `make test-lab` (MLOPS_TEST_LAB=1), not in `make test`.

Everything here talks only to addresses inside the lab's namespace (`scripts/lab.sh exec`,
`scripts/lab.sh ssh`)."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(
    os.environ.get("MLOPS_TEST_LAB") != "1", reason="the lab: make test-lab (MLOPS_TEST_LAB=1)"
)

LAB = REPO_ROOT / "scripts" / "lab.sh"
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
        result = subprocess.run([str(LAB), "up"], capture_output=True, text=True, timeout=3600)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


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
