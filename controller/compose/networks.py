"""Networks as Compose makes them: the project's default network, top-level definitions,
and a service's attachments (aliases, fixed addresses)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from shoal.protocol.service import (
    NETWORK_NAME_PATTERN,
    IpamPool,
    IpamSpec,
    NetworkAttachment,
    NetworkSpec,
)

from .reader import Reader

DEFAULT = "default"
_NETWORK_KEYS = (
    "name",
    "external",
    "driver",
    "driver_opts",
    "ipam",
    "internal",
    "attachable",
    "enable_ipv6",
    "labels",
)
_ATTACHMENT_KEYS = ("aliases", "ipv4_address", "ipv6_address", "priority")
_ATTACHMENT_REFUSED = {
    "link_local_ips": "not supported by Shoal",
    "mac_address": "set the service's mac_address instead",
    "driver_opts": "not supported by Shoal",
}


def project_name(raw: str) -> str:
    """A project name as Compose normalises it: lowercase letters, digits, '-' and '_'."""
    name = re.sub(r"[^a-z0-9_-]", "", raw.lower())
    return name.lstrip("_-")


def read_networks(reader: Reader, raw: Any, project: str) -> dict[str, NetworkSpec]:
    """The top-level ``networks``, by their key in the file, with ``default`` always there."""
    networks: dict[str, NetworkSpec] = {}
    for key, body in reader.mapping(raw, "networks").items():
        where = f"networks.{key}"
        config = reader.mapping(body, where)
        reader.check_keys(config, where, _NETWORK_KEYS)
        networks[key] = _network(reader, key, config, where, project)
    if DEFAULT not in networks:
        networks[DEFAULT] = NetworkSpec(name=f"{project}_{DEFAULT}")
    return networks


def _network(
    reader: Reader, key: str, config: dict[str, Any], where: str, project: str
) -> NetworkSpec:
    external = config.get("external") is not None and reader.boolean(
        config["external"], f"{where}.external"
    )
    if config.get("name") is not None:
        name = reader.string(config["name"], f"{where}.name")
    else:
        name = key if external else f"{project}_{key}"
    if not re.fullmatch(NETWORK_NAME_PATTERN, name):
        reader.fail(where, f"network name {name!r} must be letters, digits, '_', '.' or '-'")
    if external:
        extra = [k for k in config if k not in ("external", "name") and not k.startswith("x-")]
        if extra:
            reader.fail(f"{where}.{extra[0]}", "an external network is defined outside the file")
        return NetworkSpec(name=name, external=True)
    values: dict[str, Any] = {"name": name}
    if config.get("driver") is not None:
        values["driver"] = reader.string(config["driver"], f"{where}.driver")
    for flag in ("internal", "attachable", "enable_ipv6"):
        if config.get(flag) is not None:
            values[flag] = reader.boolean(config[flag], f"{where}.{flag}")
    values["driver_opts"] = reader.string_map(config.get("driver_opts"), f"{where}.driver_opts")
    values["labels"] = reader.labels(config.get("labels"), f"{where}.labels")
    if config.get("ipam") is not None:
        values["ipam"] = _ipam(reader, config["ipam"], f"{where}.ipam")
    network: NetworkSpec = reader.model(NetworkSpec, where, **values)
    return network


def _ipam(reader: Reader, raw: Any, where: str) -> IpamSpec:
    body = reader.mapping(raw, where)
    reader.check_keys(body, where, ("driver", "config", "options"))
    pools: list[IpamPool] = []
    entries = body.get("config") or []
    if not isinstance(entries, list):
        reader.fail(f"{where}.config", "must be a list")
    for i, entry in enumerate(entries):
        here = f"{where}.config[{i}]"
        pool = reader.mapping(entry, here)
        reader.check_keys(pool, here, ("subnet", "ip_range", "gateway", "aux_addresses"))
        values: dict[str, Any] = {}
        for key in ("subnet", "ip_range"):
            if pool.get(key) is not None:
                values[key] = _cidr(reader, pool[key], f"{here}.{key}")
        if pool.get("gateway") is not None:
            values["gateway"] = address(reader, pool["gateway"], f"{here}.gateway")
        aux = reader.string_map(pool.get("aux_addresses"), f"{here}.aux_addresses")
        values["aux_addresses"] = {
            k: address(reader, v, f"{here}.aux_addresses.{k}") for k, v in aux.items()
        }
        pools.append(reader.model(IpamPool, here, **values))
    driver = None
    if body.get("driver") is not None:
        driver = reader.string(body["driver"], f"{where}.driver")
    options = reader.string_map(body.get("options"), f"{where}.options")
    ipam: IpamSpec = reader.model(IpamSpec, where, driver=driver, config=pools, options=options)
    return ipam


def _cidr(reader: Reader, value: Any, where: str) -> str:
    text = reader.string(value, where)
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        reader.fail(where, f"{text!r} is not a subnet like 10.5.0.0/16")


def address(reader: Reader, value: Any, where: str) -> str:
    text = reader.string(value, where)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        reader.fail(where, f"{text!r} is not an IP address")


def read_attachments(
    reader: Reader,
    value: Any,
    where: str,
    networks: dict[str, NetworkSpec],
) -> tuple[NetworkAttachment, ...]:
    """A service's ``networks``: a list of keys, or a mapping of keys to options."""
    entries: dict[str, Any]
    if isinstance(value, list):
        entries = {reader.string(item, f"{where}[{i}]"): None for i, item in enumerate(value)}
    else:
        entries = reader.mapping(value, where)
    out: list[NetworkAttachment] = []
    for key, options in entries.items():
        here = f"{where}.{key}"
        if key not in networks:
            reader.fail(
                here,
                f"network {key!r} is not declared under the top-level networks"
                f" (declared: {', '.join(sorted(networks))})",
            )
        body = reader.mapping(options, here)
        reader.check_keys(body, here, _ATTACHMENT_KEYS, _ATTACHMENT_REFUSED)
        values: dict[str, Any] = {"network": networks[key]}
        if body.get("aliases") is not None:
            values["aliases"] = reader.strings(body["aliases"], f"{here}.aliases")
        for family in ("ipv4_address", "ipv6_address"):
            if body.get(family) is not None:
                values[family] = address(reader, body[family], f"{here}.{family}")
        if body.get("priority") is not None:
            values["priority"] = reader.integer(body["priority"], f"{here}.priority")
        out.append(reader.model(NetworkAttachment, here, **values))
    out.sort(key=lambda a: (-a.priority, a.network.name))
    return tuple(out)


__all__ = ["DEFAULT", "project_name", "read_attachments", "read_networks"]
