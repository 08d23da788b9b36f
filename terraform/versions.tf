terraform {
  # terraform_data (the optional playbook run) needs 1.4.
  required_version = ">= 1.4"

  required_providers {
    libvirt = {
      source  = "dmacvicar/libvirt"
      version = "0.8.3"
    }
    local = {
      source  = "hashicorp/local"
      version = "2.9.0"
    }
  }
}

provider "libvirt" {
  uri = var.libvirt_uri
}
