#!/usr/bin/env bash
# `make image`: a bootable Debian 13 disk image with the platform's software preinstalled,
# built at native speed, for VMs that then only boot and configure (under emulation that is
# minutes instead of an hour).
#
#   debootstrap rootfs (scripts/machine.sh, cached) -> boot it with systemd-nspawn -> apt:
#   kernel, GRUB, cloud-init, qemu-guest-agent -> ansible/site.yml with mlops_image_build=true
#   (every role's install part: packages, venvs, the project wheel; no config, no secret) ->
#   power off -> clean (machine-id, SSH host keys, logs, the build's CA and keys) -> ext4
#   (mkfs.ext4 -d) in an MBR disk with GRUB (BIOS) -> qcow2, and a vagrant-libvirt box.
#
# Output in $MLOPS_CACHE/image/ (default /var/cache/forest-cover-mlops/image/):
#   forest-cover-mlops-debian13.qcow2      Terraform's base volume (base_image_url): no login
#                                          user; cloud-init creates the admin user with a key
#   forest-cover-mlops-debian13-libvirt.box  vagrant box: the same system plus user vagrant
#                                          with Vagrant's public insecure key, which Vagrant
#                                          replaces with a key of its own on the first `up`
#   image.json                             what was built, when, how long it took, sizes
#
# Every VM made from the image gets its own machine-id and SSH host keys at first boot
# (systemd, cloud-init or mlops-ssh-host-keys.service), and its secrets from site.yml.
# Needs root; installs qemu-utils, fdisk, debootstrap, systemd-container when missing.
# Knobs: IMAGE_SIZE_GB=20 (virtual disk size; cloud-init grows the root partition to the VM's
# disk), IMAGE_BUILD_SSH_PORT (free loopback port for the build machine's sshd, default: any),
# MLOPS_CACHE, DEBIAN_MIRROR (as scripts/machine.sh).
set -Eeuo pipefail

image_repo="$(cd "$(dirname "$0")/.." && pwd)"
image_cache="${MLOPS_CACHE:-/var/cache/forest-cover-mlops}"
out_dir="$image_cache/image"
work="$out_dir/build"
image_name=forest-cover-mlops-debian13
size_gb="${IMAGE_SIZE_GB:-20}"
root_label=mlops-root

# The build machine is scripts/machine.sh's local machine under another name and folder.
export MACHINE_DIR="$work"
# shellcheck source=scripts/machine.sh
source "$image_repo/scripts/machine.sh"
name=mlops-image-build
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ssh_port="${IMAGE_BUILD_SSH_PORT:-$(free_port)}"
# Only sshd listens in the build machine (no service is started), so only its port must be free.
service_ports=("$ssh_port")

# What the image adds to what the roles install: boot (kernel, GRUB's BIOS modules), first
# boot (cloud-init, growpart and its sfdisk), the guest agent Terraform's provider asks for,
# and what role common installs on a VM but skips in a container (nftables, timesyncd).
image_packages=(linux-image-amd64 grub-pc-bin cloud-init cloud-guest-utils fdisk qemu-guest-agent
    nftables systemd-timesyncd)

