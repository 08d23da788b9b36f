#!/usr/bin/env bash
# Regenerate the hash-pinned lock file of every process group (one venv each on the VM).
# Universal locks: the same file installs on the host's Python 3.11 and on the VM's 3.12/3.13.
set -euo pipefail
cd "$(dirname "$0")/.."
groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(data-api pipeline mlflow-server inference-api ui dev)
for g in "${groups[@]}"; do
    echo "locking $g"
    uv pip compile pyproject.toml --extra "$g" --universal --python-version 3.11 \
        --generate-hashes --no-header --quiet -o "requirements/$g.lock.txt"
done
