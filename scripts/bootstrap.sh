#!/usr/bin/env bash
# Install what `make test` needs on a fresh Debian 12/13 (or Ubuntu 24.04) machine:
# the Debian packages of the real servers the tests start, and the dev venv from its lock file.
# Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }
die() { printf 'bootstrap: %s\n' "$*" >&2; exit 1; }

[ "$(uname -s)" = Linux ] || die "needs Linux (Debian 12/13 or Ubuntu 24.04); this is $(uname -s)."
command -v apt-get >/dev/null || die "needs a Debian-family system with apt-get; install PostgreSQL, MariaDB/MySQL server and python3-venv by hand, then run 'make venv test-only'."

# Debian packages: PostgreSQL and a MySQL-compatible server (binaries only; the tests run their
# own throwaway instances), python3-venv for the dev venv, vagrant for `vagrant validate`,
# libvirt-daemon for `terraform plan` (the test runs its own unprivileged libvirtd; the
# libvirt provider connects when it is configured), libnss3-tools (certutil) so the end-to-end
# test's Chromium trusts the CA the playbook generates, redis-server (the Celery executor test's
# broker, and the drop-in test's distro unit).
packages=(postgresql mariadb-server redis-server python3-venv python3-dev gcc wrk curl ca-certificates chromium libnss3-tools debootstrap systemd-container vagrant libvirt-daemon)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing Debian packages: ${missing[*]}. Run 'make test' as root, or install them: sudo apt-get install ${missing[*]}"
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # vagrant only where the distro has it; the `vagrant validate` test skips without it.
    if ! apt-cache show vagrant >/dev/null 2>&1; then
        say "no vagrant package here: the vagrant validate test will be skipped"
        available=()
        for p in "${missing[@]}"; do [ "$p" = vagrant ] || available+=("$p"); done
        missing=("${available[@]}")
    fi
    # The server packages try to start their distro services; the tests do not need them.
    [ ${#missing[@]} -eq 0 ] || apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
