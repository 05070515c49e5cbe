"""Session fixtures: the real servers, started once through the same stack manager the demo uses.

Set FLEET_DATABASE_URL, FLEET_MQTT_URL, FLEET_REDIS_URL (and FLEET_MQTT_ADMIN_URL) to run the
integration tests against servers of your own instead. A server that cannot start fails the tests
with the stack manager's message: a skipped suite would hide a missing install step.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from gateway.config import Endpoints


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
def endpoints(stack_dir: Path) -> Iterator[Endpoints]:
    from ingest.migrate import migrate

    external = _external()
    if external is not None:
        migrate(external.database_url)
        yield external
        return
    from gateway.stack import Stack, ensure_installed, free_ports

    ensure_installed(log=lambda _msg: None)
    stack = Stack(stack_dir, free_ports())
    try:
        urls = stack.up()
        migrate(urls.database_url)
        yield Endpoints(urls.database_url, urls.mqtt_url, urls.redis_url, urls.mqtt_admin_url, local_stack=True,
                        mqtt_commands_url=urls.mqtt_commands_url)  # fmt: skip
    finally:
        stack.down()


@pytest.fixture
def clean(endpoints: Endpoints) -> Endpoints:
    """Each test starts from empty tables and an empty Redis."""
    with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE telemetry, dead_letters, devices")
    client = redis.Redis.from_url(endpoints.redis_url)
    client.flushdb()
    client.close()
    return endpoints
