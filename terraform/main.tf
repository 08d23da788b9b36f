# One Debian 13 VM on a libvirt host, ready for ansible/site.yml:
# base image -> root disk (copy-on-write, resized) + cloud-init disk -> domain,
# then an Ansible inventory with the VM in every service group.

locals {
  network_name   = var.create_network ? libvirt_network.mlops[0].name : var.network_name
  address        = libvirt_domain.mlops.network_interface[0].addresses[0]
  inventory_path = var.inventory_path != "" ? var.inventory_path : "${path.module}/inventory.yml"
  ansible_dir    = abspath("${path.module}/../ansible")
  # host-passthrough needs KVM; under QEMU's emulation (TCG) "maximum" gives every CPU
  # feature TCG emulates (x86-64-v2 and more, which numpy's wheels need).
  cpu_mode = var.domain_type == "kvm" ? "host-passthrough" : "maximum"
  # `ansible` lives next to `ansible-playbook` (a venv's bin/, or PATH).
  ansible_command   = replace(var.ansible_playbook_command, "/ansible-playbook$/", "ansible")
  ansible_inventory = abspath(local.inventory_path)
}

resource "libvirt_network" "mlops" {
  count     = var.create_network ? 1 : 0
  name      = "${var.vm_name}-net"
  mode      = "nat"
  addresses = [var.network_cidr]
  autostart = true

  dhcp {
    enabled = true
  }

  dns {
    enabled = true
  }
}

resource "libvirt_volume" "base" {
  name   = "${var.vm_name}-debian-13-base.qcow2"
  pool   = var.storage_pool
  source = var.base_image_url
  format = "qcow2"
}

resource "libvirt_volume" "root" {
  name           = "${var.vm_name}-root.qcow2"
  pool           = var.storage_pool
  base_volume_id = libvirt_volume.base.id
  size           = var.disk_size_gb * 1024 * 1024 * 1024
  format         = "qcow2"
}

resource "libvirt_cloudinit_disk" "init" {
  name = "${var.vm_name}-cloudinit.iso"
  pool = var.storage_pool
  # One storage-pool upload at a time: created side by side with the root volume, the
  # provider deadlocked (both "Still creating" for 5 minutes, its libvirt socket full of
  # unread replies; dmacvicar/terraform-provider-libvirt#594, the known workaround being
  # -parallelism=1). This makes `terraform apply` safe without that flag.
  depends_on = [libvirt_volume.root]
  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    hostname       = var.vm_name
    admin_user     = var.admin_user
    ssh_public_key = trimspace(var.ssh_public_key)
    packages       = var.cloud_init_packages
    package_update = length(var.cloud_init_packages) > 0
  })
}

resource "libvirt_domain" "mlops" {
  name       = var.vm_name
  type       = var.domain_type
  vcpu       = var.vcpu
  memory     = var.memory_mb
  cloudinit  = libvirt_cloudinit_disk.init.id
  qemu_agent = true
  autostart  = true

  cpu {
    mode = local.cpu_mode
  }

  network_interface {
    network_name   = local.network_name
    wait_for_lease = true
  }

  disk {
    volume_id = libvirt_volume.root.id
  }

  # How long to wait for the domain's DHCP lease (the provider's default is 5m; a VM under
  # emulation, domain_type = "qemu", can take longer to boot).
  timeouts {
    create = var.boot_timeout
  }

  # Debian's cloud images log to the serial console.
  console {
    type        = "pty"
    target_type = "serial"
    target_port = "0"
  }
}

resource "local_file" "inventory" {
  filename        = local.inventory_path
  file_permission = "0644"
  content = templatefile("${path.module}/templates/inventory.yml.tftpl", {
    host_name            = var.vm_name
    address              = local.address
    admin_user           = var.admin_user
    ssh_private_key_file = pathexpand(var.ssh_private_key_file)
    # Slower waits for an emulated VM (domain_type = "qemu"): see that file. (A filtered
    # for, not a conditional: the two sides of one would be objects of different types.)
    emulation_vars = {
      for name, value in yamldecode(file("${local.ansible_dir}/inventories/emulated-vm.yml")) :
      name => value if var.domain_type == "qemu"
    }
  })
}

# Optional: provision right away (otherwise run the playbook by hand, README "Other ways
# to run it"). Waits for SSH and for cloud-init to finish before the playbook starts.
resource "terraform_data" "ansible" {
  count            = var.run_ansible ? 1 : 0
  triggers_replace = [libvirt_domain.mlops.id, local_file.inventory.content]
  depends_on       = [local_file.inventory]

  provisioner "local-exec" {
    working_dir = local.ansible_dir
    environment = {
      ANSIBLE_CONFIG = "${local.ansible_dir}/ansible.cfg"
    }
    command = join(" && ", [
      "${local.ansible_command} -i '${local.ansible_inventory}' all -m ansible.builtin.wait_for_connection -a timeout=600",
      # Exit code 2 is "done, with recoverable errors" (e.g. deprecation warnings).
      "${local.ansible_command} -i '${local.ansible_inventory}' all -b -m ansible.builtin.shell -a 'cloud-init status --wait || test $? -eq 2'",
      "${var.ansible_playbook_command} -i '${local.ansible_inventory}' site.yml ${var.ansible_extra_args}",
    ])
  }
}
