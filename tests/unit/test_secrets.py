"""Secrets stay secret: private files from their first byte, URLs redacted wherever they are shown,
each service resolved to its own accounts, and the grant table covering what it claims to."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest import privileges
from kernel.endpoints import Endpoints
from kernel.secretfile import create_private, write_private
from kernel.services import DATABASE_SERVICES, database_role
from kernel.settings import MqttTarget, Settings, redact
from localstack import Ports, StackSecrets
from localstack.redis_acl import SERVICE_RULES, acl_config, password_digest
from localstack.resolve import resolve

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=8, max_size=40)


def test_a_secret_file_is_private_from_its_first_byte(tmp_path: Path) -> None:
    """Under a permissive umask, the file never exists with another mode: watched from a thread."""
    seen: set[int] = set()
    path = tmp_path / "secret"
    stop = threading.Event()

    def watch() -> None:  # every file in the folder, the temporary ones included
        while not stop.is_set():
            for entry in os.scandir(tmp_path):
                with contextlib.suppress(FileNotFoundError):
                    seen.add(stat.S_IMODE(entry.stat().st_mode))

    old = os.umask(0)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(200):
            path.unlink(missing_ok=True)
            create_private(path, b"s3cret" * 1000)
            write_private(path, f"again {i}")
    finally:
        stop.set()
        watcher.join()
        os.umask(old)
    assert seen == {0o600}
    assert path.read_text() == "again 199"
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]  # no temporary file left behind


def test_create_private_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    create_private(path, b"first")
    with pytest.raises(FileExistsError):
        create_private(path, b"second")
    assert path.read_bytes() == b"first"


@given(user=TOKEN, password=TOKEN)
def test_redact_hides_the_password_of_any_url(user: str, password: str) -> None:
    for url in (f"postgresql://{user}:{password}@db:5432/fleet", f"redis://{user}:{password}@h:1/0",
                f"redis://:{password}@h:1/0", f"mqtt://{user}:{password}@broker:1883"):  # fmt: skip
        shown = redact(url)
        assert password not in shown.split("@")[0].split(":", 2)[-1]
        assert shown.endswith(url.rsplit("@", 1)[1]) and ":***@" in shown


def test_a_bad_mqtt_url_is_refused_without_its_password() -> None:
    with pytest.raises(ValueError) as refused:
        MqttTarget.parse("http://fleet-service:hunter2@broker:1883")
    assert "hunter2" not in str(refused.value)


def test_redis_acl_file_holds_digests_and_every_service_has_rules() -> None:
    config = acl_config("admin-secret", {s: f"{s}-secret" for s in SERVICE_RULES})
    assert "secret" not in config
    assert password_digest("admin-secret") in config
    for service in SERVICE_RULES:
        line = next(x for x in config.splitlines() if x.startswith(f"user fleet-{service} "))
        assert " -@all " in line and "~*" not in line and "+@all" not in line and "flushdb" not in line


def _endpoints_for(tmp_path: Path, **env: str) -> tuple[Endpoints, StackSecrets]:
    credentials = StackSecrets.load_or_create(tmp_path / "credentials.json")
    settings = Settings(state_dir=tmp_path, **env)  # type: ignore[arg-type]
    return resolve(settings), credentials


def test_each_service_resolves_to_its_own_accounts(tmp_path: Path) -> None:
    endpoints, credentials = _endpoints_for(tmp_path)
    urls = credentials.urls(Ports())
    ingest = endpoints.for_service("ingest")
    assert ingest.database_url == urls.services["ingest"].database_url and "fleet_ingest:" in ingest.database_url
    assert ingest.redis_url == urls.services["ingest"].redis_url and ingest.mqtt_admin_url is None
    gateway = endpoints.for_service("gateway")
    assert gateway.database_url == "" and "fleet-gateway:" in gateway.redis_url
    env = endpoints.service_env("gateway", {"FLEET_DATABASE_URL": "postgresql://fleet:owner@x/y", "PATH": "/bin"})
    assert env == {"PATH": "/bin", "FLEET_MQTT_URL": gateway.mqtt_url, "FLEET_REDIS_URL": gateway.redis_url}
    assert endpoints.for_service("api").mqtt_admin_url == urls.mqtt_admin_url
    assert credentials.postgres not in repr(endpoints) and credentials.postgres not in str(endpoints.shown())


def test_urls_given_are_used_as_given_and_per_service_ones_win(tmp_path: Path) -> None:
    external = {"database_url": "postgresql://me:pw@db/fleet", "redis_url": "redis://r:1/0", "mqtt_url": "mqtt://m:1"}
    endpoints = resolve(Settings(state_dir=tmp_path / "none", **external))  # type: ignore[arg-type]
    assert not endpoints.local_stack
    assert endpoints.for_service("ingest").database_url == external["database_url"]
    own = resolve(Settings(state_dir=tmp_path / "none", ingest_database_url="postgresql://ing:pw@db/fleet", **external),
                  service="ingest")  # type: ignore[arg-type]  # fmt: skip
    assert own.database_url == "postgresql://ing:pw@db/fleet" and own.redis_url == "redis://r:1/0"
    # a service given all it needs never looks for the local stack (there is none in that folder)
    gateway = resolve(Settings(state_dir=tmp_path / "none", mqtt_url="mqtt://m:1", redis_url="redis://r:1/0"),
                      service="gateway")  # fmt: skip
    assert (gateway.mqtt_url, gateway.redis_url, gateway.local_stack) == ("mqtt://m:1", "redis://r:1/0", False)


def test_the_grant_table_and_the_stack_name_the_same_roles() -> None:
    """ingest/privileges.py stays free of the stack's imports, so the names are written twice."""
    assert privileges.SERVICES == DATABASE_SERVICES
    assert [privileges.role(s) for s in privileges.SERVICES] == [database_role(s) for s in DATABASE_SERVICES]


def test_the_grant_table_names_only_known_services_and_privileges() -> None:
    for table, grants in privileges.TABLE_PRIVILEGES.items():
        assert table not in privileges.OWNER_ONLY
        for service, granted in grants.items():
            assert service in privileges.SERVICES, (table, service)
            assert set(granted) <= {"SELECT", "INSERT", "UPDATE", "DELETE"}, (table, granted)  # never TRUNCATE
    assert privileges.unlisted({"telemetry", "schema_migrations", "brand_new"}) == {"brand_new"}
    assert ("telemetry", "fleet_api", "INSERT") not in privileges.wanted({"telemetry"})


def test_fixtures_refuse_to_wipe_servers_that_are_not_theirs(monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import WIPE_VARIABLE, refuse_foreign_wipe

    theirs = Endpoints("postgresql://me:pw@db/fleet", "mqtt://m:1", "redis://:pw@r:1/0", None, local_stack=False)
    own = Endpoints("postgresql://fleet:pw@127.0.0.1/fleet", "mqtt://m:1", "redis://:pw@r:1/0", None, local_stack=True)
    monkeypatch.delenv(WIPE_VARIABLE, raising=False)
    refuse_foreign_wipe(own)
    with pytest.raises(pytest.fail.Exception, match=WIPE_VARIABLE) as refused:
        refuse_foreign_wipe(theirs)
    assert "pw" not in str(refused.value).replace(WIPE_VARIABLE, "")
    monkeypatch.setenv(WIPE_VARIABLE, "1")
    refuse_foreign_wipe(theirs)
