"""`make test-vm`: real VMs from the platform image, by Terraform and by Vagrant.

Each test creates a VM from `make image`'s output under QEMU emulation (domain type qemu:
our machines have no usable KVM), inside the network namespace scripts/vm-lab.sh creates
(libvirtd, its NAT networks and the guests live there; nothing reaches the host's network),
provisions it with ansible/site.yml, checks every unit and health endpoint, and destroys it.

- Terraform: `terraform init` from the locally built providers, `apply` (base volume from the
  image, cloud-init disk with a generated key, NAT network of its own), SSH as the admin user
  cloud-init made, `ansible-playbook -i <Terraform's inventory> site.yml`, health,
  `terraform destroy`, nothing left in libvirt.
- Vagrant: `vagrant box add` of the image's box, `vagrant up --provider=libvirt` with
  MLOPS_VM_LIBVIRT_DRIVER=qemu, `vagrant provision` (the Ansible provisioner runs site.yml),
  health, `vagrant destroy -f`.

Skipped unless MLOPS_TEST_VM=1 (set by `make test-vm`): about 40 minutes per VM on 2 cores
(docs/provisioning.md), so not in `make test`. Phase times go to test-artifacts/vm-timings.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(
    os.environ.get("MLOPS_TEST_VM") != "1", reason="make test-vm runs these (MLOPS_TEST_VM=1)"
)

CACHE = Path(os.environ.get("MLOPS_CACHE", "/var/cache/forest-cover-mlops"))
IMAGE_DIR = CACHE / "image"
QCOW2 = IMAGE_DIR / "forest-cover-mlops-debian13.qcow2"
BOX = IMAGE_DIR / "forest-cover-mlops-debian13-libvirt.box"
LAB = REPO_ROOT / "scripts" / "vm-lab.sh"
NETNS = os.environ.get("VM_LAB_NETNS", "mlops-vmlab")
LAB_NETWORK = os.environ.get("VM_LAB_NETWORK", "mlops-lab")
VENV_BIN = REPO_ROOT / ".venv" / "bin"
ARTIFACTS = REPO_ROOT / "test-artifacts"
# A small VM: the platform idles at ~2.2 GiB; 2 vCPUs are all the host has.
VCPUS = int(os.environ.get("MLOPS_TEST_VM_CPUS", "2"))
MEMORY_MB = int(os.environ.get("MLOPS_TEST_VM_MEMORY", "6144"))
# Web ports the VM's firewall opens to other hosts (the TLS proxy's), checked from the
# namespace over HTTPS verified against the CA the playbook generated.
_PORTS = yaml.safe_load((REPO_ROOT / "ansible" / "group_vars" / "all" / "ports.yml").read_text())
OPEN_PORTS = {
    _PORTS["proxy_ui_port"]: "/health",
    _PORTS["proxy_airflow_port"]: "/api/v2/monitor/health",
    _PORTS["proxy_mlflow_port"]: "/health",
}
HEALTH_WAIT = 600


def record(phase: str, seconds: float) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "vm-timings.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[phase] = round(seconds, 1)
    data["_recorded"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path.write_text(json.dumps(data, indent=2) + "\n")


def in_lab(
    *cmd: str | Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
    log: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command inside the lab's network namespace (`ip netns exec`: fine for tools
    that only talk; the daemons were started the same way by vm-lab.sh)."""
    result = subprocess.run(
        ["ip", "netns", "exec", NETNS, *map(str, cmd)],
        env=env or os.environ.copy(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(map(str, cmd))}\n{result.stdout}\n{result.stderr}\n")
    return result


def timed(phase: str, *cmd: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    t = time.monotonic()
    result = in_lab(*cmd, **kwargs)
    record(phase, time.monotonic() - t)
    return result


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout[-4000:], result.stderr[-4000:])
    return result.stdout


def recap(output: str) -> dict[str, int]:
    match = re.search(
        r"^\S+\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", output, re.M
    )
    assert match, output[-3000:]
    return dict(
        zip(("ok", "changed", "unreachable", "failed"), map(int, match.groups()), strict=True)
    )


def virsh(*args: str) -> str:
    return ok(in_lab("virsh", "-q", "-c", "qemu:///system", *args))


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    assert QCOW2.is_file() and BOX.is_file(), f"no platform image in {IMAGE_DIR}: run `make image`"
    result = subprocess.run(
        [str(LAB), "up"], capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        yield
    finally:
        subprocess.run([str(LAB), "down"], capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def controller_files() -> dict[str, str]:
    """What the controller builds for site.yml, built before entering the namespace (which
    has no way out): the project wheel (pip's build isolation needs an index) and MinIO's
    binaries (scripts/build-minio.sh, from the Go module proxy, cached)."""
    wheel = subprocess.run(
        [str(REPO_ROOT / "scripts" / "build-wheel.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHON": str(VENV_BIN / "python")},
    )
    assert wheel.returncode == 0, wheel.stderr
    minio = subprocess.run(
        [str(REPO_ROOT / "scripts" / "build-minio.sh")],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert minio.returncode == 0, minio.stderr
    server, mc = minio.stdout.split()[-2:]
    return {"wheel": wheel.stdout.split()[-1], "minio": server, "mc": mc}


def playbook_vars(controller_files: dict[str, str], secrets: Path, minio: bool = True) -> list[str]:
    args = [
        # The image has every package: no apt mirror needed (and none is reachable here).
        "-e",
        "mlops_apt_update_cache=false",
        "-e",
        f"mlops_project_wheel={controller_files['wheel']}",
        "-e",
        f"mlops_secrets_dir={secrets}",
        # More playbook arguments for a run by hand, e.g. "-e mlops_data_api_interval_seconds=60".
        *os.environ.get("MLOPS_TEST_VM_ANSIBLE_ARGS", "").split(),
    ]
    if minio:
        args += [
            "-e",
            "minio_install_method=local",
            "-e",
            f"minio_binary_src={controller_files['minio']}",
            "-e",
            f"minio_mc_binary_src={controller_files['mc']}",
        ]
    return args


def check_platform(address: str, ssh: list[str], phase: str, log: Path, secrets: Path) -> None:
    """Every unit and health endpoint inside (mlops-status), and the open web ports from
    the namespace."""
    t = time.monotonic()
    deadline = t + HEALTH_WAIT
    while True:
        status = in_lab(*ssh, "sudo", "mlops-status", timeout=120, log=log)
        if status.returncode == 0:
            break
        assert time.monotonic() < deadline, status.stdout + status.stderr
        time.sleep(10)
    record(phase, time.monotonic() - t)
    for port, path in OPEN_PORTS.items():
        result = in_lab(
            "curl",
            "-fsS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "30",
            "--cacert",
            str(secrets / "proxy-ca" / "ca.crt"),
            f"https://{address}:{port}{path}",
            log=log,
        )
        assert ok(result) == "200", (port, result.stderr)


def ssh_key(tmp_path: Path) -> Path:
    key = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mlops test-vm", "-f", str(key)],
        check=True,
    )
    return key


@pytest.mark.timeout(10800)
def test_terraform_creates_provisions_and_destroys_a_vm(
    lab: None, controller_files: dict[str, str], tmp_path: Path
) -> None:
    log = ARTIFACTS / "vm-terraform.log"
    ARTIFACTS.mkdir(exist_ok=True)
    log.write_text("")
    cli = subprocess.run(
        [str(REPO_ROOT / "scripts" / "build-terraform-providers.sh")],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    work = tmp_path / "terraform"
    shutil.copytree(
        REPO_ROOT / "terraform",
        work,
        ignore=shutil.ignore_patterns(
            ".terraform*", "*.tfstate*", "inventory.yml", "terraform.tfvars"
        ),
    )
    # main.tf reads ../ansible/inventories/emulated-vm.yml (the emulated VM's waits).
    (tmp_path / "ansible" / "inventories").mkdir(parents=True)
    shutil.copy2(
        REPO_ROOT / "ansible" / "inventories" / "emulated-vm.yml",
        tmp_path / "ansible" / "inventories",
    )
    env = {
        **os.environ,
        "TF_CLI_CONFIG_FILE": cli.stdout.split()[-1],
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
        "CHECKPOINT_DISABLE": "1",
    }
    key = ssh_key(tmp_path)
    name = "mlops-tf-test"
    inventory = tmp_path / "inventory.yml"
    (work / "test.auto.tfvars.json").write_text(
        json.dumps(
            {
                "libvirt_uri": "qemu:///system",
                "domain_type": "qemu",
                "vm_name": name,
                "vcpu": VCPUS,
                "memory_mb": MEMORY_MB,
                "disk_size_gb": 24,
                "base_image_url": str(QCOW2),
                "cloud_init_packages": [],
                "create_network": True,
                "network_cidr": "10.231.1.0/24",
                "ssh_public_key": (key.with_suffix(".pub")).read_text(),
                "ssh_private_key_file": str(key),
                "inventory_path": str(inventory),
                "boot_timeout": "40m",
            }
        )
    )
    ok(in_lab("terraform", "init", "-no-color", env=env, cwd=work, log=log))
    applied = False
    address = ""
    try:
        t0 = time.monotonic()
        result = timed(
            "terraform apply",
            "terraform",
            "apply",
            "-auto-approve",
            "-no-color",
            env=env,
            cwd=work,
            timeout=1800,
            log=log,
        )
        applied = True
        ok(result)
        address = json.loads(
            ok(in_lab("terraform", "output", "-json", "address", env=env, cwd=work))
        )
        # The provider asked for type qemu and the CPU mode that follows it.
        xml = virsh("dumpxml", name)
        assert "type='qemu'" in xml and "mode='maximum'" in xml
        ansible_env = {**env, "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible" / "ansible.cfg")}
        # The waits run on Ansible's own strategy: its ssh honours the inventory's
        # StrictHostKeyChecking=accept-new (Mitogen's only enforces or ignores host keys;
        # site.yml's first play learns the key itself for that).
        wait_env = {**ansible_env, "ANSIBLE_STRATEGY": "linear"}
        ok(
            timed(
                "terraform: SSH as the cloud-init admin user",
                VENV_BIN / "ansible",
                "-i",
                inventory,
                "all",
                "-m",
                "ansible.builtin.wait_for_connection",
                "-a",
                "timeout=900",
                env=wait_env,
                cwd=REPO_ROOT / "ansible",
                timeout=1000,
                log=log,
            )
        )
        ok(
            timed(
                "terraform: cloud-init done",
                VENV_BIN / "ansible",
                "-i",
                inventory,
                "all",
                "-b",
                "-m",
                "ansible.builtin.shell",
                "-a",
                "cloud-init status --wait || test $? -eq 2",
                env=wait_env,
                cwd=REPO_ROOT / "ansible",
                timeout=1000,
                log=log,
            )
        )
        record("terraform: apply to SSH and cloud-init done", time.monotonic() - t0)
        t1 = time.monotonic()
        result = timed(
            "terraform: site.yml on the image",
            VENV_BIN / "ansible-playbook",
            "-i",
            inventory,
            "site.yml",
            *playbook_vars(controller_files, tmp_path / "secrets"),
            env=ansible_env,
            cwd=REPO_ROOT / "ansible",
            # Each Ansible task costs 20-30 s under emulation on a loaded host.
            timeout=7200,
            log=log,
        )
        counts = recap(ok(result))
        assert counts["failed"] == 0 and counts["unreachable"] == 0
        ssh = [
            "ssh",
            "-i",
            str(key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            f"mlops@{address}",
        ]
        check_platform(address, ssh, "terraform: health after site.yml", log, tmp_path / "secrets")
        record(
            "terraform: boot to healthy (apply start to every endpoint 200)", time.monotonic() - t0
        )
        record("terraform: site.yml start to healthy", time.monotonic() - t1)
        # Its own identity: machine-id and host keys made at first boot, not the image's.
        machine_id = ok(in_lab(*ssh, "cat", "/etc/machine-id")).strip()
        assert re.fullmatch(r"[0-9a-f]{32}", machine_id)
    finally:
        if applied:
            destroyed = timed(
                "terraform destroy",
                "terraform",
                "destroy",
                "-auto-approve",
                "-no-color",
                env=env,
                cwd=work,
                timeout=900,
                log=log,
            )
            assert destroyed.returncode == 0, destroyed.stdout[-3000:] + destroyed.stderr[-3000:]
            # The next VM at this address has other host keys: forget this one's.
            if address:
                subprocess.run(["ssh-keygen", "-R", address], capture_output=True, check=False)
    assert name not in virsh("list", "--all", "--name")
    assert not [v for v in virsh("vol-list", "default").split() if v.startswith(name)]
    assert f"{name}-net" not in virsh("net-list", "--all", "--name")


@pytest.mark.timeout(10800)
def test_vagrant_creates_provisions_and_destroys_a_vm(
    lab: None, controller_files: dict[str, str], tmp_path: Path
) -> None:
    log = ARTIFACTS / "vm-vagrant.log"
    ARTIFACTS.mkdir(exist_ok=True)
    log.write_text("")
    box_name = "forest-cover-mlops/debian13-test"
    env = {
        **os.environ,
        "VAGRANT_HOME": str(CACHE / "vm-lab" / "vagrant-home"),
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotfile"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        "VAGRANT_DEFAULT_PROVIDER": "libvirt",
        "MLOPS_VM_BOX": box_name,
        "MLOPS_VM_LIBVIRT_DRIVER": "qemu",
        "MLOPS_VM_LIBVIRT_NETWORK": LAB_NETWORK,
        "MLOPS_VM_CPUS": str(VCPUS),
        "MLOPS_VM_MEMORY": str(MEMORY_MB),
        "MLOPS_VM_BOOT_TIMEOUT": "2400",
        # The Vagrantfile's own knobs for MinIO's binaries; the rest as playbook arguments.
        "MINIO_BINARY": controller_files["minio"],
        "MC_BINARY": controller_files["mc"],
        "ANSIBLE_ARGS": " ".join(
            playbook_vars(controller_files, tmp_path / "secrets", minio=False)
        ),
    }
    ok(
        timed(
            "vagrant box add",
            "vagrant",
            "box",
            "add",
            "--force",
            "--name",
            box_name,
            BOX,
            env=env,
            cwd=REPO_ROOT,
            timeout=900,
            log=log,
        )
    )
    created = False
    try:
        t0 = time.monotonic()
        created = True
        ok(
            timed(
                "vagrant up --no-provision (boot to SSH)",
                "vagrant",
                "up",
                "--provider=libvirt",
                "--no-provision",
                env=env,
                cwd=REPO_ROOT,
                timeout=1800,
                log=log,
            )
        )
        t1 = time.monotonic()
        result = timed(
            "vagrant provision (site.yml on the image)",
            "vagrant",
            "provision",
            env=env,
            cwd=REPO_ROOT,
            # Each Ansible task costs 20-30 s under emulation on a loaded host.
            timeout=7200,
            log=log,
        )
        counts = recap(ok(result))
        assert counts["failed"] == 0 and counts["unreachable"] == 0
        config = ok(in_lab("vagrant", "ssh-config", env=env, cwd=REPO_ROOT))
        host = re.search(r"^\s*HostName (\S+)", config, re.M).group(1)  # type: ignore[union-attr]
        port = re.search(r"^\s*Port (\d+)", config, re.M).group(1)  # type: ignore[union-attr]
        identity = re.search(r"^\s*IdentityFile (\S+)", config, re.M).group(1).strip('"')  # type: ignore[union-attr]
        # Vagrant replaced the box's public insecure key with one of its own.
        assert "insecure_private_key" not in identity
        ssh = [
            "ssh",
            "-i",
            identity,
            "-p",
            port,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            f"vagrant@{host}",
        ]
        check_platform(host, ssh, "vagrant: health after provision", log, tmp_path / "secrets")
        record("vagrant: boot to healthy (up start to every endpoint 200)", time.monotonic() - t0)
        record("vagrant: provision start to healthy", time.monotonic() - t1)
        # The Vagrantfile forwards the UI to the same localhost port as `make up` (here the
        # namespace's loopback).
        ui = in_lab(
            "curl",
            "-fsS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "30",
            "--cacert",
            str(tmp_path / "secrets" / "proxy-ca" / "ca.crt"),
            f"https://127.0.0.1:{_PORTS['proxy_ui_port']}/health",
            log=log,
        )
        assert ok(ui) == "200"
    finally:
        if created:
            destroyed = timed(
                "vagrant destroy -f",
                "vagrant",
                "destroy",
                "-f",
                env=env,
                cwd=REPO_ROOT,
                timeout=900,
                log=log,
            )
            assert destroyed.returncode == 0, destroyed.stdout[-3000:] + destroyed.stderr[-3000:]
            in_lab("vagrant", "box", "remove", "--force", box_name, env=env, cwd=REPO_ROOT, log=log)
    assert virsh("list", "--all", "--name").strip() == ""
    assert LAB_NETWORK in virsh("net-list", "--all", "--name")
