#!/usr/bin/env bash
# The lab: several Debian 13 machines (systemd-nspawn), each in its own network namespace,
# joined by a bridge inside a network namespace this script creates. Nothing of it appears in
# the host's network: the machines' addresses (LAB_SUBNET) exist only inside that namespace.
#
#   scripts/lab.sh up          create the namespace and bridge, boot the machines, provision
#                              them with ansible/site.yml and ansible/inventories/lab/
#   scripts/lab.sh boot        the namespace, the bridge and the machines, without provisioning
#   scripts/lab.sh provision   ansible/site.yml on the running machines (ANSIBLE_ARGS as in
#                              scripts/machine.sh)
#   scripts/lab.sh forward     forward the host's loopback ports of the proxy into the lab, so
#                              a browser on this host opens the UIs (stays in the foreground)
#   scripts/lab.sh exec CMD    run CMD inside the lab's namespace (ansible, curl, pytest)
#   scripts/lab.sh ssh HOST [CMD]
#   scripts/lab.sh down        stop the machines and delete the namespace (PURGE=1: the disks)
#
# The machines reach nothing but each other, plus the package registries (Debian's archive
# and PyPI) through a filtering HTTP proxy this script runs: tinyproxy on the host's loopback,
# reached from the lab through a socat relay on the bridge's address and a unix socket.
# Knobs (environment): LAB_HOSTS="data control serve" (names; the inventory places services on
# these three), LAB_SUBNET=10.77.0 (a /24 used only inside the namespace), MLOPS_CACHE,
# DEBIAN_MIRROR (as scripts/machine.sh).
set -Eeuo pipefail

lab_repo="$(cd "$(dirname "$0")/.." && pwd)"
lab_dir="$lab_repo/var/lab"
export MACHINE_DIR="$lab_dir"
# shellcheck source=scripts/machine.sh
source "$lab_repo/scripts/machine.sh"

netns=mlops-lab
bridge=br0
subnet="${LAB_SUBNET:-10.77.0}"
gateway="$subnet.1"
read -r -a lab_hosts <<<"${LAB_HOSTS:-data control serve}"
key="$lab_dir/ssh/id_ed25519"
proxy_port=3128
inventory="$lab_repo/ansible/inventories/lab/hosts.yml"
# Hosts the registry proxy lets through (tinyproxy filter: extended regexes on the host name).
registries=('^deb\.debian\.org$' '^security\.debian\.org$' '^pypi\.org$' '^files\.pythonhosted\.org$')

address_of() { # the machine's address: .11, .12, ... in the order of LAB_HOSTS
    local i
    for i in "${!lab_hosts[@]}"; do
        [ "${lab_hosts[$i]}" = "$1" ] && { echo "$subnet.$((11 + i))"; return 0; }
    done
    die "no lab host named $1 (LAB_HOSTS: ${lab_hosts[*]})"
}
in_lab() { ip netns exec "$netns" "$@"; }
lab_ssh() {
    local host="$1"; shift
    in_lab ssh -i "$key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o LogLevel=ERROR -o ConnectTimeout=5 -o BatchMode=yes "root@$(address_of "$host")" "$@"
}
use_machine() { # point machine.sh's per-machine globals at one lab machine
    name="lab-$1"
    state="$lab_dir/$1"
    rootfs="$state/rootfs"
    nspawn_pid_file="$state/nspawn.pid"
}

make_netns() {
    ip netns list | grep -qx "$netns" && return 0
    step "creating network namespace $netns with bridge $bridge ($gateway/24)"
    ip netns add "$netns"
    in_lab ip link set lo up
    in_lab ip link add "$bridge" type bridge
    in_lab ip addr add "$gateway/24" dev "$bridge"
    in_lab ip link set "$bridge" up
}

