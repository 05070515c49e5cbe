"""Accounts, roles and ACLs for Mosquitto's dynamic-security plugin, as plain data.

Mosquitto 2.0.11 expands `%c`/`%u` in publish ACLs but not in subscribe ACLs (tried against the
Debian 12 broker: a `subscribeLiteral` or `subscribePattern` ACL holding `%u` refuses the device's own
topic), so a shared device role cannot limit a device's *subscriptions* to its
own `cmd` topic. Each device therefore gets its own role, `device:{id}`, with literal topics: it may
publish only `fleet/{id}/telemetry|nmea|status|cmd/ack` and `owntracks/{id}/#`, and subscribe to and
receive only `fleet/{id}/cmd`. Each device account is also bound to the client id equal to its
device id, so one device cannot take over another's session by reusing its client id.

Everything here is pure: the broker-facing code sends these dicts as JSON.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterable
from typing import Any

from kernel.services import ADMIN_USER, COMMANDS_USER, SERVICE_USER
from provisioning.credentials import DeviceCredentials

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
PBKDF2_ITERATIONS = 101  # what mosquitto_ctrl writes; the plugin reads the count from the file
SALT_BYTES = 12
DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEVICE_PUBLISH = ("telemetry", "nmea", "status", "cmd/ack")
SERVICE_ROLE = "fleet-service"
COMMANDS_ROLE = "fleet-commands"
ADMIN_ROLE = "fleet-admin"
RESERVED_PREFIX = "fleet-"  # service accounts and our own client ids (gateways, broker admin, probes)

Acl = dict[str, Any]
Command = dict[str, Any]


def _acl(acltype: str, topic: str, allow: bool = True) -> Acl:
    return {"acltype": acltype, "topic": topic, "allow": allow}


def _read(topic: str) -> list[Acl]:
    """Subscribe to `topic` (also as an MQTT 5 shared subscription) and receive what it matches."""
    return [
        _acl("subscribePattern", topic),
        _acl("subscribePattern", f"$share/+/{topic}"),
        _acl("publishClientReceive", topic),
    ]


def check_device_id(device_id: str) -> str:
    """A device id must be usable as one topic level and as a client id: letters, digits, `._-`."""
    if device_id in (SERVICE_USER, COMMANDS_USER, ADMIN_USER):
        raise ValueError(f"{device_id!r} is the name of a service account, not usable as a device id")
    if isinstance(device_id, str) and device_id.lower().startswith(RESERVED_PREFIX):
        raise ValueError(
            f"device ids starting with {RESERVED_PREFIX!r} are reserved for the fleet's own accounts and"
            f" clients, got {device_id!r}"
        )
    if not isinstance(device_id, str) or not DEVICE_ID.fullmatch(device_id):
        raise ValueError(
            f"device id must be 1-64 characters of letters, digits, '.', '_' or '-' "
            f"(starting with a letter or digit), got {device_id!r}"
        )
    return device_id


def device_role(device_id: str) -> str:
    return f"device:{check_device_id(device_id)}"


def device_acls(device_id: str) -> list[Acl]:
    check_device_id(device_id)
    own = f"fleet/{device_id}"
    return [
        *(_acl("publishClientSend", f"{own}/{suffix}") for suffix in DEVICE_PUBLISH),
        _acl("publishClientSend", f"owntracks/{device_id}/#"),
        _acl("subscribeLiteral", f"{own}/cmd"),
        _acl("publishClientReceive", f"{own}/cmd"),
    ]


def service_acls() -> list[Acl]:
    """The gateway: everything under the fleet's two topic trees, both ways."""
    return [
        _acl("publishClientSend", "fleet/#"),
        _acl("publishClientSend", "owntracks/#"),
        *_read("fleet/#"),
        *_read("owntracks/#"),
    ]


def commands_acls() -> list[Acl]:
    """The command sender: writes only `cmd` topics, reads the fleet tree (acks and status)."""
    return [_acl("publishClientSend", "fleet/+/cmd"), *_read("fleet/#")]


def admin_acls() -> list[Acl]:
    return [
        _acl("publishClientSend", CONTROL_TOPIC),
        _acl("subscribeLiteral", RESPONSE_TOPIC),
        _acl("publishClientReceive", RESPONSE_TOPIC),
    ]


# ---------------------------------------------------------------- commands sent at run time


def add_device_commands(device_id: str, password: str, client_id: str | None = None) -> list[Command]:
    role = device_role(device_id)
    return [
        {"command": "createRole", "rolename": role, "acls": device_acls(device_id)},
        {
            "command": "createClient",
            "username": device_id,
            "password": _check_password(password),
            "clientid": device_id if client_id is None else client_id,
            "roles": [{"rolename": role}],
        },
    ]


def delete_device_commands(device_id: str) -> list[Command]:
    return [
        {"command": "deleteClient", "username": check_device_id(device_id)},
        {"command": "deleteRole", "rolename": device_role(device_id)},
    ]


def disable_device_commands(device_id: str) -> list[Command]:
    return [{"command": "disableClient", "username": check_device_id(device_id)}]


def enable_device_commands(device_id: str) -> list[Command]:
    return [{"command": "enableClient", "username": check_device_id(device_id)}]


def set_password_commands(username: str, password: str) -> list[Command]:
    return [{"command": "setClientPassword", "username": username, "password": _check_password(password)}]


def _check_password(password: str) -> str:
    if not isinstance(password, str) or not password or len(password) > 256:
        raise ValueError("password must be a non-empty string of at most 256 characters")
    return password


# ---------------------------------------------------------------- the file written before first start


def hashed_password(password: str, salt: bytes, iterations: int = PBKDF2_ITERATIONS) -> dict[str, Any]:
    """The plugin's stored form: PBKDF2-HMAC-SHA512 over a 12-byte salt, both base64 (as mosquitto_ctrl)."""
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


def with_devices(
    config: dict[str, Any], devices: Iterable[DeviceCredentials], salt: Callable[[], bytes]
) -> tuple[dict[str, Any], int]:
    """`config` with an enabled account and a role for every device, for writing while the broker is stopped.

    The plugin rewrites its whole file after every command, so registering thousands of devices through
    the control topic takes minutes; merging them into the file takes about a second. A device already
    present gets the new password and is enabled (as `BrokerAdmin.add_devices` does). Returns the new
    config and how many devices it holds for `devices`.
    """
    clients = {c["username"]: c for c in config.get("clients", [])}
    roles = {r["rolename"]: r for r in config.get("roles", [])}
    count = 0
    for device in devices:
        role = device_role(device.device_id)
        hashed = hashed_password(_check_password(device.password), salt())
        client = clients.get(device.device_id, {})
        if client and role not in {r["rolename"] for r in client.get("roles", [])}:
            raise ValueError(f"{device.device_id!r} is a service account at the broker, not a device")
        clients[device.device_id] = {
            **{k: v for k, v in client.items() if k != "disabled"},
            "username": device.device_id,
            "clientid": device.device_id,
            "roles": [{"rolename": role}],
            **hashed,
        }
        roles[role] = {"rolename": role, "acls": device_acls(device.device_id)}
        count += 1
    return {**config, "clients": list(clients.values()), "roles": list(roles.values())}, count
