"""End to end: the whole platform on a fresh local machine, the way a user meets it.

scripts/machine.sh builds a Debian 13 machine (systemd-nspawn, sharing the host's network) and
provisions it with ansible/site.yml; then: every unit of mlops.target is active -> every health
endpoint answers 200 -> the DAG runs until a model is promoted, and once more with another
batch -> no generated secret shows in a process list, unit file, journal or task log, and
MLflow's S3 keys are its own MinIO user's (one policy, only the bucket), not root's -> the
inference API predicts with the served version -> the NiceGUI page, which sends an anonymous
browser to its login page, logs in and predicts in headless Chromium -> a second site.yml
changes nothing -> Chromium logs in to the MinIO console, MLflow (basic auth; anonymous is
refused) and Airflow (its login form) -> the machine restarts and comes back with its
batches, runs, registered versions and alias intact, and still predicts the same.

Needs root, systemd-nspawn, debootstrap and Debian's chromium; about 10 minutes on 2 cores. The
machine's disk is rebuilt from the cached pristine rootfs (PURGE), so a local machine left
stopped by `make down` is replaced; a running one makes the test skip. Each phase's duration goes
to test-artifacts/e2e-timings.json, with the logs of every machine.sh call and mlops-status
tables (memory per unit) next to it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import ssl
import string
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from secrets import choice
from typing import Any, TypeVar
from urllib.parse import quote

import certifi
import httpx
import psycopg2
import pytest
import yaml

from ui import examples
from ui.feature_form import label_of

REPO_ROOT = Path(__file__).resolve().parents[2]
MACHINE = REPO_ROOT / "scripts" / "machine.sh"
STATE = REPO_ROOT / "var" / "machine"
SECRETS = REPO_ROOT / "ansible" / ".secrets" / "local"
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Short, so the DAG's runs get new batches within the test (the course's interval is 300 s),
# long enough that the 10 batches are not all gone before the second run.
DATA_API_INTERVAL_SECONDS = 40
DAG_ID = "forest_cover_mlops_pipeline"
# The names provisioning gives the experiment, the model and its alias.
NAMES = yaml.safe_load((REPO_ROOT / "ansible" / "group_vars" / "all" / "names.yml").read_text())
MODEL_NAME = NAMES["mlops_registered_model"]
ALIAS = NAMES["mlops_production_alias"]
EXPERIMENT = NAMES["mlops_experiment_name"]

# Every port as provisioning defines it (the machine's services are on the host's loopback).
PORTS = yaml.safe_load((REPO_ROOT / "ansible" / "group_vars" / "all" / "ports.yml").read_text())
# What a user calls: the TLS proxy (role proxy), one HTTPS port per service, its
# certificate signed by the CA the playbook generated (the file users import).
CA_CERT = SECRETS / "proxy-ca" / "ca.crt"
PROXY_PORTS = {name: int(PORTS[name]) for name in PORTS["mlops_forwarded_ports"]}
AIRFLOW = f"https://127.0.0.1:{PORTS['proxy_airflow_port']}"
MLFLOW = f"https://127.0.0.1:{PORTS['proxy_mlflow_port']}"
INFERENCE = f"https://127.0.0.1:{PORTS['proxy_inference_api_port']}"
UI = f"https://localhost:{PORTS['proxy_ui_port']}"
MINIO_CONSOLE = f"https://localhost:{PORTS['proxy_minio_console_port']}"
DATA_API = f"https://127.0.0.1:{PORTS['proxy_data_api_port']}"
SSH_PORT = 2222
BUCKET = "mlflows3"
# The health checks go to each service on loopback, behind the proxy, and to the proxy.
HEALTH = {
    "minio": f"http://127.0.0.1:{PORTS['minio_api_port']}/minio/health/live",
    "mlflow": f"http://127.0.0.1:{PORTS['mlflow_port']}/health",
    "airflow": f"http://127.0.0.1:{PORTS['airflow_api_port']}/api/v2/monitor/health",
    "data-api": f"http://127.0.0.1:{PORTS['data_api_port']}/health",
    "inference-api": f"http://127.0.0.1:{PORTS['inference_api_port']}/health",
    "ui": f"http://127.0.0.1:{PORTS['ui_port']}/health",
    "proxy": f"https://127.0.0.1:{PORTS['proxy_ui_port']}/proxy-health",
}
# Each user-facing URL through the proxy, and what its backend answers there.
PROXIED = {
    "proxy_ui_port": ("/health", 200),
    "proxy_airflow_port": ("/api/v2/monitor/health", 200),
    "proxy_mlflow_port": ("/health", 200),
    "proxy_minio_console_port": ("/login", 200),
    "proxy_inference_api_port": ("/health", 200),
    "proxy_data_api_port": ("/health", 200),
}
EXPECTED_UNITS = {
    "postgresql.service",
    "mariadb.service",
    "minio.service",
    "mlflow.service",
    "airflow-api-server.service",
    "airflow-scheduler.service",
    "airflow-dag-processor.service",
    "airflow-triggerer.service",
    "data-api.service",
    "inference-api.service",
    "ui.service",
    "nginx.service",
}
# postgresql.service is Debian's umbrella (a oneshot); the server is the cluster's own unit.
POSTGRES_CLUSTER_UNIT = "postgresql@17-main.service"
# Every process the fault test kills: each unit's main process, the databases' included.
FAULT_UNITS = [
    *sorted(EXPECTED_UNITS - {"postgresql.service"}),
    POSTGRES_CLUSTER_UNIT,
]
# A killed unit must be active and every health endpoint answer within this.
RECOVERY_SECONDS = 15

T = TypeVar("T")


def tls() -> ssl.SSLContext:
    """Verification against the generated CA only (not the host's trust store)."""
    return ssl.create_default_context(cafile=str(CA_CERT))


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(os.environ.get("MLOPS_SKIP_E2E") == "1", reason="MLOPS_SKIP_E2E=1 is set"),
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0,
        reason="needs root: debootstrap and systemd-nspawn build and boot the local machine",
    ),
    pytest.mark.skipif(
        shutil.which("systemd-nspawn") is None or shutil.which("debootstrap") is None,
        reason="needs systemd-nspawn and debootstrap (apt-get install systemd-container "
        "debootstrap)",
    ),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)"
    ),
]


