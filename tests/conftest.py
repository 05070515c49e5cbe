"""Session fixtures: the real servers, started once through the same stack manager the demo uses.

Set FLEET_DATABASE_URL, FLEET_MQTT_URL, FLEET_REDIS_URL (and FLEET_MQTT_ADMIN_URL) to run the
integration tests against servers of your own instead. Tests empty the tables and Redis between
them, so on servers that are not the session's own they refuse to, and fail, unless
FLEET_TEST_ALLOW_WIPE=1 says the data there may go. A server that cannot start fails the tests with
the stack manager's message: a skipped suite would hide a missing install step.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
import redis

from kernel.endpoints import Endpoints
from localstack import StackUrls

if TYPE_CHECKING:
    from localstack import Stack


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    """A test that leaves a service thread running would leak into the next one's results."""
    before = set(threading.enumerate())
    yield
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    for thread in leftover:
        thread.join(timeout=5)
    still = [t.name for t in leftover if t.is_alive()]
    assert not still, f"test left threads running: {still}"


def _external() -> Endpoints | None:
    env = os.environ
    if not all(env.get(k) for k in ("FLEET_DATABASE_URL", "FLEET_MQTT_URL", "FLEET_REDIS_URL")):
        return None
    return Endpoints(
        env["FLEET_DATABASE_URL"],
        env["FLEET_MQTT_URL"],
        env["FLEET_REDIS_URL"],
        env.get("FLEET_MQTT_ADMIN_URL"),
        local_stack=False,
        mqtt_commands_url=env.get("FLEET_MQTT_COMMANDS_URL"),
    )


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def local_stack(stack_dir: Path) -> Iterator[Stack | None]:
    """The tests' own stack (None when external servers are given)."""
    if _external() is not None:
        yield None
        return
    from localstack import Stack, ensure_installed, free_ports

    ensure_installed(log=lambda _msg: None)
    stack = Stack(stack_dir, free_ports())
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def endpoints(local_stack: Stack | None) -> Iterator[Endpoints]:
    from ingest.migrate import migrate

    external = _external()
    if external is not None or local_stack is None:
        assert external is not None
        migrate(external.database_url)
        yield external
        return
    urls = local_stack.urls()
    migrate(urls.database_url)
    yield stack_endpoints(urls)


@pytest.fixture(scope="session")
def tls_endpoints(endpoints: Endpoints, local_stack: Stack | None) -> Endpoints:
    """The same servers with the MQTT URLs on the broker's TLS listener (external: FLEET_MQTTS_URL and
    FLEET_MQTTS_ADMIN_URL, each with `?cafile=` when the broker's CA is not a system one)."""
    if local_stack is None:
        url = os.environ.get("FLEET_MQTTS_URL")
        if not url:
            pytest.skip("external servers without FLEET_MQTTS_URL: no TLS listener to test")
        return replace(endpoints, mqtt_url=url, mqtt_admin_url=os.environ.get("FLEET_MQTTS_ADMIN_URL"))

    def moved(url: str | None) -> str | None:
        return local_stack.mqtts(url) if url else None

    services = {
        name: replace(own, mqtt_url=moved(own.mqtt_url), mqtt_admin_url=moved(own.mqtt_admin_url))
        for name, own in endpoints.services.items()
    }
    return replace(endpoints, mqtt_url=moved(endpoints.mqtt_url), mqtt_admin_url=moved(endpoints.mqtt_admin_url),
                   services=services)  # fmt: skip


def stack_endpoints(urls: StackUrls) -> Endpoints:
    """The endpoints of a stack the tests started themselves: theirs to empty."""
    return Endpoints(urls.database_url, urls.mqtt_url, urls.redis_url, urls.mqtt_admin_url, local_stack=True,
                     services=urls.services)  # fmt: skip


WIPE_VARIABLE = "FLEET_TEST_ALLOW_WIPE"


def refuse_foreign_wipe(endpoints: Endpoints) -> None:
    """Fail unless the servers are the tests' own, or FLEET_TEST_ALLOW_WIPE=1 gives them up."""
    if not endpoints.local_stack and os.environ.get(WIPE_VARIABLE) != "1":
        pytest.fail(
            f"refusing to TRUNCATE and FLUSHDB servers the tests did not start ({endpoints.shown()['owner database']}, "
            f"{endpoints.shown()['admin redis']}); set {WIPE_VARIABLE}=1 if their data may be deleted",
            pytrace=False,
        )


@pytest.fixture
def clean(endpoints: Endpoints) -> Endpoints:
    """Each test starts from empty tables and an empty Redis."""
    refuse_foreign_wipe(endpoints)
    with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE telemetry, dead_letters, devices")
    client = redis.Redis.from_url(endpoints.redis_url)
    client.flushdb()
    client.close()
    return endpoints


@pytest.fixture
def admin_key(endpoints: Endpoints) -> str:
    """An admin API key (its token): every API route needs one. `fleet_harness.api_client(endpoints,
    role)` gives a whole client with a key of any role."""
    from api.keys import Role
    from api.keystore import Actor, create_key

    with psycopg.connect(endpoints.database_url) as conn:
        _, token = create_key(conn, "tests", Role.ADMIN, Actor(None, "tests", None))
    return token
