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
  description = "The platform's UIs and APIs once the playbook has run."
  value = {
    mlflow        = "http://${local.address}:5000"
    airflow       = "http://${local.address}:8080"
    data_api      = "http://${local.address}:8001"
    inference_api = "http://${local.address}:8000"
    ui            = "http://${local.address}:8503"
    minio_console = "http://${local.address}:9001"
  }
}
