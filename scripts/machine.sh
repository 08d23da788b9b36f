#!/usr/bin/env bash
# The local platform machine: a Debian 13 (trixie) systemd-nspawn container that shares the
# host's network, provisioned over SSH by ansible/site.yml like any VM.
#
#   scripts/machine.sh up       build (first time) + boot + provision + health check + URLs
#   scripts/machine.sh down     stop it; its disk is kept (PURGE=1 deletes it)
#   scripts/machine.sh boot     start a provisioned machine again without provisioning it,
#                               then check that every unit and health endpoint came back
#   scripts/machine.sh status   is it running, and mlops-status inside it
#   scripts/machine.sh ssh [CMD]
#
# Needs root and Linux; installs debootstrap and systemd-container with apt when missing.
# MinIO runs inside the machine as a unit of mlops.target. Its binaries are built on the host
# from MinIO's Go modules (scripts/build-minio.sh, once per host, cached in $MLOPS_CACHE):
# the release downloads are on GitHub, which our build machines cannot reach.
# Knobs (environment):
#   MINIO_BINARY=/path/to/minio MC_BINARY=/path/to/mc
#                                 install these binaries instead of building them.
#   PURGE=1                       with `down`: delete the machine's disk (next `up` is fresh).
#   ANSIBLE_ARGS="-e k=v ..."     extra ansible-playbook arguments for `up`.
#   HEALTH_WAIT=240               seconds `up` and `boot` wait for mlops-status to pass.
#   MLOPS_CACHE=/var/cache/forest-cover-mlops   pristine rootfs, pip and apt caches.
#   DEBIAN_MIRROR=http://deb.debian.org/debian
set -Eeuo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
name=mlops-local
cache="${MLOPS_CACHE:-/var/cache/forest-cover-mlops}"
pristine="$cache/rootfs-trixie"
state="${MACHINE_DIR:-$repo/var/machine}"
rootfs="$state/rootfs"
logs="$state/logs"
key="$state/ssh/id_ed25519"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ssh_port=2222
venv="$repo/.venv"
nspawn_pid_file="$state/nspawn.pid"
# Ports the machine's services take on the host's network (it shares it): SSH and every
# port of ansible/group_vars/all/ports.yml, where each is defined once (`name_port: N` lines).
ports_file="$repo/ansible/group_vars/all/ports.yml"
port_of() { sed -n "s/^$1: *\([0-9][0-9]*\) *\$/\1/p" "$ports_file"; }
mapfile -t service_ports < <(echo "$ssh_port"; sed -n 's/^[a-z_]*_port: *\([0-9][0-9]*\) *$/\1/p' "$ports_file")

step_name="start"
step_log=""
t0=$(date +%s)

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
step() { step_name="$1"; step_log="${2:-}"; say "$1"; }
on_error() {
    local rc=$?
    printf '\nmachine.sh: step "%s" failed (exit %s).\n' "$step_name" "$rc" >&2
    [ -n "$step_log" ] && printf 'Its log: %s  (tail -n 50 %s)\n' "$step_log" "$step_log" >&2
    printf 'Machine console log: %s/nspawn.log\n' "$logs" >&2
    exit "$rc"
}
trap on_error ERR
die() { printf 'machine.sh: %s\n' "$*" >&2; exit 1; }
elapsed() { echo $(( $(date +%s) - $1 )); }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
machine_running() { pid_alive "$nspawn_pid_file"; }
port_busy() { ss -Htln "sport = :$1" | grep -q .; }

ssh_machine() {
    ssh -i "$key" -p "$ssh_port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o LogLevel=ERROR -o ConnectTimeout=5 -o BatchMode=yes root@127.0.0.1 "$@"
}

