"""Every unit template in systemd/, rendered the way the roles render it, and checked.

Ansible renders each template (its template module, so `{% include 'hardening.conf.j2' %}`
resolves as on a real host) with the roles' defaults and the playbook's group_vars, for a
host in every service group. Then: `systemd-analyze verify` accepts each unit (with the
binaries it names stubbed under a scratch root), every unit restarts on failure, comes back
after a reboot (WantedBy=mlops.target, which multi-user.target wants) and carries the shared
hardening, and each differs from the others only where its role says so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

ANSIBLE_DIR = REPO_ROOT / "ansible"
SYSTEMD_DIR = REPO_ROOT / "systemd"
COMMON_TEMPLATES = ANSIBLE_DIR / "roles" / "common" / "templates"
# The service roles: those site.yml gives a play of their own (a group of the same name).
ROLES = [
    p["hosts"]
    for p in yaml.safe_load((ANSIBLE_DIR / "site.yml").read_text())
    if p["hosts"] not in ("all", "localhost") and p.get("roles")
]
# Every unit template but the Airflow one, which renders once per airflow_components item.
UNIT_TEMPLATES = {
    p.name.removesuffix(".j2"): p.name
    for p in SYSTEMD_DIR.glob("*.service.j2")
    if p.name != "airflow.service.j2"
}
PLAYBOOK_BIN = REPO_ROOT / ".venv" / "bin" / "ansible-playbook"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

# What a unit may change in the shared hardening (systemd/hardening.conf.j2), and where.
DEFAULTS = {"ProtectProc": "invisible", "ProcSubset": "pid"}
EXPECTED_DIFFERENCES = {
    # Airflow's task supervisor is non-dumpable: hidepid would hide it from its parent.
    "airflow-scheduler.service": {"ProtectProc": "default"},
    # MinIO reads /proc/mounts at start.
    "minio.service": {"ProcSubset": "all"},
    # The Celery worker forks task supervisors too (group_vars/all/celery.yml).
    "airflow-celery-worker.service": {"ProtectProc": "default"},
}
NO_MDWE = {"mlflow.service"} | {
    f"airflow-{c}.service"
    for c in ("api-server", "scheduler", "dag-processor", "triggerer", "celery-worker")
}
# Drop-ins the database roles put on the distributions' own units, each with the shared
# hardening and what differs from it (the templates say why).
DROPINS = {
    "postgresql@.service": "postgresql-hardening.conf.j2",
    "mariadb.service": "mysql-hardening.conf.j2",
    "redis-server.service": "redis-hardening.conf.j2",
}
DROPIN_DIFFERENCES = {
    "postgresql@.service": {
        "User": "postgres",
        "Group": "postgres",
        "ReadWritePaths": "/var/lib/postgresql /var/log/postgresql /run/postgresql",
    },
    "mariadb.service": {
        "UMask": "007",
        "ReadWritePaths": "/var/lib/mysql /run/mysqld -/var/log/mysql",
    },
    "redis-server.service": {"ReadWritePaths": "/var/lib/redis /var/log/redis /run/redis"},
}
# PostgreSQL's LLVM JIT fails under MemoryDenyWriteExecute.
DROPIN_NO_MDWE = {"postgresql@.service"}
DISTRO_UNITS = Path("/usr/lib/systemd/system")


def dropin_name(unit: str) -> str:
    return f"{unit}.d-60-mlops-hardening.conf"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, line
        current.setdefault(key, []).append(value)
    return sections


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if not PLAYBOOK_BIN.exists():
        pytest.skip("the dev venv has no ansible-playbook (make venv)")
    work = tmp_path_factory.mktemp("units")
    out = work / "out"
    out.mkdir()
    groups = {g: {"hosts": {"mlops-test": None}} for g in ROLES}
    inventory = {
        "all": {
            "hosts": {
                "mlops-test": {
                    "ansible_connection": "local",
                    "ansible_host": "127.0.0.1",
                    "ansible_python_interpreter": str(REPO_ROOT / ".venv" / "bin" / "python"),
                }
            },
            "children": groups,
        }
    }
    (work / "hosts.yml").write_text(yaml.safe_dump(inventory))
    # Role defaults first, then group_vars: later vars_files win, as group_vars outrank
    # role defaults in site.yml.
    vars_files = [str(ANSIBLE_DIR / "roles" / r / "defaults" / "main.yml") for r in ROLES]
    vars_files += [str(ANSIBLE_DIR / "roles" / "mysql" / "vars" / "Debian.yml")]
    vars_files += [str(p) for p in sorted((ANSIBLE_DIR / "group_vars" / "all").glob("*.yml"))]
    units = UNIT_TEMPLATES
    playbook = [
        {
            "name": "Render every unit template",
            "hosts": "all",
            "gather_facts": True,
            "gather_subset": ["min", "network"],
            "vars_files": vars_files,
            "vars": {
                "ansible_distribution": "Debian",
            },
            "tasks": [
                {
                    "name": "Unit",
                    "ansible.builtin.template": {
                        "src": str(SYSTEMD_DIR) + "/{{ item.value }}",
                        "dest": str(out) + "/{{ item.key }}",
                        "mode": "0644",
                    },
                    "loop": "{{ units | dict2items }}",
                },
                {
                    "name": "Airflow units",
                    "ansible.builtin.template": {
                        "src": str(SYSTEMD_DIR / "airflow.service.j2"),
                        "dest": str(out) + "/airflow-{{ airflow_component.name }}.service",
                        "mode": "0644",
                    },
                    "loop": "{{ airflow_components }}",
                    "loop_control": {"loop_var": "airflow_component"},
                },
                {
                    "name": "The Celery worker's unit (role airflow, tasks_from worker.yml)",
                    "ansible.builtin.template": {
                        "src": str(SYSTEMD_DIR / "airflow.service.j2"),
                        "dest": str(out / "airflow-celery-worker.service"),
                        "mode": "0644",
                    },
                    "vars": {"airflow_component": "{{ airflow_celery_worker_component }}"},
                },
                {
                    "name": "airflow.cfg with each executor (group_vars/all/celery.yml)",
                    "ansible.builtin.template": {
                        "src": str(ANSIBLE_DIR / "roles" / "airflow" / "templates")
                        + "/airflow.cfg.j2",
                        "dest": str(out) + "/airflow.cfg-{{ item }}",
                        "mode": "0600",
                    },
                    "vars": {"airflow_executor": "{{ item }}"},
                    "loop": ["LocalExecutor", "CeleryExecutor"],
                },
                {
                    "name": "Drop-ins for the distributions' database units",
                    "ansible.builtin.template": {
                        "src": str(SYSTEMD_DIR) + "/{{ item.value }}",
                        "dest": str(out) + "/{{ item.key }}.d-60-mlops-hardening.conf",
                        "mode": "0644",
                    },
                    "loop": "{{ dropins | dict2items }}",
                },
                {
                    "name": "What the roles declare, as role common records it",
                    "ansible.builtin.set_fact": {
                        "common_services": "{{ dict(service_roles | zip(service_roles"
                        " | map('regex_replace', '$', '_service') | map('extract', vars))) }}",
                    },
                    # The Celery worker's declaration (group_vars/all/celery.yml).
                    "vars": {"service_roles": [*ROLES, "airflow_worker"]},
                },
                {
                    "name": "mlops.target",
                    "ansible.builtin.template": {
                        "src": str(SYSTEMD_DIR / "mlops.target.j2"),
                        "dest": str(out / "mlops.target"),
                        "mode": "0644",
                    },
                },
                {
                    "name": "What role common renders from the declarations",
                    "ansible.builtin.template": {
                        "src": "{{ item.src }}",
                        "dest": str(out) + "/{{ item.dest }}",
                        "mode": "0644",
                    },
                    "loop": [
                        {"src": str(COMMON_TEMPLATES / "mlops-status.j2"), "dest": "mlops-status"},
                        {
                            "src": str(COMMON_TEMPLATES / "nftables.conf.j2"),
                            "dest": "nftables.conf",
                        },
                        {
                            "src": str(ANSIBLE_DIR / "templates" / "summary.txt.j2"),
                            "dest": "summary.txt",
                        },
                        {
                            "src": str(
                                ANSIBLE_DIR / "roles" / "proxy" / "templates" / "nginx.conf.j2"
                            ),
                            "dest": "nginx.conf",
                        },
                        {
                            "src": str(ANSIBLE_DIR / "roles" / "ui" / "templates" / "ui.env.j2"),
                            "dest": "ui.env",
                        },
                        {
                            "src": str(
                                ANSIBLE_DIR / "roles" / "airflow" / "templates" / "airflow.env.j2"
                            ),
                            "dest": "airflow.env",
                        },
                    ],
                    "vars": {"common_firewall_allowed_tcp_ports": [22]},
                },
                {
                    # Also generates them, for the summary test: the summary itself does not.
                    "name": "The people's logins",
                    "ansible.builtin.copy": {
                        "content": "{{ [airflow_admin_password, mlflow_admin_password,"
                        " minio_root_password, ui_admin_password] | to_json }}",
                        "dest": str(out / "logins.json"),
                        "mode": "0600",
                    },
                },
                {
                    "name": "The declarations",
                    "ansible.builtin.copy": {
                        "content": "{{ common_services | to_nice_json }}",
                        "dest": str(out / "services.json"),
                        "mode": "0644",
                    },
                },
            ],
        }
    ]
    playbook[0]["vars"]["units"] = units
    playbook[0]["vars"]["dropins"] = DROPINS
    (work / "render.yml").write_text(yaml.safe_dump(playbook, sort_keys=False))
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(ANSIBLE_DIR / "roles"),
    )
    result = subprocess.run(
        [str(PLAYBOOK_BIN), "-i", str(work / "hosts.yml"), str(work / "render.yml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    files = {p.name: p.read_text() for p in out.iterdir()}
    # The secrets the lookups generated (group_vars: under playbook_dir, this folder, away from
    # the repo's), to check that nothing shows them.
    secrets = (work / ".secrets").rglob("*")
    return files | {f"secret:{p.name}": p.read_text().strip() for p in secrets if p.is_file()}


def test_status_firewall_and_summary_use_the_declarations(rendered: dict[str, str]) -> None:
    ports = yaml.safe_load((ANSIBLE_DIR / "group_vars" / "all" / "ports.yml").read_text())
    status = rendered["mlops-status"]
    for unit in service_units(rendered):
        assert f"  {unit}\n" in status, unit
    assert f'"model-ready optional http://127.0.0.1:{ports["inference_api_port"]}/ready"' in status
    assert f'"ui required http://127.0.0.1:{ports["ui_port"]}/health"' in status
    opened = re.search(r"tcp dport \{ ([0-9, ]+) \} accept", rendered["nftables.conf"])
    assert opened
    # SSH and the TLS proxy's ports: every service listens on loopback behind it.
    assert [int(p) for p in opened.group(1).split(", ")] == sorted(
        [22] + [ports[k] for k in ports["mlops_forwarded_ports"]]
    )
    summary = rendered["summary.txt"]
    for label in ("Airflow", "MLflow", "Web UI", "Inference", "Data API", "DAG", "MinIO", "S3"):
        assert re.search(rf"^{label} ", summary, re.M), label
    assert re.search(r"^TLS .*proxy-ca/ca\.crt", summary, re.M), summary
    for key in ports["mlops_forwarded_ports"]:
        assert f"https://127.0.0.1:{ports[key]}" in summary, key
    assert "http://127.0.0.1:" not in summary.replace("S3         http://127.0.0.1:", "")
    # The UI's login: who, and where the generated password is (not the password).
    (web_ui,) = re.findall(r"^Web UI .*$", summary, re.M)
    assert re.search(r" user admin  password in /\S+/ui-admin$", web_ui), web_ui


def test_the_ui_gets_a_generated_login(rendered: dict[str, str]) -> None:
    env = dict(line.split("=", 1) for line in rendered["ui.env"].splitlines() if "=" in line[:40])
    assert env["UI_ADMIN_USERNAME"] == "admin"
    assert re.fullmatch(r"[A-Za-z0-9]{24}", env["UI_ADMIN_PASSWORD"]), "not generated"
    assert env["UI_ADMIN_PASSWORD"] not in rendered["summary.txt"]


def test_the_summary_names_where_each_password_is_and_shows_none(
    rendered: dict[str, str],
) -> None:
    """site.yml prints the summary into the provisioning log: no generated secret may be in it."""
    summary = rendered["summary.txt"]
    secrets = {k: v for k, v in rendered.items() if k.startswith("secret:")}
    logins = json.loads(rendered["logins.json"])
    assert set(logins) <= set(secrets.values()) and len(secrets) > 10, sorted(secrets)
    assert not [name for name, value in secrets.items() if value in summary]
    for label, file in (
        ("Web UI", "ui-admin"),
        ("Airflow", "airflow-admin"),
        ("MLflow", "mlflow-admin"),
        ("MinIO", "minio-root"),
    ):
        (line,) = re.findall(rf"^{label} .* user .*$", summary, re.M)
        assert re.search(rf"  password in /\S+/{file}$", line), line


def test_the_pipeline_trains_in_one_task_on_one_host(rendered: dict[str, str]) -> None:
    # The LocalExecutor (the default): airflow_training_tasks from group_vars/all/celery.yml.
    env = dict(ln.split("=", 1) for ln in rendered["airflow.env"].splitlines() if "=" in ln)
    assert env["TRAINING_TASKS"] == "1"
    assert env["MLFLOW_EXPERIMENT_NAME"], "the pipeline's settings are in the same file"


def test_proxy_config_terminates_tls_for_every_service(rendered: dict[str, str]) -> None:
    """nginx.conf as role proxy renders it: one HTTPS server per proxied service, each
    redirecting plain HTTP on its port to HTTPS and forwarding to the service on loopback."""
    ports = yaml.safe_load((ANSIBLE_DIR / "group_vars" / "all" / "ports.yml").read_text())
    conf = rendered["nginx.conf"]
    assert "{{" not in conf and "{%" not in conf
    backends = {
        "proxy_ui_port": "ui_port",
        "proxy_airflow_port": "airflow_api_port",
        "proxy_mlflow_port": "mlflow_port",
        "proxy_minio_console_port": "minio_console_port",
        "proxy_inference_api_port": "inference_api_port",
        "proxy_data_api_port": "data_api_port",
    }
    assert set(backends) == set(ports["mlops_forwarded_ports"])
    upstreams = {
        name: re.findall(r"^\s*server (\S+) max_fails=1 fail_timeout=\d+s;", body, re.M)
        for name, body in re.findall(r"upstream (\w+) \{(.*?)\}", conf, re.S)
    }
    servers = re.findall(r"\n    server \{(.*?)\n    \}", conf, re.S)
    assert len(servers) == len(backends), servers
    for front, back in backends.items():
        (server,) = [s for s in servers if f"listen 0.0.0.0:{ports[front]} ssl;" in s]
        assert "error_page 497 =301 https://$http_host$request_uri;" in server, front
        (upstream,) = re.findall(r"proxy_pass http://(\w+);", server)
        assert upstreams[upstream] == [f"127.0.0.1:{ports[back]}"], (front, upstreams)
        assert "proxy_next_upstream" not in server, "one server: nothing to retry on"
    assert re.search(r"ssl_protocols TLSv1\.2 TLSv1\.3;", conf)
    assert "listen 80" not in conf and "sites-enabled" not in conf


def service_units(rendered: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in rendered.items() if k.endswith(".service")}


def test_every_template_is_rendered(rendered: dict[str, str]) -> None:
    airflow = yaml.safe_load(
        (ANSIBLE_DIR / "roles" / "airflow" / "defaults" / "main.yml").read_text()
    )
    expected = (
        set(UNIT_TEMPLATES)
        | {f"airflow-{c['name']}.service" for c in airflow["airflow_components"]}
        | {"airflow-celery-worker.service"}
    )
    assert set(service_units(rendered)) == expected
    assert len(expected) >= 9  # the four Airflow processes and five services


def test_one_variable_switches_the_executor(rendered: dict[str, str]) -> None:
    import configparser

    local, celery = configparser.RawConfigParser(), configparser.RawConfigParser()
    local.read_string(rendered["airflow.cfg-LocalExecutor"])
    celery.read_string(rendered["airflow.cfg-CeleryExecutor"])
    assert local["core"]["executor"] == "LocalExecutor" and not local.has_section("celery")
    assert celery["core"]["executor"] == "CeleryExecutor"
    # Redis with the generated password, PostgreSQL as the result backend.
    # (Compared as booleans and with the password masked: a failure prints no secret.)
    broker = re.sub(r":[A-Za-z0-9]{40}@", ":<password>@", celery["celery"]["broker_url"])
    assert broker == "redis://:<password>@127.0.0.1:6379/0"
    backend = celery["celery"]["result_backend"]
    same_database = backend == "db+" + celery["database"]["sql_alchemy_conn"]
    assert same_database
    assert backend.startswith("db+postgresql+psycopg2://airflow:")
    assert int(celery["celery"]["worker_concurrency"]) >= 1
    # Everything else is the same: the switch changes nothing on one VM.
    for section in local.sections():
        assert dict(local[section]) == dict(celery[section]) or section == "core", section
    core_diff = {k for k in local["core"] if local["core"][k] != celery["core"][k]}
    assert core_diff == {"executor"}
    assert celery["core"]["execution_api_server_url"] == "http://127.0.0.1:8080/execution/"
    # A task whose worker died is retried after this, not Airflow's 300 s.
    defaults = yaml.safe_load(
        (ANSIBLE_DIR / "roles" / "airflow" / "defaults" / "main.yml").read_text()
    )
    timeout = int(local["scheduler"]["task_instance_heartbeat_timeout"])
    assert timeout == defaults["airflow_task_heartbeat_timeout"] < 300


def test_units_restart_and_come_back_after_reboot(rendered: dict[str, str]) -> None:
    for name, text in service_units(rendered).items():
        unit = parse_unit(text)
        assert unit["Service"]["Restart"] == ["on-failure"], name
        assert unit["Install"]["WantedBy"] == ["mlops.target"], name
        assert unit["Unit"]["PartOf"] == ["mlops.target"], name
        assert "{{" not in text and "{%" not in text, name
    target = parse_unit(rendered["mlops.target"])
    assert target["Install"]["WantedBy"] == ["multi-user.target"]
    wanted = set(target["Unit"]["Wants"])
    distro = {"postgresql.service", "mariadb.service", "nginx.service", "redis-server.service"}
    assert set(service_units(rendered)) | distro == wanted


def test_hardening_is_shared_and_differs_only_where_declared(rendered: dict[str, str]) -> None:
    template = (SYSTEMD_DIR / "hardening.conf.j2").read_text()
    hardening = parse_unit("[Service]\n" + re.sub(r"\{#.*?#\}|\{%.*?%\}", "", template, flags=re.S))
    variable = {"ReadWritePaths", "MemoryDenyWriteExecute", *DEFAULTS}
    keys = set(hardening["Service"]) - variable
    baseline = None
    for name, text in service_units(rendered).items():
        service = parse_unit(text)["Service"]
        shared = {k: service[k] for k in keys}
        baseline = baseline or shared
        assert shared == baseline, name
        for key, default in DEFAULTS.items():
            assert service[key] == [EXPECTED_DIFFERENCES.get(name, {}).get(key, default)], name
        assert ("MemoryDenyWriteExecute" in service) == (name not in NO_MDWE), name
        (writable,) = service["ReadWritePaths"]
        assert writable.startswith("/var/lib/"), name
    assert baseline is not None
    assert baseline["ProtectSystem"] == ["strict"] and baseline["NoNewPrivileges"] == ["yes"]


def test_health_urls_and_ports_come_from_the_port_variables(rendered: dict[str, str]) -> None:
    ports = yaml.safe_load((ANSIBLE_DIR / "group_vars" / "all" / "ports.yml").read_text())
    services = json.loads(rendered["services.json"])
    for role, declared in services.items():
        own = {v for k, v in ports.items() if k.startswith(role + "_") and k.endswith("port")}
        for check in declared.get("health", []):
            port = re.fullmatch(r"https?://127\.0\.0\.1:(\d+)/\S*", check["url"])
            assert port and int(port.group(1)) in own, (role, check)
        assert {int(p) for p in declared.get("ports", [])} <= own, role
    names = [c["name"] for s in services.values() for c in s.get("health", [])]
    assert len(names) == len(set(names)) and len(names) >= 7
    # Only the TLS proxy's ports are open to other hosts.
    opened = sorted(int(p) for s in services.values() for p in s.get("ports", []))
    assert opened == sorted(ports[k] for k in ports["mlops_forwarded_ports"])
    assert 2024 not in ports.values()


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(rendered: dict[str, str], tmp_path: Path) -> None:
    # verify loads the units as PID 1 would: it needs the system's own units (sysinit.target
    # and friends) and checks that every ExecStart binary exists. A scratch root holds the
    # host's units, the rendered ones, and stubs for the venvs only a provisioned host has.
    root = tmp_path / "root"
    unit_dir = root / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    system_units = next(
        p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()
    )
    shutil.copytree(system_units, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    names = sorted(n for n in rendered if n.endswith((".service", ".target")))
    for name in names:
        text = rendered[name]
        (unit_dir / name).write_text(text)
        for exe in re.findall(r"^ExecStart(?:Pre)?=[-@:+!]*(/\S+)", text, re.M):
            stub = root / exe.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
    result = subprocess.run(
        [
            SYSTEMD_ANALYZE,
            "verify",
            f"--root={root}",
            "--man=no",
            *(str(unit_dir / n) for n in names),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Wants= on the distro's database units, absent here, is not an error for verify.
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, textwrap.indent(output, "  ")


def effective(section: dict[str, list[str]]) -> dict[str, str]:
    """The value systemd uses for each single-valued setting: the last assignment."""
    return {k: v[-1] for k, v in section.items()}


def test_database_dropins_share_the_hardening(rendered: dict[str, str]) -> None:
    template = (SYSTEMD_DIR / "hardening.conf.j2").read_text()
    hardening = parse_unit("[Service]\n" + re.sub(r"\{#.*?#\}|\{%.*?%\}", "", template, flags=re.S))
    # The platform's own units all carry the shared block (the test above): one is the baseline.
    baseline = parse_unit(rendered["data-api.service"])["Service"]
    keys = set(hardening["Service"]) - {"ReadWritePaths", "MemoryDenyWriteExecute"}
    for unit in DROPINS:
        text = rendered[dropin_name(unit)]
        assert "{{" not in text and "{%" not in text, unit
        dropin = parse_unit(text)
        assert set(dropin) == {"Service"}, unit
        service = dropin["Service"]
        differences = DROPIN_DIFFERENCES[unit]
        for key in keys:
            if key in differences:
                continue
            # Filters add up: the whole list, in order, as in the platform's units.
            assert service[key] == baseline[key], (unit, key)
        got = effective(service)
        for key, value in differences.items():
            assert got[key] == value, (unit, key)
        assert set(service) - keys - {"ReadWritePaths", "MemoryDenyWriteExecute"} == (
            set(differences) - keys - {"ReadWritePaths"}
        ), unit
        assert ("MemoryDenyWriteExecute" in service) == (unit not in DROPIN_NO_MDWE), unit
        assert got["ProtectSystem"] == "strict" and got["CapabilityBoundingSet"] == "", unit


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.skipif(
    not all((DISTRO_UNITS / u).exists() for u in DROPINS),
    reason="the distributions' PostgreSQL and MariaDB units are not installed on this host",
)
def test_systemd_analyze_verify_database_dropins(rendered: dict[str, str], tmp_path: Path) -> None:
    # The host's own postgresql@.service and mariadb.service with the drop-ins beside them,
    # as on the machine; verify reports any key or value in a drop-in that systemd rejects.
    root = tmp_path / "root"
    shutil.copytree(DISTRO_UNITS, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    for unit in DROPINS:
        folder = root / "etc" / "systemd" / "system" / f"{unit}.d"
        folder.mkdir(parents=True)
        (folder / "60-mlops-hardening.conf").write_text(rendered[dropin_name(unit)])
        text = (DISTRO_UNITS / unit).read_text()
        for exe in re.findall(r"^Exec\w+=[-@:+!]*(/\S+)", text, re.M):
            stub = root / exe.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", f"--root={root}", "--man=no", "postgresql@17-main.service"]
        + ["mariadb.service", "redis-server.service"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, textwrap.indent(output, "  ")