host_tools() {
    local need=()
    command -v qemu-img >/dev/null || need+=(qemu-utils)
    command -v sfdisk >/dev/null || need+=(fdisk)
    command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
    [ ${#need[@]} -eq 0 ] && return 0
    step "installing ${need[*]}" "$logs/apt-host.log"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >"$logs/apt-host.log" 2>&1 \
        || { apt-get update -q >>"$logs/apt-host.log" 2>&1 \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >>"$logs/apt-host.log" 2>&1; }
}

fresh_build_machine() {
    if machine_running; then down; fi
    rm -rf "$rootfs"
    install -d -m 0700 "$work" "$logs"
    make_rootfs
    # Packages must not start their services while the image is built (PostgreSQL and
    # MariaDB would take the host's ports: the machine shares the host's network).
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
}

install_image_packages() {
    step "installing the kernel, GRUB, cloud-init and the guest agent" "$logs/apt-image.log"
    ssh_machine "export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q --no-install-recommends ${image_packages[*]}" \
        >"$logs/apt-image.log" 2>&1
}

install_pass() {
    local log="$logs/install-pass.log" inv="$work/inventory"
    step "running site.yml's install part in the build machine (mlops_image_build=true)" "$log"
    install -d -m 0700 "$inv/host_vars" "$work/secrets"
    cat >"$inv/hosts.yml" <<EOF
# The image build machine (scripts/image.sh), in every service group of site.yml.
all:
  children:
    mlops:
      hosts:
        $name:
          ansible_host: 127.0.0.1
          ansible_port: $ssh_port
          ansible_user: root
          ansible_ssh_private_key_file: $key
          ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
          # The same for Mitogen (ansible.cfg's strategy), which reads only this for host keys.
          ansible_host_key_checking: false
EOF
    local g
    for g in postgresql mysql minio mlflow airflow data_api inference_api ui proxy; do
        printf '    %s:\n      hosts:\n        %s:\n' "$g" "$name" >>"$inv/hosts.yml"
    done
    # The secrets the roles' checks want are generated into the build folder and deleted
    # with it; none of them is written into the image (checked below).
    local ca=()
    [ -f /etc/ssl/certs/ca-certificates.crt ] && ca=(/etc/ssl/certs/ca-certificates.crt)
    cat >"$inv/host_vars/$name.yml" <<EOF
mlops_image_build: true
mlops_deployment: image-build
mlops_secrets_dir: $work/secrets
mlops_is_container: true
mlops_pip_cache_dir: /var/cache/mlops-pip
mlops_extra_ca_certificates: [${ca[*]:-}]
# MinIO and mc built from their Go modules on this host (scripts/build-minio.sh, cached).
minio_install_method: source
minio_source_cache_dir: $image_cache
EOF
    local t; t=$(date +%s)
    (
        cd "$image_repo/ansible"
        ANSIBLE_CONFIG="$image_repo/ansible/ansible.cfg" ANSIBLE_FORCE_COLOR=0 PATH="$venv/bin:$PATH" \
            "$venv/bin/ansible-playbook" -i "$inv/hosts.yml" site.yml
    ) >"$log" 2>&1
    grep -A2 '^PLAY RECAP' "$log" | sed 's/^/    /'
    note "install pass took $(elapsed "$t") s"
    install_pass_seconds=$(elapsed "$t")
}

last_network_step() {
    # systemd-resolved turns /etc/resolv.conf into its stub: only now, when nothing in the
    # build machine needs DNS any more (resolved is masked there).
    step "installing systemd-resolved (a VM's DNS from DHCP)" "$logs/apt-image.log"
    ssh_machine "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends systemd-resolved" \
        >>"$logs/apt-image.log" 2>&1
}

clean_rootfs() {
    step "removing what must not be in the image (machine-id, host keys, build keys, CA, logs)" "$logs/clean.log"
    local r="$rootfs"
    {
        rm -f "$r/usr/sbin/policy-rc.d" "$r/.complete"
        # The build machine's SSH setup (scripts/machine.sh make_rootfs).
        rm -f "$r/etc/ssh/sshd_config.d/mlops-local.conf" "$r"/etc/ssh/ssh_host_*
        rm -rf "$r/root/.ssh" "$r/root/.ansible" "$r/root/.cache" "$r"/tmp/.ansible-* "$r"/tmp/* "$r"/var/tmp/*
        # The host's CA bundle the build trusted for pip (site.yml re-adds what a VM's own
        # inventory lists).
        rm -f "$r"/usr/local/share/ca-certificates/mlops-extra-*.crt "$r/etc/pip.conf"
        chroot "$r" update-ca-certificates --fresh
        # Units machine.sh masks because the nspawn machine shares the host's network and clock.
        for unit in systemd-networkd.service systemd-resolved.service systemd-timesyncd.service; do
            [ -L "$r/etc/systemd/system/$unit" ] && [ "$(readlink "$r/etc/systemd/system/$unit")" = /dev/null ] \
                && rm -f "$r/etc/systemd/system/$unit"
        done
        # Identity: a VM gets its own at first boot. An empty machine-id makes systemd
        # generate one (and treat the boot as the first: ConditionFirstBoot).
        : >"$r/etc/machine-id"
        rm -f "$r/var/lib/dbus/machine-id" "$r/var/lib/systemd/random-seed" "$r/var/lib/systemd/credential.secret"
        rm -rf "$r"/var/log/journal/* "$r/var/lib/cloud"
        find "$r/var/log" -type f \( -name '*.log' -o -name '*.gz' -o -name '*.[0-9]' \) -delete
        : >"$r/var/log/wtmp"; : >"$r/var/log/lastlog" 2>/dev/null || true
        echo localhost >"$r/etc/hostname"
        printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
    } >"$logs/clean.log" 2>&1
}

configure_boot() {
    step "configuring first boot, network, fstab and GRUB" "$logs/boot.log"
    local r="$rootfs"
    {
        echo "LABEL=$root_label / ext4 errors=remount-ro 0 1" >"$r/etc/fstab"
        # DHCP on every wired interface (cloud-init's own config, when it has one, sorts first).
        cat >"$r/etc/systemd/network/80-mlops-dhcp.network" <<'EOF'
# The platform image (scripts/image.sh): DHCP on every wired interface.
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
        chroot "$r" systemctl enable systemd-networkd.service systemd-resolved.service systemd-timesyncd.service
        # SSH host keys: cloud-init makes them on Terraform's VMs; this unit on any other first
        # boot (Vagrant's, which has no cloud-init seed).
        cat >"$r/etc/systemd/system/mlops-ssh-host-keys.service" <<'EOF'
[Unit]
Description=Generate this machine's own SSH host keys (platform image)
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
After=cloud-init.service
Before=ssh.service

[Service]
Type=oneshot
# Ed25519 and ECDSA only: an RSA key takes a minute to make under emulation.
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
ExecStart=/usr/bin/ssh-keygen -q -t ecdsa -N "" -f /etc/ssh/ssh_host_ecdsa_key

[Install]
WantedBy=multi-user.target
EOF
        chroot "$r" systemctl enable mlops-ssh-host-keys.service
        # cloud-init only with a NoCloud or config-drive seed (Terraform's cloud-init disk);
        # without one (Vagrant) ds-identify disables it instead of probing metadata servers.
        cat >"$r/etc/cloud/cloud.cfg.d/90-mlops-image.cfg" <<'EOF'
# The platform image (scripts/image.sh).
datasource_list: [NoCloud, ConfigDrive]
# Host keys without RSA: an RSA key takes a minute to make under emulation.
ssh_genkeytypes: [ed25519, ecdsa]
EOF
        # GRUB, BIOS, written by hand: grub-install and update-grub need the disk as a block
        # device, and this disk is a file. The menu boots the /vmlinuz and /initrd.img links,
        # which Debian's kernel packages keep on the newest kernel.
        install -d "$r/boot/grub/i386-pc"
        cp "$r"/usr/lib/grub/i386-pc/*.mod "$r"/usr/lib/grub/i386-pc/*.lst "$r/boot/grub/i386-pc/"
        cat >"$r/boot/grub/grub.cfg" <<EOF
# The platform image (scripts/image.sh). Serial console and screen both get the messages.
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
menuentry "Debian GNU/Linux 13 (forest-cover-mlops)" {
    insmod part_msdos
    insmod ext2
    search --no-floppy --label --set=root $root_label
    linux /vmlinuz root=LABEL=$root_label ro console=tty0 console=ttyS0,115200n8
    initrd /initrd.img
}
EOF
        chroot "$r" grub-mkimage -O i386-pc -o /boot/grub/i386-pc/core.img -p '(hd0,msdos1)/boot/grub' \
            biosdisk part_msdos ext2 search search_label normal linux serial terminal
        test -e "$r/vmlinuz" && test -e "$r/initrd.img"
    } >"$logs/boot.log" 2>&1
}

check_no_secrets() {
    step "checking the image holds none of the build's secrets, host keys or machine-id"
    local found=""
    if [ -n "$(find "$work/secrets" -type f -print -quit)" ]; then
        found="$(cat "$work"/secrets/* | grep -v '^$' | grep -rlF -D skip -f - "$rootfs" 2>/dev/null | head -5 || true)"
    fi
    [ -z "$found" ] || die "build secrets found in the image: $found"
    [ ! -s "$rootfs/etc/machine-id" ] || die "the image has a machine-id"
    ! compgen -G "$rootfs/etc/ssh/ssh_host_*" >/dev/null || die "the image has SSH host keys"
    ! compgen -G "$rootfs/etc/mlops/*.env" >/dev/null || die "the image has service env files"
}

make_disk() { # output.qcow2
    local out="$1" raw="$work/disk.raw" t; t=$(date +%s)
    step "writing $(basename "$out") (ext4 + MBR + GRUB, ${size_gb} GiB virtual)" "$logs/disk.log"
    {
        rm -f "$raw"
        truncate -s "${size_gb}G" "$raw"
        printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$raw"
        local sectors; sectors=$(sfdisk -q -l -o Sectors "$raw" | tail -n 1 | tr -d ' ')
        # metadata_csum_seed and orphan_file: features older GRUBs do not read; leave them off.
        mkfs.ext4 -q -F -L "$root_label" -O ^metadata_csum_seed,^orphan_file -E offset=1048576 \
            -d "$rootfs" "$raw" "$(( sectors / 2 ))k"
        # GRUB: boot.img's code in the MBR (its partition table kept), core.img in the gap
        # before the partition; both point at sector 1 by default, which is where it goes.
        dd if="$rootfs/usr/lib/grub/i386-pc/boot.img" of="$raw" bs=440 count=1 conv=notrunc status=none
        dd if="$rootfs/boot/grub/i386-pc/core.img" of="$raw" bs=512 seek=1 conv=notrunc status=none
        qemu-img convert -O qcow2 "$raw" "$out.tmp"
        mv "$out.tmp" "$out"
        rm -f "$raw"
    } >>"$logs/disk.log" 2>&1
    note "$(basename "$out"): $(du -h "$out" | cut -f1) in $(elapsed "$t") s"
}

add_vagrant_user() {
    step "adding user vagrant with Vagrant's public insecure key (the box only)" "$logs/vagrant-user.log"
    local pub
    pub="$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -n 1 || true)"
    [ -n "$pub" ] || die "Vagrant's keys/vagrant.pub not found: install vagrant"
    {
        chroot "$rootfs" useradd -m -s /bin/bash -G sudo vagrant
        printf 'vagrant ALL=(ALL) NOPASSWD:ALL\n' >"$rootfs/etc/sudoers.d/vagrant"
        chmod 0440 "$rootfs/etc/sudoers.d/vagrant"
        install -d -m 0700 -o "$(chroot "$rootfs" id -u vagrant)" -g "$(chroot "$rootfs" id -g vagrant)" "$rootfs/home/vagrant/.ssh"
        install -m 0600 -o "$(chroot "$rootfs" id -u vagrant)" -g "$(chroot "$rootfs" id -g vagrant)" "$pub" "$rootfs/home/vagrant/.ssh/authorized_keys"
        # Vagrant 2.3's RSA keys sign with rsa-sha2-*, which OpenSSH 10 accepts as is.
    } >"$logs/vagrant-user.log" 2>&1
}

make_box() { # qcow2 box
    local img="$1" box="$2" dir="$work/box"
    step "packing $(basename "$box")"
    rm -rf "$dir"; mkdir -p "$dir"
    mv "$img" "$dir/box.img"
    printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "$size_gb" >"$dir/metadata.json"
    cat >"$dir/Vagrantfile" <<'EOF'
# The forest-cover-mlops platform image (scripts/image.sh) as a vagrant-libvirt box.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.disk_bus = "virtio"
  end
end
EOF
    # Uncompressed: the qcow2 is most of it and gzip would cost minutes for little.
    tar -C "$dir" -cf "$box.tmp" metadata.json Vagrantfile box.img
    mv "$box.tmp" "$box"
    rm -rf "$dir"
}

main() {
    local t_start; t_start=$(date +%s)
    mkdir -p "$out_dir"
    install -d -m 0700 "$work" "$logs"
    preflight
    host_tools
    build_pristine
    fresh_build_machine
    boot
    install_image_packages
    install_pass
    last_network_step
    down
    clean_rootfs
    configure_boot
    check_no_secrets
    rm -rf "$work/secrets"
    local qcow="$out_dir/$image_name.qcow2" box="$out_dir/$image_name-libvirt.box"
    make_disk "$qcow"
    add_vagrant_user
    make_disk "$work/box.qcow2"
    make_box "$work/box.qcow2" "$box"
    local used; used=$(du -sh --apparent-size "$rootfs" | cut -f1)
    rm -rf "$rootfs"
    cat >"$out_dir/image.json" <<EOF
{
  "built": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "commit": "$(git -C "$image_repo" rev-parse --short HEAD 2>/dev/null || echo unknown)",
  "build_seconds": $(elapsed "$t_start"),
  "install_pass_seconds": ${install_pass_seconds:-0},
  "rootfs_size": "$used",
  "virtual_size_gb": $size_gb,
  "qcow2": "$qcow",
  "qcow2_bytes": $(stat -c %s "$qcow"),
  "box": "$box",
  "box_bytes": $(stat -c %s "$box")
}
EOF
    say "image built in $(elapsed "$t_start") s"
    note "Terraform base volume: $qcow ($(du -h "$qcow" | cut -f1))"
    note "Vagrant box:           $box ($(du -h "$box" | cut -f1))"
}

main "$@"
