#!/usr/bin/env bash
# Build the project wheel (forest-cover-mlops) that every venv on the VM installs with --no-deps.
# Builds from a clean copy of the source so a stale build/ folder can never leak deleted files
# into the wheel, with SOURCE_DATE_EPOCH fixed so unchanged sources give a byte-identical wheel
# (Ansible then sees no change and reinstalls nothing). Prints the wheel's path on stdout.
# site.yml runs this on every run: when the sources are byte for byte those of the last build
# (the sha256 of a tar of their names, modes and contents, kept next to the wheel), the last
# wheel is reused instead of built again.
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
mkdir -p "$out" "$work/src"
# No times or owners in the tar, so a fresh checkout or a touched file changes nothing.
tar -C "$repo" --exclude=__pycache__ --exclude="*.pyc" --sort=name --mtime=@0 --owner=0 \
    --group=0 --numeric-owner -cf "$work/src.tar" "${files[@]}"
sum="$(sha256sum "$work/src.tar" | cut -d' ' -f1)"
wheels=("$out"/forest_cover_mlops-*.whl)
if [ ${#wheels[@]} -eq 1 ] && [ -f "${wheels[0]}" ] && [ "$(cat "$out/.source-sha256" 2>/dev/null)" = "$sum" ]; then
    echo "${wheels[0]}"
    exit 0
fi
tar -C "$work/src" -xf "$work/src.tar"
rm -f "$out"/forest_cover_mlops-*.whl "$out/.source-sha256"
SOURCE_DATE_EPOCH=315532800 "$python" -m pip wheel -q --no-deps --disable-pip-version-check \
    -w "$out" "$work/src" >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
echo "$sum" >"$out/.source-sha256"
ls "$out"/forest_cover_mlops-*.whl
