#!/usr/bin/env bash
# Build the project wheel (forest-cover-mlops) that every venv on the VM installs with --no-deps.
# Builds from a clean copy of the source so a stale build/ folder can never leak deleted files
# into the wheel, with SOURCE_DATE_EPOCH fixed so unchanged sources give a byte-identical wheel
# (Ansible then sees no change and reinstalls nothing). Prints the wheel's path on stdout.
# Usage: scripts/build-wheel.sh [OUT_DIR]   (default: var/wheels)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$repo/var/wheels}"
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python=python3

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
files=(pyproject.toml app ui)
[ -f "$repo/README.md" ] && files+=(README.md)
tar -C "$repo" --exclude=__pycache__ --exclude="*.pyc" -cf - "${files[@]}" \
    | tar -C "$work" -xf -
mkdir -p "$out"
rm -f "$out"/forest_cover_mlops-*.whl
SOURCE_DATE_EPOCH=315532800 "$python" -m pip wheel -q --no-deps --disable-pip-version-check \
    -w "$out" "$work" >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
ls "$out"/forest_cover_mlops-*.whl
