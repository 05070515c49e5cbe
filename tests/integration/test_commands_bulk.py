"""Commands in bulk on the real servers: a batch issued in one call, published over several
connections, reaches each device in the order issued; stored details survive any characters."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
import redis
from commands_harness import FAST, Firmware, clear_statuses, command_service, state_of, truncate_commands
from fleet_harness import register, services, wait_for

from commands import store
from commands.issue import CommandRequest, Issued, issue_many
from commands.lifecycle import Step
from commands.model import Action, State, Transition, evolve
from commands.publisher import lane
from kernel.endpoints import Endpoints

pytestmark = pytest.mark.integration

DEVICES = [f"bulk-{i}" for i in range(6)]


@pytest.fixture
def fleet(clean: Endpoints) -> Iterator[tuple[Endpoints, dict[str, str]]]:
    truncate_commands(clean)
    creds = register(clean, DEVICES)
    with services(clean):
        yield clean, creds
        clear_statuses(clean, list(creds))


def _issue(endpoints: Endpoints, reqs: list[CommandRequest]) -> list[Issued]:
    client = redis.Redis.from_url(endpoints.redis_url)
    try:
        with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
            out = issue_many(conn, client, reqs, FAST, datetime.now(UTC))
    finally:
        client.close()
    assert all(isinstance(r, Issued) for r in out), out
    return out  # type: ignore[return-value]


def test_several_publishing_connections_keep_each_devices_order(fleet: tuple[Endpoints, dict[str, str]]) -> None:
    endpoints, creds = fleet
    assert len({lane(d, 3) for d in DEVICES}) > 1, "the devices must take more than one connection"
    firmware = {d: Firmware(endpoints, d, creds[d]).connect() for d in DEVICES}
    try:
        with command_service(endpoints, publishers=3) as service:
            reqs = [
                req
                for n in range(5)
                for d in DEVICES
                for req in (
                    CommandRequest(d, Action.ALARM, "test", params={"duration_s": 5 + n}),
                    CommandRequest(d, Action.SET_SPEED_LIMIT, "test", params={"kmh": 10 + n}),
                    CommandRequest(d, Action.LOCATE, "test"),
                )
            ]  # one call, every device interleaved with the others: one wake-up message
            issued = _issue(endpoints, reqs)
            ids = [i.command.id for i in issued]
            wait_for(lambda: all(state_of(endpoints, c) in (State.DELIVERED, State.CONFIRMED) for c in ids), 30,
                     "all delivered")  # fmt: skip
            assert service.stats.sent == len(ids)
        for d, device in firmware.items():
            want = [i.command.id for i in issued if i.command.device_id == d]
            assert [c["id"] for c in device.received] == want, f"{d} got its commands out of order"
    finally:
        for device in firmware.values():
            device.close()


def test_stored_details_keep_any_characters(clean: Endpoints) -> None:
    """The compare-and-set writes its columns as array literals: quotes, backslashes, commas, braces,
    the word NULL and non-ASCII text must come back as they went in."""
    truncate_commands(clean)
    register(clean, ["bulk-q"])
    (issued,) = _issue(clean, [CommandRequest("bulk-q", Action.ALARM, "test")])
    before = issued.command
    now = datetime.now(UTC)
    for detail in ['a "quoted" \\ back,slash {brace}', "NULL", "", "Grüße ✓ \t tab"]:
        after = evolve(before, detail=detail, attempts=before.attempts + 1, sent_at=now, next_at=None)
        step = Step(after, (Transition(before.id, now, before.state, before.state, "test", "note"),))
        with psycopg.connect(clean.database_url, autocommit=True) as conn:
            (applied,) = store.apply(conn, [(before, step)])
            stored = store.get(conn, before.id)
        assert stored is not None
        got = stored.command
        assert (got.detail, got.attempts, got.next_at, got.version) == (
            detail,
            after.attempts,
            None,
            before.version + 1,
        )
        assert got.sent_at is not None and abs((got.sent_at - now).total_seconds()) < 1e-3
        before = applied.command
        time.sleep(0.01)
