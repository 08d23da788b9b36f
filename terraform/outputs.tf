output "address" {
  description = "IP address of the VM (from its DHCP lease)."
  value       = local.address
}

output "inventory_file" {
  description = "Ansible inventory for ansible/site.yml, with the VM in every service group."
  value       = abspath(local_file.inventory.filename)
}

output "ssh_command" {
  description = "Log in to the VM."
  value       = "ssh ${var.admin_user}@${local.address}"
}

output "urls" {
  description = "The platform's UIs and APIs once the playbook has run: HTTPS through the TLS proxy (ports.yml's proxy_*_port), with the CA in ansible/.secrets/<deployment>/proxy-ca/ca.crt."
  value = {
    ui            = "https://${local.address}:8443"
    airflow       = "https://${local.address}:8444"
    mlflow        = "https://${local.address}:8445"
    minio_console = "https://${local.address}:8446"
    inference_api = "https://${local.address}:8447"
    data_api      = "https://${local.address}:8448"
  }
}
