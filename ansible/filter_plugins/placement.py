"""Filters for services on several hosts (group_vars/all/placement.yml): which other hosts
call a service, where it must listen, what the firewall opens to whom."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LOOPBACK = "127.0.0.1"
ANY = "0.0.0.0"


def _address(hostvars: Mapping[str, Any], host: str) -> str:
    return str(hostvars[host].get("ansible_host", host))


def remote_addresses(
    group_names: list[str], groups: Mapping[str, list[str]], hostvars: Mapping[str, Any], me: str
) -> list[str]:
    """The addresses of the hosts of these groups, other than `me`, sorted, once each."""
    hosts = {h for g in group_names for h in groups.get(g, []) if h != me}
    return sorted({_address(hostvars, h) for h in hosts})


def remote_clients(
    services: Mapping[str, Mapping[str, Any]],
    groups: Mapping[str, list[str]],
    hostvars: Mapping[str, Any],
    me: str,
) -> dict[str, list[str]]:
    """Per service: the addresses of the other hosts whose groups call it."""
    return {
        name: remote_addresses(list(spec["clients"]), groups, hostvars, me)
        for name, spec in services.items()
    }


def listen_addresses(clients: Mapping[str, list[str]]) -> dict[str, str]:
    """Per service: every address when another host calls it (callers on its own host still
    use loopback; the firewall admits only the remote callers), else loopback alone."""
    return {name: ANY if addresses else LOOPBACK for name, addresses in clients.items()}


def hba_entries(addresses: list[str], databases: str, users: str) -> list[dict[str, str]]:
    """pg_hba lines (role postgresql) letting these hosts reach these databases as these
    roles, with SCRAM passwords."""
    return [
        {"contype": "host", "databases": databases, "users": users, "source": f"{a}/32"}
        for a in addresses
    ]


def firewall_rules(
    services: Mapping[str, Mapping[str, Any]],
    clients: Mapping[str, list[str]],
    my_groups: list[str],
) -> list[dict[str, Any]]:
    """Each private port of a service on this host, open only to the hosts that call it."""
    return [
        {"service": name, "port": int(spec["port"]), "sources": clients[name]}
        for name, spec in sorted(services.items())
        if spec["group"] in my_groups and clients.get(name)
    ]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "mlops_remote_addresses": remote_addresses,
            "mlops_remote_clients": remote_clients,
            "mlops_listen_addresses": listen_addresses,
            "mlops_firewall_rules": firewall_rules,
            "mlops_hba_entries": hba_entries,
        }