preflight() {
    step "checking the host"
    [ "$(uname -s)" = Linux ] || die "needs Linux"
    [ "$(id -u)" = 0 ] || die "needs root (debootstrap and systemd-nspawn)"
    [ -x "$venv/bin/ansible-playbook" ] || die "the dev venv is missing: run 'make venv' first"
    local need=()
    command -v debootstrap >/dev/null || need+=(debootstrap)
    command -v systemd-nspawn >/dev/null || need+=(systemd-container)
    command -v ssh >/dev/null || need+=(openssh-client)
    if [ ${#need[@]} -gt 0 ]; then
        step "installing ${need[*]}" "$logs/apt-host.log"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >"$logs/apt-host.log" 2>&1 \
            || { apt-get update -q >>"$logs/apt-host.log" 2>&1 \
                 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >>"$logs/apt-host.log" 2>&1; }
    fi
}

build_pristine() {
    [ -f "$pristine/.complete" ] && return 0
    step "building the Debian 13 rootfs with debootstrap (cached in $pristine)" "$logs/debootstrap.log"
    local t; t=$(date +%s)
    rm -rf "$pristine.tmp"
    mkdir -p "$cache"
    debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,dbus,openssh-server,python3,python3-apt,ca-certificates,sudo,iproute2,procps,less \
        trixie "$pristine.tmp" "$mirror" >"$logs/debootstrap.log" 2>&1
    touch "$pristine.tmp/.complete"
    rm -rf "$pristine"
    mv "$pristine.tmp" "$pristine"
    note "debootstrap took $(elapsed "$t") s"
}

make_rootfs() {
    [ -f "$rootfs/.complete" ] && { note "reusing the machine's disk $rootfs (PURGE=1 make down for a fresh one)"; return 0; }
    step "creating the machine's disk from the pristine rootfs" "$logs/rootfs.log"
    rm -rf "$rootfs"
    cp -a --reflink=auto "$pristine" "$rootfs"
    rm -f "$rootfs/.complete"
    mkdir -p "$(dirname "$key")"
    [ -f "$key" ] || ssh-keygen -q -t ed25519 -N '' -C "mlops-local machine" -f "$key"
    {
        echo "$name" >"$rootfs/etc/hostname"
        printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost ip6-localhost ip6-loopback\n' "$name" >"$rootfs/etc/hosts"
        rm -f "$rootfs/etc/apt/sources.list"
        cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: trixie-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        # sshd on the host's loopback, port 2222, key only: the machine shares the host's network.
        cat >"$rootfs/etc/ssh/sshd_config.d/mlops-local.conf" <<EOF
Port $ssh_port
ListenAddress 127.0.0.1
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
EOF
        install -d -m 0700 "$rootfs/root/.ssh"
        install -m 0600 "$key.pub" "$rootfs/root/.ssh/authorized_keys"
        # A fresh host key per machine instead of the pristine copy's.
        rm -f "$rootfs"/etc/ssh/ssh_host_*
        chroot "$rootfs" ssh-keygen -A
        # A persistent journal: `journalctl -b -1` inside shows how the last shutdown went.
        install -d -m 2755 "$rootfs/var/log/journal"
        # Services that would act on the host's shared network or clock stay off.
        for unit in systemd-networkd.service systemd-resolved.service systemd-timesyncd.service; do
            ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
        done
        touch "$rootfs/.complete"
    } >"$logs/rootfs.log" 2>&1
}

build_minio() {
    if [ -n "${MINIO_BINARY:-}" ] || [ -n "${MC_BINARY:-}" ]; then
        [ -x "${MINIO_BINARY:-}" ] && [ -x "${MC_BINARY:-}" ] \
            || die "MINIO_BINARY and MC_BINARY must both name executable files"
        note "MinIO: installing $MINIO_BINARY and $MC_BINARY"
        return 0
    fi
    "$repo/scripts/build-minio.sh" --print >/dev/null && return 0
    step "building MinIO and mc from their Go modules (once per host, a few minutes)" "$logs/build-minio.log"
    local t; t=$(date +%s)
    MLOPS_CACHE="$cache" "$repo/scripts/build-minio.sh" >"$logs/build-minio.log" 2>&1
    note "built in $(elapsed "$t") s"
}

boot() {
    if machine_running; then
        note "the machine is already running (pid $(cat "$nspawn_pid_file"))"
        return 0
    fi
    step "checking the host ports the machine's services need"
    local p busy=()
    for p in "${service_ports[@]}"; do port_busy "$p" && busy+=("$p"); done
    [ ${#busy[@]} -eq 0 ] || die "ports ${busy[*]} are taken on the host; the machine shares the host's network and needs them"
    step "booting the machine with systemd-nspawn" "$logs/nspawn.log"
    # apt locks its archive folder: one per machine, so two machines (the image build and
    # the local machine) can install at once.
    mkdir -p "$cache/pip" "$cache/apt-archives/$name/partial"
    local t; t=$(date +%s)
    setsid systemd-nspawn --boot --keep-unit --register=no --console=read-only \
        --machine="$name" -D "$rootfs" \
        --bind="$cache/pip:/var/cache/mlops-pip" \
        --bind="$cache/apt-archives/$name:/var/cache/apt/archives" \
        </dev/null >"$logs/nspawn.log" 2>&1 &
    echo $! >"$nspawn_pid_file"
    step "waiting for SSH on 127.0.0.1:$ssh_port" "$logs/nspawn.log"
    for _ in $(seq 120); do
        ssh_machine true 2>/dev/null && break
        machine_running || { tail -n 20 "$logs/nspawn.log" >&2; false; }
        sleep 0.5
    done
    ssh_machine true
    ssh_machine systemctl is-system-running --wait >/dev/null 2>&1 || true
    note "booted in $(elapsed "$t") s"
}

# What provision() runs; scripts/lab.sh sets its own: the inventory (relative to ansible/),
# the command prefix that reaches the machines' network, and the run's extra variables.
inventory=inventories/local/hosts.yml
in_network=()
extra_vars() { # JSON on stdout: how the minio role gets its binaries
    if [ -n "${MINIO_BINARY:-}" ]; then
        printf '{"minio_install_method": "local", "minio_binary_src": "%s", "minio_mc_binary_src": "%s"}\n' \
            "$(readlink -f "$MINIO_BINARY")" "$(readlink -f "$MC_BINARY")"
    else
        printf '{"minio_install_method": "source", "minio_source_cache_dir": "%s"}\n' "$cache"
    fi
}

provision() {
    local log; log="$logs/provision-$(date +%Y%m%d-%H%M%S).log"
    step "provisioning with ansible/site.yml (progress below, full output in the log)" "$log"
    local extra="$state/extra-vars.json"
    extra_vars >"$extra"
    local t; t=$(date +%s)
    (
        cd "$repo/ansible"
        # ANSIBLE_ARGS: extra ansible-playbook arguments, split on spaces on purpose.
        # shellcheck disable=SC2086
        ANSIBLE_CONFIG="$repo/ansible/ansible.cfg" ANSIBLE_FORCE_COLOR=0 PATH="$venv/bin:$PATH" \
            "${in_network[@]}" "$venv/bin/ansible-playbook" -i "$inventory" site.yml -e "@$extra" ${ANSIBLE_ARGS:-}
    ) 2>&1 | tee "$log" | grep --line-buffered -E '^(PLAY \[|TASK \[|RUNNING HANDLER \[|fatal:|failed:)' \
        | sed -u -e 's/\*\**$//' -e 's/^TASK /    /' -e 's/^RUNNING HANDLER /    handler /' -e 's/^PLAY /  PLAY /'
    local rc=${PIPESTATUS[0]}
    ln -sf "$(basename "$log")" "$logs/provision-latest.log"
    sed -n '/^PLAY RECAP/,/^$/p' "$log" | sed 's/^/    /'
    [ "$rc" = 0 ] || { step_log="$log"; return "$rc"; }
    note "provisioning took $(elapsed "$t") s"
}

health() {
    step "checking every unit and health endpoint (mlops-status inside the machine)"
    # After a boot the services start together on a small machine: give them a few minutes.
    local ok=0 until=$(( $(date +%s) + ${HEALTH_WAIT:-240} ))
    while [ "$(date +%s)" -lt "$until" ]; do
        if ssh_machine mlops-status >"$logs/status.txt" 2>&1; then ok=1; break; fi
        sleep 3
    done
    sed 's/^/    /' "$logs/status.txt"
    [ "$ok" = 1 ] || { step_log="$logs/status.txt"; false; }
}

summary() {
    # Where each password is, never the password: this output ends up in logs (the tests keep it).
    local secrets="$repo/ansible/.secrets/local"
    echo
    say "the platform is up ($(elapsed "$t0") s)"
    note "Web UI    https://localhost:$(port_of proxy_ui_port)   user admin  password: cat $secrets/ui-admin"
    note "Airflow   https://localhost:$(port_of proxy_airflow_port)   user admin  password: cat $secrets/airflow-admin"
    note "MLflow    https://localhost:$(port_of proxy_mlflow_port)   user admin  password: cat $secrets/mlflow-admin"
    note "Inference https://localhost:$(port_of proxy_inference_api_port)   (OpenAPI /schema; ready once the DAG has promoted a model)"
    note "Data API  https://localhost:$(port_of proxy_data_api_port)/data?group_number=1"
    note "MinIO     https://localhost:$(port_of proxy_minio_console_port)   user mlops-admin  password: cat $secrets/minio-root   (S3 API on the loopback :$(port_of minio_api_port), bucket mlflows3)"
    note "TLS       trust $secrets/proxy-ca/ca.crt   (curl --cacert $secrets/proxy-ca/ca.crt https://localhost:$(port_of proxy_ui_port)/health)"
    note "Shell     scripts/machine.sh ssh      Status: scripts/machine.sh status"
    note "Secrets   $secrets/    Logs: $logs/"
    note "Stop      make down   (PURGE=1 make down also deletes the machine's disk)"
}

down() {
    install -d -m 0700 "$state" "$logs"
    if machine_running; then
        local pid t; t=$(date +%s)
        pid=$(cat "$nspawn_pid_file")
        step "powering the machine off" "$logs/nspawn.log"
        ssh_machine systemctl poweroff >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then
            note "no clean shutdown after 60 s: stopping systemd-nspawn"
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
        note "stopped in $(elapsed "$t") s"
    else
        note "the machine is not running"
    fi
    rm -f "$nspawn_pid_file"
    if [ "${PURGE:-0}" = 1 ]; then
        step "PURGE=1: deleting the machine's disk $rootfs"
        rm -rf "$rootfs" "$state/extra-vars.json"
    else
        note "the machine's disk is kept in $rootfs (PURGE=1 make down deletes it)"
    fi
}

# Sourced (scripts/image.sh builds the platform image with these functions): define, do not run.
[[ "${BASH_SOURCE[0]}" != "$0" ]] && return 0

cmd="${1:-}"
# Provisioning logs hold the printed credentials: root only.
install -d -m 0700 "$state" "$logs"
case "$cmd" in
    up)
        preflight
        build_pristine
        make_rootfs
        build_minio
        boot
        provision
        health
        summary
        ;;
    down) down ;;
    boot)
        if [ ! -f "$rootfs/.complete" ] || [ ! -f "$state/extra-vars.json" ]; then
            die "no provisioned machine in $rootfs: run 'make up' first"
        fi
        preflight
        boot
        health
        summary
        ;;
    status)
        machine_running || { echo "the machine is not running"; exit 3; }
        ssh_machine mlops-status
        ;;
    ssh) shift; ssh_machine "$@" ;;
    *) echo "usage: $0 up|down|boot|status|ssh [command]" >&2; exit 2 ;;
esac
