"""Ports, generated secrets and the URLs built from them."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from kernel.services import DATABASE_SERVICES, REDIS_SERVICES
from kernel.settings import MqttTarget
from localstack import Ports, StackError, StackSecrets, free_ports


def test_default_ports_avoid_the_system_services() -> None:
    ports = Ports()
    assert {ports.mqtt, ports.postgres, ports.redis}.isdisjoint({1883, 5432, 6379})


@pytest.mark.parametrize("bad", [{"mqtt": 0}, {"redis": 70000}, {"postgres": "5432"}, {"mqtt": 15433}])
def test_bad_ports_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(StackError):
        Ports(**bad)  # type: ignore[arg-type]


def test_free_ports_are_three_different_ports() -> None:
    ports = free_ports()
    assert len({ports.mqtt, ports.postgres, ports.redis}) == 3


def test_credentials_are_created_once_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    first = StackSecrets.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert StackSecrets.load_or_create(path) == first
    secrets = [first.postgres, first.redis, first.mqtt_service, first.mqtt_commands, first.mqtt_admin,
               *first.database_roles.values(), *first.redis_users.values()]  # fmt: skip
    assert len(set(secrets)) == 5 + len(DATABASE_SERVICES) + len(REDIS_SERVICES)
    assert set(first.database_roles) == set(DATABASE_SERVICES) and set(first.redis_users) == set(REDIS_SERVICES)
    assert not any(secret in repr(first) for secret in secrets)


def test_an_older_credentials_file_gets_the_service_accounts_and_keeps_its_passwords(tmp_path: Path) -> None:
    """A state folder from before the services had accounts of their own keeps working."""
    path = tmp_path / "credentials.json"
    old = {"postgres": "pg", "redis": "rd", "mqtt_service": "s", "mqtt_commands": "c", "mqtt_admin": "a"}
    path.write_text(json.dumps(old))
    path.chmod(0o600)
    upgraded = StackSecrets.load_or_create(path)
    assert (upgraded.postgres, upgraded.redis, upgraded.mqtt_admin) == ("pg", "rd", "a")
    assert set(upgraded.database_roles) == set(DATABASE_SERVICES)
    assert StackSecrets.load_or_create(path) == upgraded  # written back, not generated again
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_damaged_credentials_file_is_an_error_not_a_reset(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text('{"postgres": "x"}')
    with pytest.raises(StackError, match="damaged"):
        StackSecrets.load_or_create(path)
    assert path.read_text() == '{"postgres": "x"}'


def test_urls_carry_the_accounts_and_parse_back() -> None:
    creds = StackSecrets("pg-pw", "redis-pw", "svc-pw", "cmd-pw", "adm-pw", {"ingest": "ing-pw"}, {"gateway": "gw-pw"})
    urls = creds.urls(Ports(mqtt=1, postgres=2, redis=3))
    assert urls.database_url == "postgresql://fleet:pg-pw@127.0.0.1:2/fleet"
    assert urls.redis_url == "redis://:redis-pw@127.0.0.1:3/0"
    assert urls.services["ingest"].database_url == "postgresql://fleet_ingest:ing-pw@127.0.0.1:2/fleet"
    assert urls.services["gateway"].redis_url == "redis://fleet-gateway:gw-pw@127.0.0.1:3/0"
    assert urls.services["gateway"].database_url is None  # the gateway keeps no database connection
    assert urls.services["api"].mqtt_admin_url == urls.mqtt_admin_url
    assert "pw" not in repr(urls)
    assert MqttTarget.parse(urls.mqtt_url) == MqttTarget("127.0.0.1", 1, "fleet-service", "svc-pw")
    assert MqttTarget.parse(urls.mqtt_commands_url).username == "fleet-commands"
    assert MqttTarget.parse(urls.mqtt_admin_url).password == "adm-pw"


def test_a_service_does_not_rewrite_an_older_credentials_file_but_says_what_to_run(tmp_path: Path) -> None:
    from localstack import Stack

    path = tmp_path / "credentials.json"
    old = '{"postgres": "pg", "redis": "rd", "mqtt_service": "s", "mqtt_commands": "c", "mqtt_admin": "a"}'
    path.write_text(old)
    with pytest.raises(StackError, match="fleet stack up"):
        Stack(tmp_path).urls()
    assert path.read_text() == old