registry_proxy() {
    command -v tinyproxy >/dev/null || {
        step "installing tinyproxy (the lab's way to the package registries)" "$logs/apt-host.log"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q tinyproxy >"$logs/apt-host.log" 2>&1
    }
    pid_alive "$lab_dir/tinyproxy.pid" && pid_alive "$lab_dir/relay.pid" && pid_alive "$lab_dir/relay-host.pid" && return 0
    step "starting the registry proxy (tinyproxy on 127.0.0.1, relayed to $gateway:$proxy_port)"
    local port filter="$lab_dir/tinyproxy.filter"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    printf '%s\n' "${registries[@]}" >"$filter"
    cat >"$lab_dir/tinyproxy.conf" <<EOF
Port $port
Listen 127.0.0.1
User nobody
Group nogroup
Timeout 600
MaxClients 64
Filter "$filter"
FilterType ere
FilterDefaultDeny Yes
ConnectPort 443
LogLevel Notice
LogFile "$logs/tinyproxy.log"
EOF
    setsid tinyproxy -d -c "$lab_dir/tinyproxy.conf" </dev/null >>"$logs/tinyproxy.log" 2>&1 &
    echo $! >"$lab_dir/tinyproxy.pid"
    # From the lab's namespace to the host's loopback through a unix socket, which both
    # namespaces see in the filesystem: no address of the host is reachable from the lab.
    local sock="$lab_dir/registry.sock"
    rm -f "$sock"
    setsid socat "UNIX-LISTEN:$sock,fork,mode=0600" "TCP:127.0.0.1:$port" \
        </dev/null >"$logs/relay.log" 2>&1 &
    echo $! >"$lab_dir/relay-host.pid"
    setsid ip netns exec "$netns" socat "TCP-LISTEN:$proxy_port,bind=$gateway,fork,reuseaddr" \
        "UNIX-CONNECT:$sock" </dev/null >>"$logs/relay.log" 2>&1 &
    echo $! >"$lab_dir/relay.pid"
}

lab_rootfs() { # machine.sh's disk, then what differs in the lab: own address, sshd, proxy
    local host="$1" addr; addr=$(address_of "$host")
    [ -f "$rootfs/.complete" ] && return 0
    make_rootfs
    {
        printf 'Port 22\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n' \
            >"$rootfs/etc/ssh/sshd_config.d/mlops-local.conf"
        {
            printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n'
            local h; for h in "${lab_hosts[@]}"; do printf '%s lab-%s\n' "$(address_of "$h")" "$h"; done
        } >"$rootfs/etc/hosts"
        # Its own namespace: systemd-networkd gives the veth (host0) the lab address. 10-: the
        # first matching file wins, and the shipped 80-container-host0.network asks DHCP.
        rm -f "$rootfs/etc/systemd/system/systemd-networkd.service"
        # Time sync is the roles' to set up here; timesyncd itself then declines to run in a
        # container (ConditionVirtualization=!container): the clock is the host's.
        rm -f "$rootfs/etc/systemd/system/systemd-timesyncd.service"
        ln -sf /usr/lib/systemd/system/systemd-networkd.service \
            "$rootfs/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
        printf '[Match]\nName=host0\n\n[Network]\nAddress=%s/24\nLinkLocalAddressing=no\n' "$addr" \
            >"$rootfs/etc/systemd/network/10-lab.network"
        printf 'Acquire::http::Proxy "http://%s:%s";\nAcquire::https::Proxy "http://%s:%s";\n' \
            "$gateway" "$proxy_port" "$gateway" "$proxy_port" >"$rootfs/etc/apt/apt.conf.d/80lab-proxy"
        # /etc/xdg/pip: pip reads it besides /etc/pip.conf, which role common writes.
        install -d "$rootfs/etc/xdg/pip"
        printf '[global]\nproxy = http://%s:%s\n' "$gateway" "$proxy_port" >"$rootfs/etc/xdg/pip/pip.conf"
    } >>"$logs/rootfs.log" 2>&1
}

boot_machine() {
    local host="$1"
    machine_running && { note "lab-$host is running"; return 0; }
    mkdir -p "$cache/pip" "$cache/apt-archives/$name/partial"
    # nsenter, not `ip netns exec`: that remounts /sys and hides the cgroup hierarchy nspawn needs.
    nsenter --net="/run/netns/$netns" setsid systemd-nspawn --boot --keep-unit --register=no \
        --console=read-only --machine="$name" -D "$rootfs" --network-bridge="$bridge" \
        --bind="$cache/pip:/var/cache/mlops-pip" \
        --bind="$cache/apt-archives/$name:/var/cache/apt/archives" \
        </dev/null >"$state/nspawn.log" 2>&1 &
    echo $! >"$nspawn_pid_file"
}

