"""Simulated devices obey commands through the real broker, gateway, ingest and command service,
one device per misbehaviour: prompt, never acks, acks late, acks twice, rejects, offline when sent."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from commands_harness import FAST, clear_statuses, command_service, path_of, send, state_of, truncate_commands
from fleet_harness import register, services, wait_for

from commands.model import Action, State
from commands.service import CommandService
from kernel.endpoints import Endpoints
from kernel.settings import MqttTarget
from simulators.config import CommandHabit, SimConfig, device_ids
from simulators.faults import FaultConfig
from simulators.fleet import run_fleet
from simulators.run import SimSummary
from simulators.vehicle import Behaviour

pytestmark = pytest.mark.integration

PREFIX = "cmd-"
HABITS = (CommandHabit.PROMPT, CommandHabit.DROP, CommandHabit.SLOW, CommandHabit.TWICE, CommandHabit.REJECT,
          CommandHabit.OFFLINE)  # fmt: skip


@pytest.fixture
def fleet(clean: Endpoints) -> Iterator[tuple[Endpoints, list[str], CommandService, dict[str, SimSummary]]]:
    truncate_commands(clean)
    config = SimConfig(
        devices=len(HABITS), rate=2.0, fmt="json", seed=5, duration_s=20.0, id_prefix=PREFIX,
        behaviour=Behaviour(park_mean_s=5000.0),  # parked for the whole test unless told otherwise
        habits=tuple(enumerate(HABITS)), slow_ack_delay_s=2.0, ack_delay_s=0.05,
        online_s=(3.0, 4.0), faults=FaultConfig(offline_s=(4.0, 5.0)),
    )  # fmt: skip
    ids = device_ids(config)
    credentials = register(clean, ids)
    target = MqttTarget.parse(clean.mqtt_url)
    result: dict[str, SimSummary] = {}
    with services(clean), command_service(clean) as service:
        runner = threading.Thread(
            target=lambda: result.setdefault("summary", asyncio.run(
                run_fleet(config, mqtt_host=target.host, mqtt_port=target.port, credentials=credentials))),
            name="sim-fleet",
        )  # fmt: skip
        runner.start()
        try:
            wait_for(lambda: all(service.vehicles[d].seen is not None for d in ids[:5]), 20, "first reports")
            yield clean, ids, service, result
        finally:
            runner.join(timeout=60)
            clear_statuses(clean, ids)


def test_each_misbehaviour(fleet: tuple[Endpoints, list[str], CommandService, dict[str, SimSummary]]) -> None:
    endpoints, ids, service, _ = fleet
    prompt, drop, slow, twice, reject, offline = ids
    time.sleep(FAST.park_s)  # standing still long enough for the park rule
    lock = send(endpoints, prompt, Action.LOCK, reason="payment_overdue", by="lockout").command.id
    locate = send(endpoints, drop, Action.LOCATE).command.id
    slow_alarm = send(endpoints, slow, Action.ALARM, params={"duration_s": 5}).command.id
    twice_limit = send(endpoints, twice, Action.SET_SPEED_LIMIT, params={"kmh": 12}).command.id
    rejected = send(endpoints, reject, Action.UNLOCK).command.id
    wait_for(lambda: not service.vehicles[offline].online, 20, "the offline-habit device away")
    away = send(endpoints, offline, Action.LOCATE).command.id
    time.sleep(0.5)
    assert state_of(endpoints, away) is State.QUEUED  # not sent while the device is offline

    wait_for(lambda: state_of(endpoints, lock) is State.CONFIRMED, 20, "lock confirmed")
    wait_for(lambda: state_of(endpoints, locate) is State.FAILED, 20, "locate to a silent device failed")
    wait_for(lambda: state_of(endpoints, slow_alarm) is State.DELIVERED, 20, "late ack delivered")
    wait_for(lambda: state_of(endpoints, twice_limit) is State.DELIVERED, 20, "double ack delivered")
    wait_for(lambda: state_of(endpoints, rejected) is State.REJECTED, 20, "rejected")
    wait_for(lambda: state_of(endpoints, away) is State.CONFIRMED, 30, "locate confirmed after the return")

    assert path_of(endpoints, lock) == ["queued", "sent", "delivered", "confirmed"]
    assert path_of(endpoints, locate) == ["queued", "sent", "sent", "sent", "failed"]
    assert path_of(endpoints, slow_alarm)[:3] == ["queued", "sent", "sent"] and "delivered" in path_of(
        endpoints, slow_alarm
    )
    assert path_of(endpoints, twice_limit) == ["queued", "sent", "delivered"]  # the second ack moved nothing
    assert service.vehicles[prompt].locked is True