# --- helpers ----------------------------------------------------------------------------------
class Phases:
    """Wall-clock time per phase, written out even when a phase fails."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seconds: dict[str, float] = {}
        self.notes: dict[str, Any] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(time.monotonic() - t, 1)

    def write(self, outcome: str) -> None:
        report = {
            "outcome": outcome,
            "total_seconds": round(time.monotonic() - self.started, 1),
            "phases_seconds": self.seconds,
            **self.notes,
        }
        (ARTIFACTS / "e2e-timings.json").write_text(json.dumps(report, indent=2) + "\n")
        print("\n" + json.dumps(report, indent=2))


# What machine.sh printed in this run (assert_no_secret_exposed reads them).
MACHINE_LOGS: list[Path] = []


def machine(*args: str, log: str, env: dict[str, str] | None = None) -> str:
    """Run scripts/machine.sh; its output goes to test-artifacts/e2e-<log>.log."""
    out = ARTIFACTS / f"e2e-{log}.log"
    MACHINE_LOGS.append(out)
    proc = subprocess.run(
        [str(MACHINE), *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    out.write_text(proc.stdout)
    assert proc.returncode == 0, (
        f"machine.sh {' '.join(args)} failed ({proc.returncode}); {out}:\n{proc.stdout[-4000:]}"
    )
    return proc.stdout


def ssh(command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(MACHINE), "ssh", command], capture_output=True, text=True, check=False, timeout=120
    )
    if check:
        assert proc.returncode == 0, f"{command!r} in the machine: {proc.stdout}{proc.stderr}"
    return proc


def provision_recap() -> tuple[dict[str, int], list[str]]:
    """The machine's PLAY RECAP counters in the latest provisioning log, and the tasks that
    reported a change."""
    text = (STATE / "logs" / "provision-latest.log").read_text()
    match = re.search(r"^mlops-local\s*:\s*(.*)$", text, re.MULTILINE)
    assert match, "no PLAY RECAP line for mlops-local in the provisioning log"
    counters = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}
    changed, task = [], ""
    for line in text.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.rstrip("* ")
        elif line.startswith("changed:"):
            changed.append(task)
    return counters, changed


def wait_until(
    check: Callable[[], T | None],
    what: str,
    timeout: float,
    interval: float = 5.0,
    diagnose: Callable[[], str] | None = None,
) -> T:
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, psycopg2.Error, KeyError, ValueError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            detail = diagnose() if diagnose else ""
            pytest.fail(f"{what}: not within {timeout:.0f} s. {last_error}\n{detail}")
        time.sleep(interval)


class Airflow:
    """The REST API as the generated admin (FAB auth manager, JWT from /auth/token)."""

    def __init__(self, password: str) -> None:
        self.client = httpx.Client(base_url=AIRFLOW, timeout=30, verify=tls())
        self.password = password
        self.token = ""

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for _ in range(2):
            if not self.token:
                answer = self.client.post(
                    "/auth/token", json={"username": "admin", "password": self.password}
                )
                assert answer.status_code == 201, f"token: {answer.status_code} {answer.text}"
                self.token = answer.json()["access_token"]
            response = self.client.request(
                method, path, headers={"Authorization": f"Bearer {self.token}"}, **kwargs
            )
            if response.status_code != 401:
                return response
            self.token = ""  # expired or issued before a restart: log in again
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        code = response.status_code
        assert code < 300, f"{method} {path}: {code} {response.text}"
        return response.json()

    def runs(self, *states: str) -> list[dict[str, Any]]:
        params = [("state", s) for s in states] + [("order_by", "-start_date"), ("limit", "100")]
        return self.json("GET", f"/api/v2/dags/{DAG_ID}/dagRuns", params=params)["dag_runs"]

    def task_instances(self, *states: str) -> list[dict[str, Any]]:
        params = [("state", s) for s in states] + [("limit", "100")]
        path = f"/api/v2/dags/{DAG_ID}/dagRuns/~/taskInstances"
        return self.json("GET", path, params=params)["task_instances"]

    def run_state(self, run_id: str) -> str:
        path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}"
        return str(self.json("GET", path)["state"])

    def trigger(self) -> str:
        run = self.json("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None})
        return str(run["dag_run_id"])

    def dag(self) -> dict[str, Any]:
        return self.json("GET", f"/api/v2/dags/{DAG_ID}")

    def set_paused(self, paused: bool) -> None:
        self.json("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": paused})

    def summary(self) -> str:
        """Task states of the latest runs, for failure messages."""
        with contextlib.suppress(Exception):
            lines = [
                f"{t['dag_run_id'][:44]} {t['task_id']}: {t['state']} (try {t['try_number']})"
                for t in self.task_instances()
            ]
            return "Airflow task instances:\n" + "\n".join(sorted(lines)[-30:])
        return "Airflow task instances: unavailable"


def mlflow_login(user: str = "admin") -> tuple[str, str]:
    """An MLflow login generated into the secrets folder: the admin or a service account
    (mlops-pipeline, mlops-inference, mlops-ui; secret files mlflow-<name>)."""
    secret = "mlflow-admin" if user == "admin" else f"mlflow-{user.removeprefix('mlops-')}"
    return user, (SECRETS / secret).read_text().strip()


def mlflow_json(path: str, method: str = "GET", **kwargs: Any) -> Any:
    response = httpx.request(
        method, f"{MLFLOW}/api/2.0/mlflow/{path}", timeout=30, auth=mlflow_login(), **kwargs
    )
    response.raise_for_status()
    return response.json()


def production_version() -> str | None:
    response = httpx.get(
        f"{MLFLOW}/api/2.0/mlflow/registered-models/alias",
        params={"name": MODEL_NAME, "alias": ALIAS},
        auth=mlflow_login(),
        timeout=30,
        verify=tls(),
    )
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return str(response.json()["model_version"]["version"])


def registry_snapshot() -> dict[str, Any]:
    versions = mlflow_json(
        "model-versions/search", params={"filter": f"name='{MODEL_NAME}'", "max_results": 1000}
    ).get("model_versions", [])
    experiment = mlflow_json("experiments/get-by-name", params={"experiment_name": EXPERIMENT})[
        "experiment"
    ]
    runs = mlflow_json(
        "runs/search",
        method="POST",
        json={"experiment_ids": [experiment["experiment_id"]], "max_results": 1000},
    ).get("runs", [])
    return {
        "versions": {v["version"]: (v["run_id"], v["status"]) for v in versions},
        "alias": production_version(),
        "runs": {
            r["info"]["run_id"]: (r["info"]["status"], r["info"].get("end_time")) for r in runs
        },
    }


def batches_dsn() -> str:
    password = (SECRETS / "postgresql-batches-reader").read_text().strip()
    return f"postgresql://batches_reader:{password}@127.0.0.1:{PORTS['postgresql_port']}/{NAMES['mlops_batches_db']}"


def batches_snapshot() -> dict[str, Any]:
    conn = psycopg2.connect(batches_dsn(), connect_timeout=10)
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute(
            "SELECT group_number, batch_number, fetch_count, rows_stored, train_rows,"
            " holdout_rows FROM batch_statistics ORDER BY 1, 2"
        )
        batches = [tuple(row) for row in cur.fetchall()]
        cur.execute("SELECT count(*) FROM covertype_rows")
        (rows,) = cur.fetchone()  # type: ignore[misc]
    return {"batches": batches, "rows": int(rows)}


def seconds_since_last_fetch() -> float:
    conn = psycopg2.connect(batches_dsn(), connect_timeout=10)
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM now() - max(last_seen_at)) FROM batch_status")
        (seconds,) = cur.fetchone()  # type: ignore[misc]
    return float(seconds)


def mlops_status(name: str) -> str:
    """mlops-status inside the machine (unit states, memory, endpoints), kept as an artifact."""
    proc = ssh("mlops-status", check=False)
    (ARTIFACTS / f"e2e-status-{name}.txt").write_text(proc.stdout + proc.stderr)
    return proc.stdout


def assert_units_active() -> None:
    wants = ssh("systemctl show -p Wants --value mlops.target").stdout.split()
    assert set(wants) == EXPECTED_UNITS, f"mlops.target wants {sorted(wants)}"
    for unit in sorted(EXPECTED_UNITS):
        state = ssh(f"systemctl is-active {unit}", check=False).stdout.strip()
        enabled = ssh(f"systemctl is-enabled {unit}", check=False).stdout.strip()
        assert state == "active", (
            f"{unit} is {state}: "
            + ssh(f"journalctl -u {unit} -n 40 --no-pager", check=False).stdout
        )
        # Enabled (or pulled in by the enabled target): it must come back after a reboot.
        assert enabled in ("enabled", "static", "indirect", "alias"), f"{unit} is {enabled}"


AIRFLOW_COMPONENTS = ("metadatabase", "scheduler", "dag_processor", "triggerer")


def health_problems(timeout: float) -> list[str]:
    """What is not healthy now: endpoints that do not answer 200, Airflow components that
    are not healthy. Empty when everything is."""
    problems = []
    for name, url in HEALTH.items():
        try:
            response = httpx.get(url, timeout=timeout, verify=tls())
        except httpx.HTTPError as exc:
            problems.append(f"{name} {url}: {type(exc).__name__}")
            continue
        if response.status_code != 200:
            problems.append(f"{name} {url}: {response.status_code} {response.text}")
        elif name == "airflow":
            report = response.json()
            problems += [
                f"Airflow {c}: {report}"
                for c in AIRFLOW_COMPONENTS
                if report[c]["status"] != "healthy"
            ]
    return problems


def assert_healthy() -> None:
    problems = health_problems(timeout=15)
    assert not problems, problems
    status = ssh("mlops-status", check=False)
    assert status.returncode == 0, f"mlops-status:\n{status.stdout}"


def assert_no_secret_exposed() -> None:
    """No generated secret in a process list, a unit file, the journal, a task log, the
    provisioning log or what machine.sh printed, and the files that hold them readable by root
    and their service only."""
    secrets = {p.name: p.read_text().strip() for p in SECRETS.iterdir() if p.is_file()}
    assert secrets, f"no generated secrets in {SECRETS}"
    # The proxy's private keys (the CA's and the host's): their longest base64 line.
    for key in (SECRETS / "proxy-ca").glob("*.key"):
        secrets[key.name] = max(key.read_text().splitlines(), key=len)
    places = {
        "process list": ssh("ps -eo user,args --no-headers").stdout,
        "unit files": ssh("cat /etc/systemd/system/*.service /etc/systemd/system/*.target").stdout,
        "journal": ssh("journalctl --no-pager -o cat").stdout,
        "Airflow task logs": ssh(
            "find /var/lib/airflow/airflow/logs -name '*.log' -exec cat {} +", check=False
        ).stdout,
        "provisioning log": (STATE / "logs" / "provision-latest.log").read_text(),
        "machine.sh output": "".join(p.read_text() for p in MACHINE_LOGS if p.exists()),
    }
    leaks = [
        f"{name} in the {place}"
        for name, value in secrets.items()
        for place, text in places.items()
        if value in text
    ]
    assert not leaks, leaks
    modes = ssh(
        "stat -c '%a %U %G %n' /etc/mlops/*.env /etc/mlops/mlflow-auth.ini /etc/mlops/airflow.cfg"
    ).stdout
    for line in modes.splitlines():
        mode, owner, group, path = line.split()
        assert (mode, owner) == ("640", "root") and group != "root", line


def check_admin_password_follows_the_secret(ansible_args: dict[str, str]) -> Airflow:
    """A new password in the secrets folder becomes the existing admin's at the next
    provisioning, which reports that one change and shows the password nowhere; the old
    password no longer logs in."""
    secret = SECRETS / "airflow-admin"
    old = secret.read_text().strip()
    new = "".join(choice(string.ascii_letters + string.digits) for _ in range(24))
    secret.write_text(new + "\n")
    machine("up", log="up-new-admin-password", env=ansible_args)
    counters, changed = provision_recap()
    assert counters["failed"] == 0, counters
    assert changed == ["TASK [airflow : Set the password of the secrets folder for admin]"], changed

    def login(password: str) -> int:
        body = {"username": "admin", "password": password}
        return httpx.post(f"{AIRFLOW}/auth/token", json=body, timeout=30).status_code

    assert (login(new), login(old)) == (201, 401)
    assert_no_secret_exposed()
    return Airflow(new)


def check_logins(version: str) -> None:
    """MLflow answers nobody anonymous; each service account logs in with the password of the
    secrets folder and can do what its grants say, no more; the inference API's reload needs
    the generated token."""
    anonymous = httpx.get(f"{MLFLOW}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
    assert anonymous.status_code == 401, anonymous.status_code
    assert httpx.get(f"{MLFLOW}/health", timeout=30).status_code == 200
    for user in ("admin", "mlops-pipeline", "mlops-inference", "mlops-ui"):
        me = httpx.get(
            f"{MLFLOW}/api/2.0/mlflow/users/current", auth=mlflow_login(user), timeout=30
        )
        assert me.status_code == 200, (user, me.status_code)
        wrong = httpx.get(
            f"{MLFLOW}/api/2.0/mlflow/users/current", auth=(user, "not-the-password"), timeout=30
        )
        assert wrong.status_code == 401, (user, wrong.status_code)
    alias = {"name": MODEL_NAME, "alias": ALIAS, "version": version}
    for user in ("mlops-inference", "mlops-ui"):
        moved = httpx.post(
            f"{MLFLOW}/api/2.0/mlflow/registered-models/alias",
            json=alias,
            auth=mlflow_login(user),
            timeout=30,
        )
        assert moved.status_code == 403, (user, moved.status_code)
    deleted = httpx.request(
        "DELETE",
        f"{MLFLOW}/api/2.0/mlflow/model-versions/delete",
        json={"name": MODEL_NAME, "version": version},
        auth=mlflow_login("mlops-pipeline"),
        timeout=30,
    )
    assert deleted.status_code == 403, deleted.status_code
    assert production_version() == version
    token = (SECRETS / "inference-api-token").read_text().strip()
    assert httpx.post(f"{INFERENCE}/model/reload", timeout=60).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert httpx.post(f"{INFERENCE}/model/reload", headers=wrong, timeout=60).status_code == 403
    right = {"Authorization": f"Bearer {token}"}
    reload = httpx.post(f"{INFERENCE}/model/reload", headers=right, timeout=300)
    assert reload.status_code == 200, reload.text


def assert_tls_entry_point() -> None:
    """Every user-facing URL answers over HTTPS with a certificate the generated CA signed
    (and no other trust: the host's store does not know that CA); plain HTTP on the same
    port answers with a redirect to the same URL over HTTPS."""
    assert CA_CERT.is_file(), f"no CA certificate at {CA_CERT}"
    assert (CA_CERT.parent / "ca.key").stat().st_mode & 0o777 == 0o600
    for name, (path, code) in PROXIED.items():
        port = PROXY_PORTS[name]
        for host in ("127.0.0.1", "localhost"):
            url = f"https://{host}:{port}{path}"
            response = httpx.get(url, timeout=30, verify=tls())
            assert response.status_code == code, f"{url}: {response.status_code} {response.text}"
        public_cas = ssl.create_default_context(cafile=certifi.where())
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"https://127.0.0.1:{port}{path}", timeout=30, verify=public_cas)
        plain = httpx.get(f"http://127.0.0.1:{port}{path}?a=1", timeout=30)
        assert plain.status_code in (301, 308), f"plain HTTP on {port}: {plain.status_code}"
        assert plain.headers["location"] == f"https://127.0.0.1:{port}{path}?a=1", plain.headers
    # The UI's pages need its login: anonymous, each one redirects to the login page (the
    # header's links are checked after the login, in predict_in_browser).
    for path in ("/", "/model", "/data"):
        anonymous = httpx.get(f"{UI}{path}", timeout=30, verify=tls())
        assert anonymous.status_code == 303, f"{UI}{path}: {anonymous.status_code}"
        assert anonymous.headers["location"] == f"/login?redirect_to={quote(path, safe='')}", (
            anonymous.headers
        )
    assert httpx.get(f"{UI}/login", timeout=30, verify=tls()).status_code == 200


def assert_port_audit() -> list[str]:
    """Listening TCP sockets of the machine's own processes on addresses other than loopback
    are exactly the proxy's ports (and SSH, which the local machine keeps on loopback). The
    machine shares the host's network, so `ss` inside sees the host's sockets too: only the
    ones a process of the machine owns (ss -p names one only for processes it can see,
    those of the machine's PID namespace) count."""
    lines = ssh("ss -Hltnp").stdout.splitlines()
    exposed, owners = set(), {}
    for line in lines:
        fields = line.split()
        if "users:(" not in line:
            continue
        address, port = fields[3].rsplit(":", 1)
        address = address.strip("[]")
        if address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1"):
            continue
        exposed.add(int(port))
        owners[int(port)] = re.findall(r'"([^"]+)"', line)
    assert exposed - {SSH_PORT} == set(PROXY_PORTS.values()), (
        f"listening outside loopback: {sorted(exposed)} {owners}; expected the proxy's "
        f"{sorted(PROXY_PORTS.values())} and SSH"
    )
    assert all(owners[p] == ["nginx"] * len(owners[p]) for p in PROXY_PORTS.values()), owners
    return [f"{p} {sorted(set(owners[p]))}" for p in sorted(exposed)]


def predict(record: dict[str, int | str]) -> dict[str, Any]:
    response = httpx.post(f"{INFERENCE}/predict", json=record, timeout=60, verify=tls())
    assert response.status_code == 200, f"/predict: {response.status_code} {response.text}"
    return response.json()


def browser_home(tmp_path: Path) -> dict[str, str]:
    """A HOME whose NSS database trusts the generated CA (as a user who imported it), so
    Chromium verifies the proxy's certificate instead of ignoring errors."""
    home = tmp_path / "chromium-home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True, exist_ok=True)
    db = f"sql:{nssdb}"
    if not (nssdb / "cert9.db").exists():
        subprocess.run(["certutil", "-N", "-d", db, "--empty-password"], check=True)
    subprocess.run(
        ["certutil", "-A", "-d", db, "-n", "mlops-proxy-ca", "-t", "C,,", "-i", str(CA_CERT)],
        check=True,
    )
    return {**os.environ, "HOME": str(home)}


def launch_chromium(p: Any, home: dict[str, str]) -> Any:
    return p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, env=home)


def predict_in_browser(
    record: dict[str, int | str], answer: dict[str, Any], home: dict[str, str]
) -> None:
    """Fill the NiceGUI form with `record`, press Predict, and see the API's answer, over
    HTTPS through the proxy with the certificate verified."""
    from playwright.sync_api import expect, sync_playwright

    prediction = answer["predictions"][0]
    password = (SECRETS / "ui-admin").read_text().strip()
    errors: list[str] = []
    with sync_playwright() as p:
        browser = launch_chromium(p, home)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(60_000)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # Anonymous, the UI sends the browser to its login page first.
            response = page.goto(UI)
            assert response is not None and response.ok, response
            assert page.url == f"{UI}/login?redirect_to=%2F", page.url
            security = response.security_details()
            assert security and security.get("protocol", "").startswith("TLS"), security
            page.get_by_label("User name", exact=True).fill("admin")
            page.get_by_label("Password", exact=True).fill(f"not-{password}")
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_text("Wrong user name or password.")).to_be_visible()
            page.get_by_label("Password", exact=True).fill(password)
            page.get_by_role("button", name="Log in").click()
            expect(page).to_have_url(f"{UI}/")
            expect(page.get_by_label("Elevation", exact=True)).not_to_have_value("")
            # The header's links point at the proxy.
            content = page.content()
            for name in ("proxy_airflow_port", "proxy_mlflow_port", "proxy_minio_console_port"):
                assert f":{PROXY_PORTS[name]}" in content, f"the UI page has no link to {name}"
            for column, value in record.items():
                if isinstance(value, int):
                    page.get_by_label(label_of(column), exact=True).fill(str(value))
            page.get_by_label(label_of("Wilderness_Area"), exact=True).click()
            page.get_by_role("option", name=str(record["Wilderness_Area"]), exact=True).click()
            soil = page.get_by_label(label_of("Soil_Type"), exact=True)
            soil.click()
            soil.fill(str(record["Soil_Type"]))
            page.get_by_role("option", name=f"{record['Soil_Type']} (Soil type").first.click()
            page.get_by_role("button", name="Predict").click()
            version = f"Model {MODEL_NAME} version {answer['model_version']} ({ALIAS})"
            expect(page.get_by_text(version)).to_be_visible()
            expect(page.get_by_text(prediction["cover_type_name"], exact=True)).to_be_visible()
            expect(page.get_by_text(f"cover type {prediction['cover_type']}")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "e2e-ui-predict.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors


def bucket_objects() -> dict[str, int]:
    """Every object in MLflow's bucket with its size, listed inside the machine with mc."""
    listing = ssh(f"mlops-mc ls --recursive --json local/{BUCKET}").stdout
    objects = [json.loads(line) for line in listing.splitlines() if line.strip()]
    return {o["key"]: int(o["size"]) for o in objects if o.get("type") == "file"}


def assert_mlflow_has_its_own_minio_user() -> None:
    """MLflow's env file holds the keys of its own MinIO user (secrets folder: minio-mlflow),
    never the root password; that user is enabled with the one policy, which names only the
    bucket. (The DAG runs before this stored their artifacts through it.)"""
    env = dict(
        line.split("=", 1)
        for line in ssh("cat /etc/mlops/mlflow.env").stdout.splitlines()
        if "=" in line and not line.startswith("#")
    )
    root_password = (SECRETS / "minio-root").read_text().strip()
    # Compared here, never printed: a failure message names the key, not its value.
    assert root_password not in "\n".join(env.values()), "mlflow.env holds MinIO's root password"
    assert env["AWS_ACCESS_KEY_ID"] == "mlflow", "mlflow.env's S3 key is not user mlflow"
    secret_matches = env["AWS_SECRET_ACCESS_KEY"] == (SECRETS / "minio-mlflow").read_text().strip()
    assert secret_matches, "mlflow.env's S3 secret is not the secrets folder's minio-mlflow"
    info = json.loads(ssh("mlops-mc admin user info --json local mlflow").stdout)
    assert (info["userStatus"], info["policyName"]) == ("enabled", "mlflow-artifacts"), info
    policy = json.loads(ssh("mlops-mc admin policy info --json local mlflow-artifacts").stdout)
    statements = policy["policyInfo"]["Policy"]["Statement"]
    resources = {r for s in statements for r in s["Resource"]}
    assert resources == {f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"}, statements


def browse_bucket_in_console(prefix: str, home: dict[str, str]) -> None:
    """Log in to the MinIO console (through the proxy, HTTPS verified) with the generated
    root password and see `prefix` (the experiment's folder) in the bucket's object browser."""
    from playwright.sync_api import expect, sync_playwright

    password = (SECRETS / "minio-root").read_text().strip()
    with sync_playwright() as p:
        browser = launch_chromium(p, home)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(f"{MINIO_CONSOLE}/login")
            page.locator("#accessKey").fill("mlops-admin")
            page.locator("#secretKey").fill(password)
            page.get_by_role("button", name="Login").click()
            page.wait_for_url(re.compile(r"/browser"))
            page.goto(f"{MINIO_CONSOLE}/browser/{BUCKET}")
            expect(page.get_by_text(prefix, exact=False).first).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "e2e-minio-console.png"), full_page=True)
        finally:
            browser.close()


