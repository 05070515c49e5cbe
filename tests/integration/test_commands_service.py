"""The command service on the real broker, Redis and PostgreSQL, with the gateway and ingest running:
a command goes out on `fleet/{id}/cmd`, the device's ack comes back through the gateway's stream,
its telemetry through ingest's live state."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from commands_harness import (
    FAST,
    Firmware,
    clear_statuses,
    command_service,
    path_of,
    send,
    spawn_commands,
    state_of,
    truncate_commands,
)
from fleet_harness import register, scalar, services, stop_service, wait_for

from commands.model import Action, State
from kernel.endpoints import Endpoints

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(clean: Endpoints) -> Iterator[tuple[Endpoints, dict[str, str]]]:
    truncate_commands(clean)
    creds = register(clean, ["bike-1", "bike-2"])
    with services(clean):
        yield clean, creds
        clear_statuses(clean, list(creds))


def test_lock_is_sent_acked_and_confirmed(fleet: tuple[Endpoints, dict[str, str]]) -> None:
    endpoints, creds = fleet
    device = Firmware(endpoints, "bike-1", creds["bike-1"]).connect()
    try:
        device.report()
        time.sleep(FAST.park_s + 0.2)  # standing still long enough by its (one) report
        with command_service(endpoints):
            issued = send(endpoints, "bike-1", Action.LOCK)
            wait_for(lambda: state_of(endpoints, issued.command.id) is State.CONFIRMED, 15, "lock confirmed")
        assert path_of(endpoints, issued.command.id) == ["queued", "sent", "delivered", "confirmed"]
        assert [c["id"] for c in device.received] == [issued.command.id]
        assert device.received[0]["action"] == "lock" and device.received[0]["v"] == 1
    finally:
        device.close()


def test_expired_command_is_never_sent(fleet: tuple[Endpoints, dict[str, str]]) -> None:
    endpoints, creds = fleet
    with command_service(endpoints):
        issued = send(endpoints, "bike-1", Action.ALARM, ttl_s=1.0)
        wait_for(lambda: state_of(endpoints, issued.command.id) is State.EXPIRED, 10, "alarm expired")
        device = Firmware(endpoints, "bike-1", creds["bike-1"]).connect()
        try:
            time.sleep(1.5)
            assert device.received == []
        finally:
            device.close()
    assert path_of(endpoints, issued.command.id) == ["queued", "expired"]


def test_superseded_lock_never_reaches_a_returning_device(fleet: tuple[Endpoints, dict[str, str]]) -> None:
    endpoints, creds = fleet
    with command_service(endpoints):
        lock = send(endpoints, "bike-1", Action.LOCK)
        unlock = send(endpoints, "bike-1", Action.UNLOCK, by="alice")
        assert unlock.superseded == (lock.command.id,)
        assert state_of(endpoints, lock.command.id) is State.SUPERSEDED
        device = Firmware(endpoints, "bike-1", creds["bike-1"], locked=True).connect()
        try:
            wait_for(lambda: state_of(endpoints, unlock.command.id) is State.CONFIRMED, 15, "unlock confirmed")
            assert [c["id"] for c in device.received] == [unlock.command.id]
        finally:
            device.close()


def test_moving_vehicle_lock_waits_until_it_parks(fleet: tuple[Endpoints, dict[str, str]]) -> None:
    endpoints, creds = fleet
    device = Firmware(endpoints, "bike-1", creds["bike-1"], speed_kmh=18.0).connect()
    try:
        device.report()
        with command_service(endpoints) as service:
            wait_for(lambda: service.vehicles["bike-1"].speed_kmh == 18.0, 10, "service sees the bike moving")
            issued = send(endpoints, "bike-1", Action.LOCK, reason="payment_overdue", by="lockout")
            assert issued.command.state is State.WAITING_FOR_PARK
            for _ in range(4):  # still riding for two seconds: nothing may be sent
                time.sleep(0.5)
                device.report()
            assert device.received == []
            device.speed_kmh = 0.0
            for _ in range(6):  # parked: reports every half second, the rule needs 1.5 s
                device.report()
                time.sleep(0.5)
            wait_for(lambda: state_of(endpoints, issued.command.id) is State.CONFIRMED, 15, "lock confirmed")
        assert path_of(endpoints, issued.command.id)[:2] == ["waiting_for_park", "sent"]
    finally:
        device.close()


def test_silent_device_is_retried_then_failed(fleet: tuple[Endpoints, dict[str, str]]) -> None:
    endpoints, creds = fleet
    device = Firmware(endpoints, "bike-2", creds["bike-2"], habit="silent").connect()
    try:
        with command_service(endpoints):
            issued = send(endpoints, "bike-2", Action.LOCATE)
            wait_for(lambda: state_of(endpoints, issued.command.id) is State.FAILED, 20, "locate failed")
        assert len(device.received) == 3 and {c["id"] for c in device.received} == {issued.command.id}
    finally:
        device.close()


def test_rejecting_device(fleet: tuple[Endpoints, dict[str, str]]) -> None:
    endpoints, creds = fleet
    device = Firmware(endpoints, "bike-2", creds["bike-2"], habit="reject").connect()
    try:
        with command_service(endpoints):
            issued = send(endpoints, "bike-2", Action.SET_SPEED_LIMIT, params={"kmh": 15})
            wait_for(lambda: state_of(endpoints, issued.command.id) is State.REJECTED, 15, "rejected")
    finally:
        device.close()


def test_restart_of_the_service_loses_nothing(fleet: tuple[Endpoints, dict[str, str]]) -> None:
    """Commands issued while no service runs, and acks that arrive while it is away, are all taken
    up by the next one."""
    endpoints, creds = fleet
    device = Firmware(endpoints, "bike-1", creds["bike-1"]).connect()
    try:
        issued = [send(endpoints, "bike-1", Action.ALARM, params={"duration_s": 5}) for _ in range(3)]
        with command_service(endpoints):
            wait_for(lambda: all(state_of(endpoints, i.command.id) is State.DELIVERED for i in issued), 15, "all")
        later = send(endpoints, "bike-1", Action.LOCK)
        time.sleep(0.5)
        assert state_of(endpoints, later.command.id) is State.QUEUED  # no service: waits in the database
        with command_service(endpoints):
            wait_for(lambda: state_of(endpoints, later.command.id) is State.CONFIRMED, 15, "lock confirmed")
        assert sorted(c["id"] for c in device.received) == sorted([*(i.command.id for i in issued), later.command.id])
    finally:
        device.close()


def test_kill_minus_9_loses_nothing(fleet: tuple[Endpoints, dict[str, str]], tmp_path: Path) -> None:
    """Commands keep coming while the service is killed with -9 three times: every one ends delivered
    or confirmed, and a device sees a command again only as a resend of the same id."""
    endpoints, creds = fleet
    devices = [Firmware(endpoints, d, creds[d]).connect() for d in ("bike-1", "bike-2")]
    for device in devices:
        device.report()
    issued = []
    proc = spawn_commands(endpoints, "k", tmp_path)
    try:
        for round_ in range(4):
            for i in range(10):
                device = devices[i % 2]
                action = Action.LOCATE if i % 3 else Action.ALARM
                issued.append(send(endpoints, device.device_id, action, params={} if i % 3 else {"duration_s": 5}))
                time.sleep(0.02 * (round_ + 1))
            if round_ < 3:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                proc = spawn_commands(endpoints, "k", tmp_path)
        ids = [i.command.id for i in issued]
        done = (State.DELIVERED, State.CONFIRMED)
        wait_for(lambda: all(state_of(endpoints, c) in done for c in ids), 30, "every command delivered")
    finally:
        stop_service(proc)
        for device in devices:
            device.close()
    received = [c["id"] for d in devices for c in d.received]
    assert set(received) == set(ids)
    assert max(received.count(c) for c in ids) <= FAST.max_sends


def test_locked_vehicle_that_moves_raises_one_theft_suspected(fleet: tuple[Endpoints, dict[str, str]]) -> None:
    endpoints, creds = fleet
    device = Firmware(endpoints, "bike-1", creds["bike-1"]).connect()

    def thefts() -> int:
        return int(scalar(endpoints.database_url,  # type: ignore[arg-type]
                          "SELECT count(*) FROM zone_events WHERE violation = 'theft_suspected'"))  # fmt: skip

    try:
        device.report()
        time.sleep(FAST.park_s + 0.2)
        with command_service(endpoints):
            lock = send(endpoints, "bike-1", Action.LOCK, reason="theft")
            wait_for(lambda: state_of(endpoints, lock.command.id) is State.CONFIRMED, 15, "lock confirmed")
            device.speed_kmh = 15.0  # locked, and riding away
            for _ in range(4):
                device.report()
                time.sleep(0.3)
            wait_for(lambda: thefts() == 1, 10, "one theft_suspected event")
            unlock = send(endpoints, "bike-1", Action.UNLOCK)
            wait_for(lambda: state_of(endpoints, unlock.command.id) is State.CONFIRMED, 15, "unlock confirmed")
            for _ in range(3):
                device.report()
                time.sleep(0.3)
        assert thefts() == 1  # one per episode, none once unlocked
    finally:
        device.close()


def test_two_services_send_each_command_once(fleet: tuple[Endpoints, dict[str, str]]) -> None:
    """Both services are woken for every command; the compare-and-set lets one of them send it."""
    endpoints, creds = fleet
    device = Firmware(endpoints, "bike-2", creds["bike-2"]).connect()
    try:
        with command_service(endpoints, consumer="a") as a, command_service(endpoints, consumer="b") as b:
            issued = [send(endpoints, "bike-2", Action.ALARM, params={"duration_s": 5}) for _ in range(10)]
            ids = [i.command.id for i in issued]
            wait_for(lambda: all(state_of(endpoints, c) is State.DELIVERED for c in ids), 15, "all delivered")
            time.sleep(FAST.ack_timeout_s * 2)  # past the ack timeout the slower service had set
        assert sorted(c["id"] for c in device.received) == sorted(ids)
        assert a.stats.sent + b.stats.sent == len(ids) and a.stats.lost_races + b.stats.lost_races > 0
    finally:
        device.close()
