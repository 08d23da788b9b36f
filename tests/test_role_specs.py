"""Every role documents every knob once: defaults/main.yml's comments are the descriptions.

scripts/argument-specs.py writes each meta/argument_specs.yml from defaults/main.yml and
ansible/group_vars/all/ports.yml; --check fails when a variable has no comment of its own,
when two share one, or when a spec file is out of date.
"""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.conftest import REPO_ROOT

ROLES = REPO_ROOT / "ansible" / "roles"


def test_argument_specs_are_generated_from_the_defaults() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "argument-specs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_every_option_has_its_own_description() -> None:
    for spec_file in ROLES.glob("*/meta/argument_specs.yml"):
        specs = yaml.safe_load(spec_file.read_text())["argument_specs"]
        descriptions = [
            o["description"] for entry in specs.values() for o in entry["options"].values()
        ]
        assert all(descriptions), spec_file
        assert len(descriptions) == len(set(descriptions)), spec_file


def test_every_role_has_the_same_shape() -> None:
    for role in ROLES.iterdir():
        for part in (
            "defaults/main.yml",
            "meta/main.yml",
            "meta/argument_specs.yml",
            "tasks/main.yml",
        ):
            assert (role / part).is_file(), f"{role.name}: {part}"
        if role.name != "common":
            # What it brings to its host, collected by role common.
            assert f"{role.name}_service:" in (role / "defaults" / "main.yml").read_text(), (
                role.name
            )
            assert (role / "handlers" / "main.yml").is_file(), role.name