def log_in_to_mlflow_and_airflow_in_browser(home: dict[str, str]) -> None:
    """Chromium through the proxy (HTTPS verified): MLflow refuses an anonymous page (401) and
    shows the experiment to the admin's basic-auth credentials; Airflow sends an anonymous
    browser to its login form, and the admin's generated password opens the DAG."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect, sync_playwright

    mlflow_url = f"https://localhost:{PORTS['proxy_mlflow_port']}"
    airflow_url = f"https://localhost:{PORTS['proxy_airflow_port']}"
    mlflow_password = (SECRETS / "mlflow-admin").read_text().strip()
    airflow_password = (SECRETS / "airflow-admin").read_text().strip()
    with sync_playwright() as p:
        browser = launch_chromium(p, home)
        try:
            # Chromium without credentials turns MLflow's 401 + WWW-Authenticate into this.
            with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
                browser.new_page().goto(f"{mlflow_url}/")
            mlflow = browser.new_context(
                http_credentials={"username": "admin", "password": mlflow_password},
                viewport={"width": 1280, "height": 900},
            )
            page = mlflow.new_page()
            page.set_default_timeout(60_000)
            response = page.goto(f"{mlflow_url}/#/experiments")
            assert response is not None and response.ok, response
            # The list is the first page of MLflow's single-page app; its first load is slow.
            shown = page.get_by_text(EXPERIMENT, exact=True).filter(visible=True).first
            expect(shown).to_be_visible(timeout=120_000)
            page.screenshot(path=str(ARTIFACTS / "e2e-mlflow-ui.png"), full_page=True)
            mlflow.close()

            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(f"{airflow_url}/")
            page.wait_for_url(re.compile(r"/auth/login"))
            page.locator("#username").fill("admin")
            page.locator("#password").fill(airflow_password)
            page.locator("#password").press("Enter")
            page.wait_for_url(lambda url: "/auth/login" not in url)
            page.goto(f"{airflow_url}/dags/{DAG_ID}")
            expect(page.get_by_text(DAG_ID).first).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "e2e-airflow-ui.png"), full_page=True)
        finally:
            browser.close()


def main_pid(unit: str) -> int:
    return int(ssh(f"systemctl show -p MainPID --value {unit}").stdout.strip() or 0)


def kill_and_time_recovery(unit: str) -> float:
    """SIGKILL the unit's main process; seconds until it runs again under a new PID and every
    health endpoint answers."""
    before = main_pid(unit)
    assert before > 0, f"{unit} has no main process"
    started = time.monotonic()
    # One ssh session waits inside the machine for the new main process: polling it with an
    # ssh login per check (about 150 ms of CPU each, several a second) slowed the restarting unit.
    restarted = ssh(
        f"systemctl kill --kill-whom=main -s SIGKILL {unit}; "
        "for _ in $(seq 400); do "
        f"pid=$(systemctl show -p MainPID --value {unit}); "
        f'[ "$(systemctl is-active {unit})" = active ] && [ "$pid" != 0 ] '
        f'&& [ "$pid" != {before} ] && exit 0; sleep 0.2; done; exit 1',
        check=False,
    )
    deadline = started + 120
    while restarted.returncode == 0 and time.monotonic() < deadline:
        if not health_problems(timeout=3):
            return round(time.monotonic() - started, 1)
        time.sleep(0.5)
    journal = ssh(f"journalctl -u {unit} -n 30 --no-pager", check=False).stdout
    pytest.fail(f"{unit} did not recover within 120 s after SIGKILL:\n{journal}")


# --- the test ---------------------------------------------------------------------------------
@pytest.fixture
def exclusive_machine() -> Iterator[None]:
    """One e2e run at a time, and never over a machine someone is using."""
    STATE.mkdir(parents=True, exist_ok=True)
    ARTIFACTS.mkdir(exist_ok=True)
    with (STATE / "e2e.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pytest.skip("another end-to-end run holds var/machine/e2e.lock")
        pid_file = STATE / "nspawn.pid"
        if pid_file.exists() and Path(f"/proc/{pid_file.read_text().strip()}").exists():
            pytest.skip("the local machine is running (make down first): this test rebuilds it")
        yield


def test_platform_end_to_end(
    exclusive_machine: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    phases = Phases()
    outcome = "failed"
    # A wheel built once, so both provisioning runs install the same bytes even while the
    # sources are being edited (site.yml would otherwise rebuild it from the working tree).
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run(
        [str(REPO_ROOT / "scripts" / "build-wheel.sh"), str(wheel_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    wheel = build.stdout.strip().splitlines()[-1]
    ansible_args = {
        "ANSIBLE_ARGS": f"-e mlops_data_api_interval_seconds={DATA_API_INTERVAL_SECONDS}"
        f" -e mlops_project_wheel={wheel}"
    }
    record = examples.features(
        next(e for e in examples.EXAMPLES if examples.actual_cover_type(e) == 2)
    )
    airflow: Airflow | None = None
    try:
        with phases("fresh_machine_and_provisioning"):
            machine("down", log="purge", env={"PURGE": "1"})
            machine("up", log="up-fresh", env=ansible_args)
        counters, _ = provision_recap()
        assert counters["failed"] == 0 and counters["unreachable"] == 0, counters
        phases.notes["fresh_recap"] = counters
        # Every httpx call from here on verifies HTTPS against the generated CA alone
        # (httpx reads SSL_CERT_FILE in place of its own CA list).
        monkeypatch.setenv("SSL_CERT_FILE", str(CA_CERT))

        with phases("units_and_health"):
            assert_units_active()
            assert_healthy()
        mlops_status("after-provisioning")

        with phases("tls_entry_point_and_port_audit"):
            assert_tls_entry_point()
            phases.notes["listening_outside_loopback"] = assert_port_audit()

        airflow = Airflow((SECRETS / "airflow-admin").read_text().strip())
        with phases("dag_until_promotion"):
            assert airflow.dag()["is_paused"] is False, "provisioning must unpause the DAG"

            def promoted() -> str | None:
                version = production_version()
                # Speed-up: the schedule is every 5 minutes; start a run whenever none is active.
                if version is None and not airflow.runs("queued", "running"):
                    airflow.trigger()
                return version

            version = wait_until(
                promoted, "a version with alias production", 15 * 60, 10, airflow.summary
            )
            wait_until(
                lambda: airflow.runs("success"), "a successful DAG run", 5 * 60, 5, airflow.summary
            )
        phases.notes["first_promoted_version"] = version

        with phases("second_dag_run"):
            # Another batch: stored next to the first, and the candidates retrain on both.
            # Wait until the data API has moved on since the last fetch (it serves the same
            # batch for DATA_API_INTERVAL_SECONDS).
            first = batches_snapshot()
            wait_until(
                lambda: seconds_since_last_fetch() > DATA_API_INTERVAL_SECONDS + 1,
                "the data API to move on to the next batch",
                3 * DATA_API_INTERVAL_SECONDS,
                2,
            )
            run_id = airflow.trigger()
            state = wait_until(
                lambda: (s := airflow.run_state(run_id)) in ("success", "failed") and s,
                f"DAG run {run_id} to finish",
                10 * 60,
                5,
                airflow.summary,
            )
            assert state == "success", airflow.summary()
            second = batches_snapshot()
            assert len(second["batches"]) > len(first["batches"]), (first, second)
            assert second["rows"] > first["rows"], (first, second)
            version = production_version()
            assert version is not None
        phases.notes["batches_after_second_run"] = [b[:2] for b in second["batches"]]

        with phases("no_secret_exposed"):
            assert_no_secret_exposed()
            assert_mlflow_has_its_own_minio_user()
        phases.notes["served_version"] = version

        with phases("inference_serves_promoted_version"):

            def serving() -> bool:
                ready = httpx.get(f"{INFERENCE}/ready", timeout=15, verify=tls())
                return ready.status_code == 200 and ready.json()["version"] == version

            wait_until(serving, f"the inference API serving version {version}", 300, 5)
            answer = predict(record)
            assert answer["model_name"] == MODEL_NAME
            assert answer["model_version"] == version
            assert answer["model_alias"] == ALIAS
            (prediction,) = answer["predictions"]
            assert prediction["cover_type"] in range(1, 8)
            assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-3
        mlops_status("after-promotion")

        with phases("logins_and_least_privilege"):
            check_logins(version)

        with phases("ui_predicts_in_chromium"):
            predict_in_browser(record, answer, browser_home(tmp_path))

        with phases("repeat_provisioning"):
            machine("up", log="up-repeat", env=ansible_args)
        counters, changed = provision_recap()
        phases.notes["repeat_recap"] = counters
        assert counters["failed"] == 0, counters
        assert counters["changed"] == 0, f"a second site.yml changed: {changed}"

        with phases("airflow_admin_password_follows_the_secret"):
            airflow = check_admin_password_follows_the_secret(ansible_args)

        with phases("quiesce_and_snapshot"):
            # Paused, nothing new is scheduled; tasks already running finish. Then the data
            # is still, and the restart must bring back exactly this.
            airflow.set_paused(True)
            wait_until(
                lambda: not airflow.task_instances("running", "queued", "restarting"),
                "no running DAG tasks",
                10 * 60,
                5,
                airflow.summary,
            )
            before_batches = batches_snapshot()
            before_registry = registry_snapshot()
            before_answer = predict(record)
            assert before_batches["rows"] > 0 and before_batches["batches"], before_batches
            assert before_registry["alias"] is not None and before_registry["runs"]
        phases.notes["batches_before_restart"] = len(before_batches["batches"])
        phases.notes["rows_before_restart"] = before_batches["rows"]
        phases.notes["mlflow_runs_before_restart"] = len(before_registry["runs"])
        phases.notes["versions_before_restart"] = sorted(before_registry["versions"], key=int)
        before_objects = bucket_objects()
        assert any(key.endswith("MLmodel") for key in before_objects), before_objects

        with phases("minio_console_in_chromium"):
            experiment = next(iter(before_objects)).split("/")[0]
            browse_bucket_in_console(experiment, browser_home(tmp_path))

        with phases("mlflow_and_airflow_logins_in_chromium"):
            log_in_to_mlflow_and_airflow_in_browser(browser_home(tmp_path))

        with phases("fault_every_unit"):
            recovery = {unit: kill_and_time_recovery(unit) for unit in FAULT_UNITS}
            phases.notes["recovery_seconds_after_sigkill"] = recovery
            slow = {u: t for u, t in recovery.items() if t > RECOVERY_SECONDS}
            assert not slow, f"over {RECOVERY_SECONDS} s to recover: {slow} (all: {recovery})"
            assert batches_snapshot() == before_batches
            assert registry_snapshot() == before_registry
            assert bucket_objects() == before_objects
            wait_until(
                lambda: (
                    httpx.get(f"{INFERENCE}/ready", timeout=15, verify=tls()).status_code == 200
                ),
                "the inference API ready again",
                60,
                2,
            )
            assert predict(record) == before_answer

        with phases("machine_down"):
            machine("down", log="down-restart")
        with phases("machine_boot_until_healthy"):
            machine("boot", log="boot")
        # How each unit stopped at the power-off (the machine keeps a persistent journal).
        (ARTIFACTS / "e2e-shutdown-journal.txt").write_text(
            ssh(
                "journalctl -b -1 -o short-precise --no-pager"
                " | grep -E 'Stopp|Deactivated|Kill|timed out'",
                check=False,
            ).stdout
        )
        with phases("after_restart_checks"):
            assert_units_active()
            assert_healthy()
            assert airflow.dag()["is_paused"] is True, "the DAG's pause must survive a restart"
            assert batches_snapshot() == before_batches
            after_registry = registry_snapshot()
            assert after_registry == before_registry
            assert bucket_objects() == before_objects
            alias_version = after_registry["alias"]

            def serving_again() -> bool:
                ready = httpx.get(f"{INFERENCE}/ready", timeout=15, verify=tls())
                return ready.status_code == 200 and ready.json()["version"] == alias_version

            wait_until(serving_again, "the inference API serving the alias again", 300, 5)
            assert predict(record) == before_answer
            airflow.set_paused(False)
        mlops_status("after-restart")
        outcome = "passed"
    finally:
        with contextlib.suppress(Exception), phases("final_down"):
            machine("down", log="down-final")
        phases.write(outcome)
