variable "libvirt_uri" {
  description = "libvirt connection URI, e.g. qemu:///system or qemu+ssh://user@kvm-host/system."
  type        = string
  default     = "qemu:///system"
}

variable "domain_type" {
  description = "libvirt domain type: kvm (hardware virtualization, real hosts) or qemu (emulation, hosts without KVM). The CPU mode follows it."
  type        = string
  default     = "kvm"

  validation {
    condition     = contains(["kvm", "qemu"], var.domain_type)
    error_message = "domain_type must be kvm or qemu."
  }
}

variable "boot_timeout" {
  description = "How long terraform apply waits for the new VM's DHCP lease, e.g. \"5m\" (KVM) or \"30m\" (emulation on a busy host)."
  type        = string
  default     = "5m"
}

variable "vm_name" {
  description = "Name of the VM (libvirt domain), its host name and its name in the Ansible inventory."
  type        = string
  default     = "forest-cover-mlops"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,62}$", var.vm_name))
    error_message = "vm_name must be a host name: lower-case letters, digits and '-', starting with a letter."
  }
}

variable "vcpu" {
  description = "Virtual CPUs."
  type        = number
  default     = 4
}

variable "memory_mb" {
  description = "Memory in MiB. The whole stack needs about 6-8 GiB."
  type        = number
  default     = 8192

  validation {
    condition     = var.memory_mb >= 4096
    error_message = "memory_mb must be at least 4096: Airflow, MLflow and the databases do not fit in less."
  }
}

variable "disk_size_gb" {
  description = "Size of the root disk in GiB (the cloud image grows its root partition to fill it)."
  type        = number
  default     = 40
}

variable "storage_pool" {
  description = "libvirt storage pool for the base image, the root disk and the cloud-init disk."
  type        = string
  default     = "default"
}

variable "base_image_url" {
  description = "Debian 13 image with cloud-init: the generic cloud image (default), or the platform image `make image` builds (a local path), which has the software preinstalled."
  type        = string
  default     = "https://cloud.debian.org/images/cloud/trixie/latest/debian-13-genericcloud-amd64.qcow2"
}

variable "cloud_init_packages" {
  description = "Packages cloud-init installs at first boot (what Ansible needs on a stock image). [] with the platform image: it has them, and the VM then needs no package mirror at boot."
  type        = list(string)
  default     = ["python3", "qemu-guest-agent"]
}

variable "network_name" {
  description = "Existing libvirt network to attach the VM to (ignored when create_network is true)."
  type        = string
  default     = "default"
}

variable "create_network" {
  description = "Create a NAT network of its own (network_cidr) instead of using network_name."
  type        = bool
  default     = false
}

variable "network_cidr" {
  description = "Address range of the network created when create_network is true."
  type        = string
  default     = "192.168.123.0/24"
}

variable "admin_user" {
  description = "Admin user cloud-init creates (passwordless sudo, SSH key only); Ansible logs in as it."
  type        = string
  default     = "mlops"

  validation {
    condition     = can(regex("^[a-z_][a-z0-9_-]{0,31}$", var.admin_user)) && var.admin_user != "root"
    error_message = "admin_user must be a valid Linux user name other than root."
  }
}

variable "ssh_public_key" {
  description = "SSH public key (the key text, e.g. the content of ~/.ssh/id_ed25519.pub) for admin_user."
  type        = string

  validation {
    condition     = can(regex("^(ssh-|ecdsa-|sk-)", trimspace(var.ssh_public_key)))
    error_message = "ssh_public_key must be an OpenSSH public key (ssh-ed25519 ..., ssh-rsa ..., ecdsa-...)."
  }
}

variable "ssh_private_key_file" {
  description = "Private key matching ssh_public_key, on the machine that runs Ansible (written to the inventory)."
  type        = string
  default     = "~/.ssh/id_ed25519"
}

variable "inventory_path" {
  description = "Where to write the Ansible inventory. Empty: inventory.yml next to this module."
  type        = string
  default     = ""
}

variable "run_ansible" {
  description = "Run ansible/site.yml against the new VM at the end of terraform apply."
  type        = bool
  default     = false
}

variable "ansible_playbook_command" {
  description = "ansible-playbook to use when run_ansible is true (an absolute path, e.g. /path/to/repo/.venv/bin/ansible-playbook)."
  type        = string
  default     = "ansible-playbook"
}

variable "ansible_extra_args" {
  description = "Extra ansible-playbook arguments when run_ansible is true, e.g. \"-e mlops_deployment=kvm\"."
  type        = string
  default     = ""
}
