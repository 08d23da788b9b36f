"""The two ways users create the VM: the Vagrantfile and the terraform/ root module.

The fast checks, in `make test`: `vagrant validate`, `terraform fmt`, the HCL's structure,
the templates Terraform renders (a cloud-init document, an inventory `ansible-inventory`
accepts), and `terraform init`, `validate` and `plan` with the providers built from their Go
modules (scripts/build-terraform-providers.sh) against a libvirtd of the test's own.
Creating VMs for real is `make test-vm` (tests/vm/).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from tests.conftest import REPO_ROOT

TERRAFORM_DIR = REPO_ROOT / "terraform"
EMULATED_VM_VARS = REPO_ROOT / "ansible" / "inventories" / "emulated-vm.yml"
VAGRANTFILE = REPO_ROOT / "Vagrantfile"
SITE_YML = REPO_ROOT / "ansible" / "site.yml"

# Every UI and API the user opens (never 2024), from the one place ports are defined.
PORTS = yaml.safe_load((REPO_ROOT / "ansible" / "group_vars" / "all" / "ports.yml").read_text())
PLATFORM_PORTS = {PORTS[name] for name in PORTS["mlops_forwarded_ports"]}
SAMPLE_ADDRESS = "192.0.2.10"
# A comment with ": " would break a plain YAML scalar: the template must quote it.
SAMPLE_SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests user@laptop: test"

VAGRANT = shutil.which("vagrant")
TERRAFORM = shutil.which("terraform")
LIBVIRTD = shutil.which("libvirtd") or shutil.which("libvirtd", path="/usr/sbin:/sbin")
BUILD_PROVIDERS = REPO_ROOT / "scripts" / "build-terraform-providers.sh"


def service_groups() -> set[str]:
    """The inventory groups site.yml has a play for: the VM must be in each."""
    plays = yaml.safe_load(SITE_YML.read_text())
    return {p["hosts"] for p in plays} - {"all", "localhost"}


def unquote(value: str) -> str:
    # python-hcl2 keeps the quotes of string literals and block labels.
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def load_hcl() -> dict[str, list[dict[str, Any]]]:
    """Every top-level block of every .tf file, merged by block type."""
    merged: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(TERRAFORM_DIR.glob("*.tf")):
        with path.open() as f:
            for kind, blocks in hcl2.load(f).items():
                merged.setdefault(kind, []).extend(blocks)
    return merged


def resources(hcl: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for block in hcl.get("resource", []):
        for rtype, named in block.items():
            for name, body in named.items():
                found[(unquote(rtype), unquote(name))] = body
    return found


def labelled(hcl: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, dict[str, Any]]:
    return {unquote(k): v for block in hcl.get(kind, []) for k, v in block.items()}


def templatefile_call(expression: str) -> tuple[Path, set[str]]:
    """The template path and the variable names of a `templatefile(path, {k = v, ...})`."""
    match = re.search(r'templatefile\("\$\{path\.module\}/([^"]+)", \{(.*)\}\)', expression)
    assert match, f"not a templatefile() of a file in the module: {expression}"
    keys = set(re.findall(r"(?:^|, )(\w+) = ", match.group(2)))
    return TERRAFORM_DIR / match.group(1), keys


PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


def render(template: str, values: dict[str, str]) -> str:
    """Terraform's templatefile() for the subset the templates use: ${name} and
    ${jsonencode(name)}. Anything else fails, so a template that outgrows this renderer
    cannot pass unnoticed (and test_renderer_agrees_with_terraform checks it against
    Terraform itself)."""
    assert "%{" not in template, "template directives are not supported by this renderer"

    def substitute(match: re.Match[str]) -> str:
        expr = match.group(1).strip()
        if m := re.fullmatch(r"jsonencode\((\w+)\)", expr):
            # Terraform's jsonencode is compact.
            return json.dumps(values[m.group(1)], separators=(",", ":"))
        assert re.fullmatch(r"\w+", expr), f"unsupported template expression: ${{{expr}}}"
        return values[expr]

    return PLACEHOLDER.sub(substitute, template)


def placeholders(template: str) -> set[str]:
    names = set()
    for expr in PLACEHOLDER.findall(template):
        m = re.fullmatch(r"\s*(?:jsonencode\()?(\w+)\)?\s*", expr)
        assert m, f"unsupported template expression: ${{{expr}}}"
        names.add(m.group(1))
    return names


SAMPLE_VALUES = {
    "host_name": "forest-cover-mlops",
    "hostname": "forest-cover-mlops",
    "address": SAMPLE_ADDRESS,
    "admin_user": "mlops",
    "ssh_public_key": SAMPLE_SSH_KEY,
    "ssh_private_key_file": "/home/user/.ssh/id ed25519",
    "packages": ["python3", "qemu-guest-agent"],
    "package_update": True,
    # What main.tf passes for domain_type = "qemu" (an empty object otherwise).
    "emulation_vars": {"mlflow_health_wait_seconds": 1200},
}


# --- Vagrant -------------------------------------------------------------------------


def vagrant(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        # Keep Vagrant's state out of the repository and the user's home.
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotfile"),
        "VAGRANT_HOME": str(tmp_path / "home"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        **env,
    }
    return subprocess.run(
        [VAGRANT or "vagrant", *args],
        cwd=REPO_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(VAGRANT is None, reason="vagrant is not installed (scripts/bootstrap.sh)")
def test_vagrant_validate(tmp_path: Path) -> None:
    # --ignore-provider: neither VirtualBox nor vagrant-libvirt is installed here; the
    # rest (network, forwarded ports, the Ansible provisioner's options) is validated.
    result = vagrant(tmp_path, "validate", "--ignore-provider")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout


@pytest.mark.skipif(VAGRANT is None, reason="vagrant is not installed (scripts/bootstrap.sh)")
def test_vagrant_validate_rejects_an_unknown_libvirt_driver(tmp_path: Path) -> None:
    result = vagrant(tmp_path, "validate", "--ignore-provider", MLOPS_VM_LIBVIRT_DRIVER="xen")
    assert result.returncode != 0
    assert "MLOPS_VM_LIBVIRT_DRIVER must be kvm or qemu" in result.stdout + result.stderr


def test_vagrantfile_libvirt_driver_and_cpu_follow_the_environment() -> None:
    text = VAGRANTFILE.read_text()
    # kvm for real hosts by default; the CPU mode follows the driver (host-passthrough
    # exists only with KVM).
    assert re.search(r'LIBVIRT_DRIVER = ENV\.fetch\("MLOPS_VM_LIBVIRT_DRIVER", "kvm"\)', text)
    assert "lv.driver = LIBVIRT_DRIVER" in text
    assert re.search(
        r'lv\.cpu_mode = LIBVIRT_DRIVER == "kvm" \? "host-passthrough" : "maximum"', text
    )
    assert "lv.management_network_keep = true" in text


@pytest.mark.skipif(VAGRANT is None, reason="vagrant is not installed (scripts/bootstrap.sh)")
def test_vagrant_validate_rejects_a_bad_size(tmp_path: Path) -> None:
    result = vagrant(tmp_path, "validate", "--ignore-provider", MLOPS_VM_CPUS="four")
    assert result.returncode != 0
    assert "Integer" in result.stdout + result.stderr


def test_vagrantfile_forwards_every_port_and_runs_site_yml() -> None:
    text = VAGRANTFILE.read_text()
    # The forwarded ports are read from ansible/group_vars/all/ports.yml; evaluate that part.
    ports_block = re.search(r'^require "yaml"\n.*?^end\.freeze$', text, re.S | re.M)
    assert ports_block and "mlops_forwarded_ports" in ports_block.group(0)
    script = f"ROOT = {str(REPO_ROOT)!r}\n{ports_block.group(0)}\n"
    script += "puts FORWARDED_PORTS.values.join(' ')"
    if shutil.which("ruby"):
        out = subprocess.run(["ruby", "-e", script], capture_output=True, text=True, check=True)
        assert {int(p) for p in out.stdout.split()} == PLATFORM_PORTS
    # Only the TLS proxy's ports: the services behind it listen on the VM's loopback.
    assert {PORTS["proxy_ui_port"], PORTS["proxy_airflow_port"], PORTS["proxy_mlflow_port"]} <= (
        PLATFORM_PORTS
    )
    assert not {PORTS["ui_port"], PORTS["airflow_api_port"], PORTS["mlflow_port"]} & PLATFORM_PORTS
    assert 2024 not in PORTS.values()
    # Same port on the host as in the VM, so make up's localhost URLs work unchanged.
    assert re.search(r'"forwarded_port",.*guest: port, host: port,', text)
    assert "2024" not in text

    assert re.search(r'ansible\.playbook = "ansible/site\.yml"', text)
    assert (REPO_ROOT / "ansible" / "site.yml").is_file()
    assert re.search(r'ansible\.compatibility_mode = "2\.0"', text)
    groups_block = re.search(r"SERVICE_GROUPS = %w\[(.*?)\]", text)
    assert groups_block
    assert set(groups_block.group(1).split()) == service_groups()
    assert re.search(r"config\.vm\.box = BOX\b", text)
    assert re.search(
        r'BOX = ENV\.fetch\("MLOPS_VM_BOX", "(debian/trixie64|bento/debian-13)"\)', text
    )
    assert re.search(r'ENV\.fetch\("MLOPS_VM_CPUS", "4"\)', text)
    assert re.search(r'ENV\.fetch\("MLOPS_VM_MEMORY", "8192"\)', text)
    assert re.search(r'config\.vm\.provider "virtualbox"', text)
    assert re.search(r'config\.vm\.provider "libvirt"', text)
    assert re.search(r'"private_network", ip: PRIVATE_IP', text)


# --- Terraform -----------------------------------------------------------------------


@pytest.mark.skipif(TERRAFORM is None, reason="terraform is not installed")
def test_terraform_fmt() -> None:
    result = subprocess.run(
        [TERRAFORM or "terraform", "fmt", "-check", "-recursive", "terraform/"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"not formatted: {result.stdout} {result.stderr}"


def test_providers_are_pinned_exactly() -> None:
    (terraform,) = load_hcl()["terraform"]
    (providers,) = terraform["required_providers"]
    providers = {k: v for k, v in providers.items() if not k.startswith("__")}
    assert unquote(providers["libvirt"]["source"]) == "dmacvicar/libvirt"
    for name, spec in providers.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", unquote(spec["version"])), name


def test_resources_build_the_vm_and_the_inventory() -> None:
    hcl = load_hcl()
    found = resources(hcl)
    base = found[("libvirt_volume", "base")]
    assert base["source"] == "${var.base_image_url}"
    default_image = unquote(labelled(hcl, "variable")["base_image_url"]["default"])
    assert default_image.endswith("/trixie/latest/debian-13-genericcloud-amd64.qcow2")
    root = found[("libvirt_volume", "root")]
    assert root["base_volume_id"] == "${libvirt_volume.base.id}"
    assert "var.disk_size_gb" in root["size"]

    cloudinit = found[("libvirt_cloudinit_disk", "init")]
    # Pool uploads one after the other (the provider deadlocks on two at once).
    assert cloudinit["depends_on"] == ["${libvirt_volume.root}"]
    template, _ = templatefile_call(cloudinit["user_data"])
    assert template.name == "cloud-init.yaml.tftpl"

    domain = found[("libvirt_domain", "mlops")]
    assert domain["cloudinit"] == "${libvirt_cloudinit_disk.init.id}"
    assert domain["vcpu"] == "${var.vcpu}"
    assert domain["memory"] == "${var.memory_mb}"
    assert domain["disk"][0]["volume_id"] == "${libvirt_volume.root.id}"
    assert domain["network_interface"][0]["wait_for_lease"] is True

    inventory = found[("local_file", "inventory")]
    template, _ = templatefile_call(inventory["content"])
    assert template.name == "inventory.yml.tftpl"

    # The playbook run is optional, off unless asked for.
    run = found[("terraform_data", "ansible")]
    assert run["count"] == "${var.run_ansible ? 1 : 0}"
    assert labelled(hcl, "variable")["run_ansible"]["default"] is False
    command = run["provisioner"][0]['"local-exec"']["command"]
    assert "site.yml" in command


def test_variables_and_outputs() -> None:
    hcl = load_hcl()
    variables = labelled(hcl, "variable")
    for name in (
        "vm_name",
        "vcpu",
        "memory_mb",
        "disk_size_gb",
        "network_name",
        "ssh_public_key",
        "admin_user",
        "libvirt_uri",
        "run_ansible",
    ):
        assert name in variables, name
    assert "address" in labelled(hcl, "output")

    # What terraform validate would catch first: a var.x that is not declared, or a
    # variable nothing uses.
    source = "\n".join(p.read_text() for p in TERRAFORM_DIR.glob("*.tf"))
    used = set(re.findall(r"\bvar\.(\w+)", source))
    assert used == set(variables)

    with (TERRAFORM_DIR / "terraform.tfvars.example").open() as f:
        example = {k for k in hcl2.load(f) if not k.startswith("__")}
    assert example <= set(variables)
    assert "ssh_public_key" in example


@pytest.mark.parametrize(
    "resource",
    [("libvirt_cloudinit_disk", "init", "user_data"), ("local_file", "inventory", "content")],
)
def test_template_variables_match_the_call(resource: tuple[str, str, str]) -> None:
    rtype, name, attribute = resource
    template, keys = templatefile_call(resources(load_hcl())[(rtype, name)][attribute])
    assert placeholders(template.read_text()) == keys


def rendered(template: str) -> str:
    return render((TERRAFORM_DIR / "templates" / template).read_text(), SAMPLE_VALUES)


def test_inventory_renders_with_every_service_group(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(rendered("inventory.yml.tftpl"))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(inventory), "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        # Fail on an inventory Ansible cannot parse instead of warning and going on empty.
        env={**os.environ, "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true"},
    )
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    host = SAMPLE_VALUES["host_name"]
    for group in service_groups():
        assert listing[group]["hosts"] == [host], group
    hostvars = listing["_meta"]["hostvars"][host]
    assert hostvars["ansible_host"] == SAMPLE_ADDRESS
    assert hostvars["ansible_user"] == "mlops"
    assert hostvars["ansible_ssh_private_key_file"] == SAMPLE_VALUES["ssh_private_key_file"]
    assert hostvars["mlflow_health_wait_seconds"] == 1200


def test_emulated_vm_vars_win_over_the_playbooks_group_vars(tmp_path: Path) -> None:
    # emulated-vm.yml sets mlops_mlflow_workers, which group_vars/all/main.yml also sets:
    # only host variables outrank a playbook's group_vars/all, so an inventory `all: vars`
    # would silently keep two MLflow workers on an emulated VM.
    emulated = yaml.safe_load(EMULATED_VM_VARS.read_text())
    inventory = tmp_path / "inventory.yml"
    template = (TERRAFORM_DIR / "templates" / "inventory.yml.tftpl").read_text()
    inventory.write_text(render(template, {**SAMPLE_VALUES, "emulation_vars": emulated}))
    names = sorted(emulated)
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible"),
            "-i",
            str(inventory),
            "--playbook-dir",
            str(SITE_YML.parent),
            SAMPLE_VALUES["host_name"],
            "-c",
            "local",
            "-m",
            "ansible.builtin.debug",
            "-a",
            "msg={{ [" + ", ".join(names) + "] | to_json }}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "ANSIBLE_STRATEGY": "linear",
            "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
            "ANSIBLE_STDOUT_CALLBACK": "json",
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (task,) = json.loads(result.stdout)["plays"][0]["tasks"]
    resolved = json.loads(task["hosts"][SAMPLE_VALUES["host_name"]]["msg"])
    assert dict(zip(names, resolved, strict=True)) == emulated
    assert "mlops_mlflow_workers" in emulated


def test_cloud_init_creates_the_admin_user_with_the_key() -> None:
    text = rendered("cloud-init.yaml.tftpl")
    assert text.startswith("#cloud-config\n")
    config = yaml.safe_load(text)
    (user,) = config["users"]
    assert user["name"] == "mlops"
    assert user["ssh_authorized_keys"] == [SAMPLE_SSH_KEY]
    assert user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert config["hostname"] == "forest-cover-mlops"
    assert "python3" in config["packages"]


@pytest.mark.skipif(TERRAFORM is None, reason="terraform is not installed")
@pytest.mark.parametrize("template", ["inventory.yml.tftpl", "cloud-init.yaml.tftpl"])
def test_renderer_agrees_with_terraform(template: str, tmp_path: Path) -> None:
    # templatefile() needs no provider, so `terraform console` in an empty folder renders
    # the template exactly as `terraform apply` would.
    path = TERRAFORM_DIR / "templates" / template
    values = ", ".join(f"{k} = {json.dumps(v)}" for k, v in SAMPLE_VALUES.items())
    result = subprocess.run(
        [TERRAFORM or "terraform", "console"],
        input=f'jsonencode(templatefile("{path}", {{{values}}}))\n',
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    by_terraform = json.loads(json.loads(result.stdout.strip()))
    assert by_terraform == rendered(template)


# --- terraform init / validate / plan with the providers built here -------------------


def dirhash_h1(folder: Path) -> str:
    """Terraform's "h1:" package hash (Go's dirhash.Hash1) of an unpacked provider folder:
    sha256 over the sorted "<sha256>  <path>" lines of its files."""
    lines = sorted(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(folder).as_posix()}\n"
        for p in folder.rglob("*")
        if p.is_file()
    )
    return "h1:" + base64.b64encode(hashlib.sha256("".join(lines).encode()).digest()).decode()


@pytest.fixture(scope="module")
def terraform_cli_config() -> Path:
    # Built once per machine from the Go module proxy (about 2 minutes), then cached in
    # $MLOPS_CACHE/terraform-providers: a registry download is not possible here.
    result = subprocess.run(
        [str(BUILD_PROVIDERS)], capture_output=True, text=True, timeout=1800, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def libvirt_uri() -> Iterator[str]:
    """A libvirtd of this test's own, in session mode (an unprivileged user's daemon): its
    sockets and state live in a temp folder, so it cannot meet the host's or make test-vm's
    libvirtd, and it cannot create networks or guests. `terraform plan` connects to it (the
    provider opens the connection when it is configured) and creates nothing."""
    if LIBVIRTD is None:
        pytest.fail("libvirtd is not installed (scripts/bootstrap.sh installs libvirt-daemon)")
    # Not under pytest's temp folder: that is root-only, and the daemon runs as nobody.
    home = Path(tempfile.mkdtemp(prefix="mlops-test-libvirtd-"))
    preexec = None
    if os.getuid() == 0:
        shutil.chown(home, "nobody", "nogroup")
        nobody = (65534, 65534)

        def preexec() -> None:  # drop to nobody: a session daemon, not the system one
            os.setgroups([])
            os.setgid(nobody[1])
            os.setuid(nobody[0])

    env = {
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(home / "run"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    log = (home / "libvirtd.log").open("w")
    daemon = subprocess.Popen(
        [LIBVIRTD], env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec
    )
    socket = home / "run" / "libvirt" / "libvirt-sock"
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert daemon.poll() is None, (home / "libvirtd.log").read_text()
            assert time.monotonic() < deadline, "libvirtd did not create its socket in 30 s"
            time.sleep(0.1)
        yield f"qemu:///session?socket={socket}"
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def terraform_module(
    terraform_cli_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, str]]:
    """terraform/ copied to a temp folder and initialised from the local provider mirror, so
    neither .terraform/ nor the lock file lands in the repository."""
    work = tmp_path_factory.mktemp("terraform")
    for item in TERRAFORM_DIR.iterdir():
        if item.name in {".terraform", ".terraform.lock.hcl", "terraform.tfstate", "inventory.yml"}:
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, work / item.name)
    # main.tf reads ../ansible/inventories/emulated-vm.yml (the emulated VM's waits).
    (work.parent / "ansible" / "inventories").mkdir(parents=True, exist_ok=True)
    shutil.copy2(EMULATED_VM_VARS, work.parent / "ansible" / "inventories")
    env = {
        **os.environ,
        "TF_CLI_CONFIG_FILE": str(terraform_cli_config),
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
        "CHECKPOINT_DISABLE": "1",
    }
    result = terraform(work, env, "init", "-no-color")
    assert result.returncode == 0, result.stdout + result.stderr
    return work, env


def terraform(work: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TERRAFORM or "terraform", *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


needs_terraform = pytest.mark.skipif(TERRAFORM is None, reason="terraform is not installed")


@needs_terraform
def test_terraform_init_locks_the_providers_built_here(
    terraform_module: tuple[Path, dict[str, str]], terraform_cli_config: Path
) -> None:
    work, _ = terraform_module
    with (work / ".terraform.lock.hcl").open() as f:
        locked = {unquote(k): v for block in hcl2.load(f)["provider"] for k, v in block.items()}
    (terraform,) = load_hcl()["terraform"]
    (required,) = terraform["required_providers"]
    mirror = terraform_cli_config.parent / "registry.terraform.io"
    for spec in (v for k, v in required.items() if not k.startswith("__")):
        source, version = unquote(spec["source"]), unquote(spec["version"])
        lock = locked[f"registry.terraform.io/{source}"]
        assert unquote(lock["version"]) == version
        # The hash of our own build, not the registry's: generated here, never committed.
        hashes = [unquote(h) for h in lock["hashes"]]
        assert hashes == [dirhash_h1(mirror / source / version / "linux_amd64")]
    assert not (TERRAFORM_DIR / ".terraform.lock.hcl").exists()


@needs_terraform
def test_terraform_validate(terraform_module: tuple[Path, dict[str, str]]) -> None:
    work, env = terraform_module
    result = terraform(work, env, "validate", "-no-color", "-json")
    assert json.loads(result.stdout)["valid"] is True, result.stdout


def plan(
    terraform_module: tuple[Path, dict[str, str]], libvirt_uri: str, *variables: str
) -> dict[str, dict[str, Any]]:
    """`terraform plan` -> the planned values of each resource, by address."""
    work, env = terraform_module
    args = ["-var", f"libvirt_uri={libvirt_uri}", "-var", f"ssh_public_key={SAMPLE_SSH_KEY}"]
    for v in variables:
        args += ["-var", v]
    result = terraform(work, env, "plan", "-no-color", "-out", "plan.bin", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    shown = terraform(work, env, "show", "-json", "plan.bin")
    assert shown.returncode == 0, shown.stderr
    changes = json.loads(shown.stdout)["resource_changes"]
    assert all(c["change"]["actions"] == ["create"] for c in changes)
    return {c["address"]: c["change"]["after"] for c in changes}


@needs_terraform
def test_terraform_plan_on_a_host_without_kvm(
    terraform_module: tuple[Path, dict[str, str]], libvirt_uri: str
) -> None:
    image = "/var/cache/forest-cover-mlops/image/forest-cover-mlops-debian13.qcow2"
    planned = plan(
        terraform_module,
        libvirt_uri,
        "domain_type=qemu",
        f"base_image_url={image}",
        "cloud_init_packages=[]",
        "create_network=true",
        "network_cidr=10.231.5.0/24",
    )
    assert set(planned) == {
        "libvirt_network.mlops[0]",
        "libvirt_volume.base",
        "libvirt_volume.root",
        "libvirt_cloudinit_disk.init",
        "libvirt_domain.mlops",
        "local_file.inventory",
    }
    domain = planned["libvirt_domain.mlops"]
    assert domain["type"] == "qemu"
    # host-passthrough needs KVM; emulation gets the most QEMU emulates.
    assert domain["cpu"] == [{"mode": "maximum"}]
    assert domain["qemu_agent"] is True
    assert planned["libvirt_volume.base"]["source"] == image
    assert planned["libvirt_network.mlops[0]"]["addresses"] == ["10.231.5.0/24"]
    # The platform image has the packages: cloud-init installs nothing and needs no mirror.
    user_data = yaml.safe_load(planned["libvirt_cloudinit_disk.init"]["user_data"])
    assert user_data["packages"] == []
    assert user_data["package_update"] is False
    assert user_data["users"][0]["ssh_authorized_keys"] == [SAMPLE_SSH_KEY]


@needs_terraform
def test_terraform_plan_defaults_are_for_a_kvm_host(
    terraform_module: tuple[Path, dict[str, str]], libvirt_uri: str
) -> None:
    planned = plan(terraform_module, libvirt_uri)
    domain = planned["libvirt_domain.mlops"]
    assert domain["type"] == "kvm"
    assert domain["cpu"] == [{"mode": "host-passthrough"}]
    assert "libvirt_network.mlops[0]" not in planned
    assert planned["libvirt_volume.base"]["source"].endswith("debian-13-genericcloud-amd64.qcow2")
    user_data = yaml.safe_load(planned["libvirt_cloudinit_disk.init"]["user_data"])
    assert user_data["packages"] == ["python3", "qemu-guest-agent"]
    assert user_data["package_update"] is True


@needs_terraform
def test_terraform_plan_rejects_an_unknown_domain_type(
    terraform_module: tuple[Path, dict[str, str]], libvirt_uri: str
) -> None:
    work, env = terraform_module
    result = terraform(
        work,
        env,
        "plan",
        "-no-color",
        "-var",
        f"libvirt_uri={libvirt_uri}",
        "-var",
        f"ssh_public_key={SAMPLE_SSH_KEY}",
        "-var",
        "domain_type=xen",
    )
    assert result.returncode != 0
    assert "domain_type must be kvm or qemu" in result.stderr
