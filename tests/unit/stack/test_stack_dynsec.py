"""Broker accounts and ACLs as data: password hashing, per-device roles, offline registration."""

from __future__ import annotations

import base64
import itertools

import pytest

from localstack import StackSecrets
from localstack.mosquitto import initial_config
from provisioning import dynsec
from provisioning.credentials import DeviceCredentials


def salts() -> itertools.cycle[bytes]:
    return itertools.cycle([bytes(range(12))])


def test_password_hash_matches_what_mosquitto_ctrl_writes() -> None:
    # `mosquitto_ctrl dynsec init f admin secretpw` (2.0.11) wrote this salt and hash
    salt = base64.b64decode("L7OrT3vt5J4MI5YV")
    assert dynsec.hashed_password("secretpw", salt) == {
        "password": "ONW8vtDKwEQqMCEnkr7rEcp2fs4Jv8xVetYWIghug6Z9BQNfvLGGsxdkdgozid76wDBdNqQ5VFg7rTENaC6pSA==",
        "salt": "L7OrT3vt5J4MI5YV",
        "iterations": 101,
    }


@pytest.mark.parametrize("device_id", ["bike-1", "A", "tracker.7_x", "9" * 64])
def test_good_device_ids(device_id: str) -> None:
    assert dynsec.check_device_id(device_id) == device_id


@pytest.mark.parametrize(
    "device_id", ["", "a/b", "+", "#", "bike#", "$SYS", "-lead", "a" * 65, "sp ace", "ü", "fleet-admin", None]
)
def test_bad_device_ids(device_id: str) -> None:
    with pytest.raises(ValueError, match=r"device id|service account"):
        dynsec.check_device_id(device_id)


def test_a_device_may_write_its_own_topics_and_read_only_its_own_commands() -> None:
    acls = {(a["acltype"], a["topic"]) for a in dynsec.device_acls("b1") if a["allow"]}
    assert acls == {
        ("publishClientSend", "fleet/b1/telemetry"),
        ("publishClientSend", "fleet/b1/nmea"),
        ("publishClientSend", "fleet/b1/status"),
        ("publishClientSend", "fleet/b1/cmd/ack"),
        ("publishClientSend", "owntracks/b1/#"),
        ("subscribeLiteral", "fleet/b1/cmd"),
        ("publishClientReceive", "fleet/b1/cmd"),
    }


def test_adding_a_device_binds_its_client_id_and_its_own_role() -> None:
    role, client = dynsec.add_device_commands("b1", "pw")
    assert role["command"] == "createRole" and role["rolename"] == "device:b1"
    assert client == {
        "command": "createClient",
        "username": "b1",
        "password": "pw",
        "clientid": "b1",
        "roles": [{"rolename": "device:b1"}],
    }
    with pytest.raises(ValueError, match="password"):
        dynsec.add_device_commands("b1", "")


def test_a_new_broker_denies_everything_not_granted() -> None:
    config = initial_config(StackSecrets("p", "r", "s", "c", "a"), lambda: bytes(12))
    assert config["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    assert [c["username"] for c in config["clients"]] == ["fleet-service", "fleet-commands", "fleet-admin"]
    admin = next(r for r in config["roles"] if r["rolename"] == "fleet-admin")
    assert {a["topic"] for a in admin["acls"]} == {dynsec.CONTROL_TOPIC, dynsec.RESPONSE_TOPIC}
    commands = next(r for r in config["roles"] if r["rolename"] == "fleet-commands")
    sends = {a["topic"] for a in commands["acls"] if a["acltype"] == "publishClientSend"}
    assert sends == {"fleet/+/cmd"}


def test_offline_registration_adds_and_rekeys_devices() -> None:
    base = initial_config(StackSecrets("p", "r", "s", "c", "a"), lambda: bytes(12))
    salt = salts()
    two = [DeviceCredentials("b1", "one"), DeviceCredentials("b2", "two")]
    first, count = dynsec.with_devices(base, two, salt.__next__)
    assert count == 2 and len(first["clients"]) == 5 and len(first["roles"]) == 5
    first["clients"][-2]["disabled"] = True
    second, count = dynsec.with_devices(first, [DeviceCredentials("b1", "new")], salt.__next__)
    b1 = next(c for c in second["clients"] if c["username"] == "b1")
    assert count == 1 and len(second["clients"]) == 5
    assert "disabled" not in b1 and b1["clientid"] == "b1"
    assert b1["password"] == dynsec.hashed_password("new", bytes(range(12)))["password"]


def test_offline_registration_never_touches_a_service_account() -> None:
    base = {"clients": [{"username": "ops", "roles": [{"rolename": "ops"}]}], "roles": []}
    with pytest.raises(ValueError, match="service account"):
        dynsec.with_devices(base, [DeviceCredentials("ops", "x")], lambda: bytes(12))
