#!/usr/bin/env bash
# A libvirt lab inside a network namespace of its own: libvirtd, virtlogd, a NAT network and
# every guest live there, so guests never touch the host's network (make test-vm).
#
#   scripts/vm-lab.sh up          namespace + virtlogd + libvirtd + storage pool + NAT network
#   scripts/vm-lab.sh exec CMD..  run CMD inside the namespace (terraform, vagrant, ansible, ssh)
#   scripts/vm-lab.sh down        undefine what the lab defined, stop its daemons, delete the namespace
#   scripts/vm-lab.sh status
#
# Needs root. Installs qemu-system-x86, libvirt-daemon-system, dnsmasq-base and vagrant-libvirt
# (Debian 12's packages) when missing. libvirtd is started by hand: PID 1 of our machines is
# not systemd. Guests must use domain type qemu here (TCG): /dev/kvm on our machines is a
# software PVM device that makes a stock guest kernel crawl and die.
# Knobs: VM_LAB_NETNS=mlops-vmlab, VM_LAB_NETWORK=mlops-lab, VM_LAB_CIDR=10.231.0 (a /24 inside
# the namespace), MLOPS_CACHE (the storage pool lives in $MLOPS_CACHE/vm-lab/pool).
set -Eeuo pipefail

netns="${VM_LAB_NETNS:-mlops-vmlab}"
network="${VM_LAB_NETWORK:-mlops-lab}"
prefix="${VM_LAB_CIDR:-10.231.0}"
cache="${MLOPS_CACHE:-/var/cache/forest-cover-mlops}"
lab="$cache/vm-lab"
pool_dir="$lab/pool"
run="/run/mlops-vm-lab"
# genisoimage: mkisofs, which the libvirt provider runs to make the cloud-init disk.
packages=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients dnsmasq-base genisoimage vagrant vagrant-libvirt)

say() { printf '==> %s\n' "$*"; }
die() { printf 'vm-lab: %s\n' "$*" >&2; exit 1; }
in_ns() { ip netns exec "$netns" "$@"; }
virsh_ns() { in_ns virsh -q -c qemu:///system "$@"; }
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    local missing=() p
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; }
}

up() {
    [ "$(id -u)" = 0 ] || die "needs root"
    install_packages
    mkdir -p "$run" "$pool_dir"
    # One libvirtd per host: its sockets and state live in /run/libvirt whatever the namespace.
    if ! pid_alive "$run/libvirtd.pid" && pgrep -x libvirtd >/dev/null; then
        die "a libvirtd this script did not start is running (pid $(pgrep -x libvirtd | tr '\n' ' ')); stop it first"
    fi
    if ! ip netns list | grep -qx "$netns\( .*\)\?"; then
        say "creating network namespace $netns"
        ip netns add "$netns"
    fi
    in_ns ip link set lo up
    if ! pid_alive "$run/virtlogd.pid"; then
        say "starting virtlogd in $netns"
        in_ns virtlogd --daemon --pid-file "$run/virtlogd.pid"
    fi
    if ! pid_alive "$run/libvirtd.pid"; then
        say "starting libvirtd in $netns"
        in_ns libvirtd --daemon --pid-file "$run/libvirtd.pid"
    fi
    for _ in $(seq 100); do virsh_ns version >/dev/null 2>&1 && break; sleep 0.2; done
    virsh_ns version >/dev/null
    if ! virsh_ns pool-info default >/dev/null 2>&1; then
        say "defining storage pool default in $pool_dir"
        virsh_ns pool-define-as default dir --target "$pool_dir" >/dev/null
    fi
    # (not `| grep -q`: under pipefail grep's early exit fails the pipeline)
    [[ "$(virsh_ns pool-info default)" =~ State:\ +running ]] || virsh_ns pool-start default >/dev/null
    if ! virsh_ns net-info "$network" >/dev/null 2>&1; then
        say "defining NAT network $network ($prefix.0/24, inside $netns only)"
        cat >"$run/$network.xml" <<EOF
<network>
  <name>$network</name>
  <forward mode='nat'/>
  <bridge name='virbr-mlops' stp='on' delay='0'/>
  <ip address='$prefix.1' netmask='255.255.255.0'>
    <dhcp><range start='$prefix.100' end='$prefix.200'/></dhcp>
  </ip>
</network>
EOF
        virsh_ns net-define "$run/$network.xml" >/dev/null
    fi
    [[ "$(virsh_ns net-info "$network")" =~ Active:\ +yes ]] || virsh_ns net-start "$network" >/dev/null
    say "lab up: namespace $netns, libvirtd pid $(cat "$run/libvirtd.pid"), network $network, pool default ($pool_dir)"
}

down() {
    [ "$(id -u)" = 0 ] || die "needs root"
    if pid_alive "$run/libvirtd.pid"; then
        local d v
        for d in $(virsh_ns list --all --name 2>/dev/null); do
            say "removing leftover domain $d"
            virsh_ns destroy "$d" >/dev/null 2>&1 || true
            virsh_ns undefine "$d" --nvram >/dev/null 2>&1 || virsh_ns undefine "$d" >/dev/null 2>&1 || true
        done
        for v in $(virsh_ns vol-list default 2>/dev/null | awk '{print $1}'); do
            virsh_ns vol-delete "$v" --pool default >/dev/null 2>&1 || true
        done
        virsh_ns net-destroy "$network" >/dev/null 2>&1 || true
        virsh_ns net-undefine "$network" >/dev/null 2>&1 || true
        virsh_ns pool-destroy default >/dev/null 2>&1 || true
        virsh_ns pool-undefine default >/dev/null 2>&1 || true
        say "stopping libvirtd"
        kill "$(cat "$run/libvirtd.pid")"
        for _ in $(seq 50); do pid_alive "$run/libvirtd.pid" || break; sleep 0.2; done
    fi
    rm -f "$run/libvirtd.pid"
    if pid_alive "$run/virtlogd.pid"; then
        kill "$(cat "$run/virtlogd.pid")"
        for _ in $(seq 25); do pid_alive "$run/virtlogd.pid" || break; sleep 0.2; done
    fi
    rm -f "$run/virtlogd.pid"
    if ip netns list | grep -qx "$netns\( .*\)\?"; then
        # Processes left in the namespace (a dnsmasq of a network defined by Terraform or
        # Vagrant that was not removed) would keep it alive: stop them first.
        local p
        for p in $(ip netns pids "$netns"); do kill "$p" 2>/dev/null || true; done
        say "deleting network namespace $netns"
        ip netns delete "$netns"
    fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    exec) shift; in_ns "$@" ;;
    status)
        pid_alive "$run/libvirtd.pid" || { echo "the lab is down"; exit 3; }
        virsh_ns list --all; virsh_ns net-list --all; virsh_ns vol-list default
        ;;
    *) echo "usage: $0 up|down|exec CMD...|status" >&2; exit 2 ;;
esac