boot_all() {
    preflight
    command -v socat >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q socat >/dev/null
    build_pristine
    build_minio
    make_netns
    registry_proxy
    mkdir -p "$(dirname "$key")"
    [ -f "$key" ] || ssh-keygen -q -t ed25519 -N '' -C "mlops lab" -f "$key"
    local host t; t=$(date +%s)
    for host in "${lab_hosts[@]}"; do
        use_machine "$host"; install -d -m 0700 "$state"
        step "lab-$host: disk and boot ($(address_of "$host"))" "$state/nspawn.log"
        lab_rootfs "$host"
        boot_machine "$host"
    done
    for host in "${lab_hosts[@]}"; do
        use_machine "$host"
        step "waiting for SSH on lab-$host" "$state/nspawn.log"
        for _ in $(seq 120); do
            lab_ssh "$host" true 2>/dev/null && break
            machine_running || { tail -n 20 "$state/nspawn.log" >&2; false; }
            sleep 0.5
        done
        lab_ssh "$host" true
    done
    note "booted ${#lab_hosts[@]} machines in $(elapsed "$t") s"
}

# machine.sh's provision(), run inside the lab's namespace with the lab's inventory.
in_network=(ip netns exec "$netns")
extra_vars() {
    # The lab's namespace reaches no package index: build the project wheel (pip fetches its
    # build backend) out here first.
    local wheel
    wheel=$(PYTHON="$venv/bin/python" "$lab_repo/scripts/build-wheel.sh" 2>>"$logs/build-wheel.log" | tail -n 1)
    printf '{"minio_install_method": "source", "minio_source_cache_dir": "%s", "mlops_project_wheel": "%s"}\n' \
        "$cache" "$wheel"
}
lab_provision() { state="$lab_dir"; provision; }

lab_down() {
    local host pid
    for host in "${lab_hosts[@]}"; do
        use_machine "$host"
        machine_running || continue
        pid=$(cat "$nspawn_pid_file")
        step "powering lab-$host off"
        lab_ssh "$host" systemctl poweroff >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$nspawn_pid_file"
    done
    for f in relay relay-host tinyproxy; do
        pid_alive "$lab_dir/$f.pid" && kill "$(cat "$lab_dir/$f.pid")" 2>/dev/null || true
        rm -f "$lab_dir/$f.pid"
    done
    ip netns list | grep -qx "$netns" && { step "deleting network namespace $netns"; ip netns delete "$netns"; }
    if [ "${PURGE:-0}" = 1 ]; then
        for host in "${lab_hosts[@]}"; do use_machine "$host"; rm -rf "$rootfs"; done
        note "PURGE=1: the machines' disks are deleted"
    fi
}

lab_forward() { # host loopback -> the proxy's ports on the host of group proxy
    local target port pids=()
    target=$(address_of "${LAB_PROXY_HOST:-${lab_hosts[-1]}}")
    for port in $(sed -n 's/^proxy_[a-z_]*_port: *\([0-9][0-9]*\) *$/\1/p' "$ports_file"); do
        socat "TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr" \
            "EXEC:ip netns exec $netns socat STDIO TCP\:$target\:$port" &
        pids+=($!)
        note "https://localhost:$port -> $target:$port"
    done
    trap 'kill "${pids[@]}" 2>/dev/null' EXIT INT TERM
    wait
}

install -d -m 0700 "$lab_dir" "$logs"
case "${1:-}" in
    up) boot_all; lab_provision ;;
    boot) boot_all ;;
    provision) lab_provision ;;
    forward) lab_forward ;;
    exec) shift; in_lab "$@" ;;
    ssh) shift; lab_ssh "$@" ;;
    down) lab_down ;;
    *) echo "usage: $0 up|boot|provision|forward|exec CMD|ssh HOST [CMD]|down" >&2; exit 2 ;;
esac
