"""The command lifecycle: examples for each rule, then properties over random sequences of events."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from commands.lifecycle import (
    Acked,
    Canceled,
    Event,
    Superseded,
    Tick,
    confirms,
    initial_state,
    parked,
    step,
    still_since,
    superseded_by,
)
from commands.model import PENDING, TERMINAL, Action, Command, Rules, State, Vehicle

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
RULES = Rules(ack_timeout_s=10.0, backoff=2.0, max_sends=3, park_speed_kmh=3.0, park_s=30.0)
PARKED = Vehicle(online=True, locked=False, seen=T0 - timedelta(seconds=1), speed_kmh=0.0,
                 still_since=T0 - timedelta(minutes=5))  # fmt: skip
MOVING = Vehicle(online=True, locked=False, seen=T0, speed_kmh=18.0, still_since=None)


def cmd(action: Action = Action.LOCK, *, ttl_s: float = 600.0, force: bool = False, at: datetime = T0,
        cid: str = "c1", device: str = "bike-1") -> Command:  # fmt: skip
    return Command(cid, device, action, "operator", "alice", at, at + timedelta(seconds=ttl_s), force=force)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_parked_lock_is_sent_then_delivered_then_confirmed() -> None:
    sent = step(cmd(), Tick(T0), PARKED, RULES)
    assert sent.publish and sent.command.state is State.SENT and sent.command.attempts == 1
    assert sent.command.next_at == s(10)
    delivered = step(sent.command, Acked(s(1), "ok"), PARKED, RULES)
    assert delivered.command.state is State.DELIVERED  # the report predates the send: not confirmed yet
    locked = replace(PARKED, locked=True, seen=s(2))
    confirmed = step(delivered.command, Tick(s(2)), locked, RULES)
    assert confirmed.command.state is State.CONFIRMED
    assert [(t.from_state, t.to_state) for t in confirmed.transitions] == [(State.DELIVERED, State.CONFIRMED)]


def test_ack_after_the_report_confirms_at_once() -> None:
    sent = step(cmd(), Tick(T0), PARKED, RULES).command
    done = step(sent, Acked(s(1), "ok"), replace(PARKED, locked=True, seen=s(0.5)), RULES)
    assert done.command.state is State.CONFIRMED
    assert [t.to_state for t in done.transitions] == [State.DELIVERED, State.CONFIRMED]


def test_moving_vehicle_lock_waits_for_park_then_fires() -> None:
    waiting = step(cmd(), Tick(T0), MOVING, RULES)
    assert not waiting.publish and waiting.command.state is State.WAITING_FOR_PARK
    assert "park" in waiting.command.detail
    stopped = replace(MOVING, speed_kmh=1.0, still_since=s(5), seen=s(5))
    still_waiting = step(waiting.command, Tick(s(20)), stopped, RULES)
    assert not still_waiting.publish and still_waiting.command.next_at == s(35)  # wakes when the park rule holds
    fired = step(still_waiting.command, Tick(s(35)), stopped, RULES)
    assert fired.publish and fired.command.state is State.SENT


def test_forced_lock_fires_on_a_moving_vehicle_and_says_so() -> None:
    sent = step(cmd(force=True), Tick(T0), MOVING, RULES)
    assert sent.publish and "forced" in sent.transitions[0].detail


def test_unlock_does_not_wait_for_park() -> None:
    assert step(cmd(Action.UNLOCK), Tick(T0), MOVING, RULES).publish


def test_resend_with_backoff_then_failed() -> None:
    c = step(cmd(), Tick(T0), PARKED, RULES).command
    c = step(c, Tick(s(10)), PARKED, RULES).command
    assert c.attempts == 2 and c.next_at == s(30)
    assert not step(c, Tick(s(29)), PARKED, RULES).changed
    c = step(c, Tick(s(30)), PARKED, RULES).command
    assert c.attempts == 3 and c.next_at == s(70)
    failed = step(c, Tick(s(70)), PARKED, RULES)
    assert failed.command.state is State.FAILED and not failed.publish


def test_offline_device_waits_and_its_ack_timeouts_count_for_nothing() -> None:
    offline = replace(PARKED, online=False)
    queued = step(cmd(), Tick(T0), offline, RULES)
    assert not queued.publish and queued.command.state is State.QUEUED and queued.command.next_at == s(600)
    sent = step(queued.command, Tick(s(1)), PARKED, RULES).command
    away = step(sent, Tick(s(11)), offline, RULES).command
    assert away.state is State.SENT and away.attempts == 1 and away.next_at is None
    back = step(away, Tick(s(200)), PARKED, RULES)
    assert back.publish and back.command.attempts == 2


def test_never_sent_after_expiry_even_when_the_device_returns() -> None:
    offline = replace(PARKED, online=False)
    queued = step(cmd(ttl_s=60), Tick(T0), offline, RULES).command
    back = step(queued, Tick(s(61)), PARKED, RULES)
    assert back.command.state is State.EXPIRED and not back.publish


def test_rejected_and_error_acks() -> None:
    sent = step(cmd(Action.ALARM), Tick(T0), PARKED, RULES).command
    assert step(sent, Acked(s(1), "rejected", "no siren"), PARKED, RULES).command.state is State.REJECTED
    assert step(sent, Acked(s(1), "error", "jammed"), PARKED, RULES).command.state is State.FAILED


def test_alarm_is_done_when_delivered_locate_when_a_report_follows() -> None:
    alarm = step(step(cmd(Action.ALARM), Tick(T0), PARKED, RULES).command, Acked(s(1), "ok"), PARKED, RULES)
    assert alarm.command.state is State.DELIVERED and alarm.command.next_at is None
    locate = step(cmd(Action.LOCATE), Tick(T0), PARKED, RULES).command
    fix = replace(PARKED, seen=s(0.5))
    assert step(locate, Acked(s(1), "ok"), fix, RULES).command.state is State.CONFIRMED


def test_late_ack_on_a_superseded_command_is_noted_not_applied() -> None:
    sent = step(cmd(), Tick(T0), PARKED, RULES).command
    gone = step(sent, Superseded(s(1), "c2"), PARKED, RULES).command
    late = step(gone, Acked(s(2), "ok"), PARKED, RULES)
    assert late.command.state is State.SUPERSEDED
    assert late.transitions[0].from_state is late.transitions[0].to_state is State.SUPERSEDED


def test_superseding_rule() -> None:
    old_lock = cmd(cid="a", at=T0)
    delivered_unlock = replace(cmd(Action.UNLOCK, cid="b", at=T0), state=State.DELIVERED)
    other_device = cmd(cid="c", device="bike-2")
    alarm = cmd(Action.ALARM, cid="d")
    new = cmd(Action.UNLOCK, cid="e", at=s(5))
    assert [c.id for c in superseded_by(new, [old_lock, delivered_unlock, other_device, alarm])] == ["a"]
    assert superseded_by(cmd(Action.ALARM, cid="f", at=s(5)), [old_lock]) == []


def test_initial_state_shows_the_wait_for_a_moving_vehicle() -> None:
    assert initial_state(cmd(), MOVING, T0, RULES)[0] is State.WAITING_FOR_PARK
    assert initial_state(cmd(), PARKED, T0, RULES)[0] is State.QUEUED
    assert initial_state(cmd(force=True), MOVING, T0, RULES)[0] is State.QUEUED


def test_still_since_follows_the_reports() -> None:
    v = Vehicle()
    v = replace(v, still_since=still_since(v, 2.0, s(0), RULES))
    assert v.still_since == s(0)
    v = replace(v, still_since=still_since(v, None, s(5), RULES))
    assert v.still_since == s(0)
    assert still_since(v, 10.0, s(6), RULES) is None
    assert parked(v, s(30), RULES) and not parked(v, s(29), RULES)


def test_ttl_defaults_and_cap() -> None:
    assert RULES.ttl_for(Action.LOCATE, None) == 300
    assert RULES.ttl_for(Action.LOCK, 10 * 86400) == RULES.max_ttl_s


# --- properties -------------------------------------------------------------------------------------

vehicles = st.builds(
    lambda online, speed, still, locked, seen: (online, speed, still, locked, seen),
    st.booleans(),
    st.one_of(st.none(), st.floats(0, 40)),
    st.one_of(st.none(), st.floats(0, 120)),  # seconds before now that the vehicle has been still
    st.one_of(st.none(), st.booleans()),
    st.floats(0, 20),
)
events = st.tuples(
    st.floats(0, 90),  # seconds since the previous event
    st.sampled_from(["tick", "tick", "tick", "ok", "rejected", "error", "cancel", "supersede"]),
    vehicles,
)


def _vehicle(now: datetime, raw: tuple[bool, float | None, float | None, bool | None, float]) -> Vehicle:
    online, speed, still, locked, seen = raw
    still_at = None if still is None else now - timedelta(seconds=still)
    return Vehicle(online, locked, now - timedelta(seconds=seen), speed, still_at)


def _event(kind: str, now: datetime) -> Event:
    if kind in ("ok", "rejected", "error"):
        return Acked(now, kind)  # type: ignore[arg-type]
    if kind == "cancel":
        return Canceled(now, "alice")
    if kind == "supersede":
        return Superseded(now, "newer")
    return Tick(now)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(list(Action)),
    st.booleans(),
    st.floats(1, 600),
    st.lists(events, max_size=40),
)
def test_lifecycle_properties(action: Action, force: bool, ttl_s: float, seq: list) -> None:  # type: ignore[type-arg]
    command = cmd(action, ttl_s=ttl_s, force=force)
    now = T0
    for dt, kind, raw in seq:
        now += timedelta(seconds=dt)
        vehicle = _vehicle(now, raw)
        before = command
        result = step(before, _event(kind, now), vehicle, RULES)
        command = result.command
        if result.publish:
            assert now < before.expires_at, "sent after its time to live"
            assert vehicle.online, "sent to an offline device"
            assert not before.needs_park or parked(vehicle, now, RULES), "unforced lock sent to a vehicle not parked"
            assert command.state is State.SENT and command.attempts == before.attempts + 1 <= RULES.max_sends
        if before.state in TERMINAL:
            assert command.state is before.state and not result.publish, "a finished command moved"
        if command.state in (State.DELIVERED, State.CONFIRMED) and before.state not in (
            State.DELIVERED,
            State.CONFIRMED,
        ):
            assert before.state in PENDING and before.attempts > 0 and isinstance(_event(kind, now), Acked)
        if command.state is State.CONFIRMED and before.state is not State.CONFIRMED:
            assert confirms(command, vehicle)
        if command.state is State.EXPIRED and before.state is not State.EXPIRED:
            assert now >= before.expires_at
        state = before.state
        for t in result.transitions:
            assert t.from_state is state and t.at == now and t.command_id == command.id
            state = t.to_state
        assert state is command.state, "the audit log does not end in the command's state"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["lock", "unlock", "ack", "tick"]), st.floats(0, 30)), max_size=30))
def test_one_desired_state_pending_and_the_newest_wins(seq: list[tuple[str, float]]) -> None:
    """A device's locks and unlocks: after each new one, it is the only one still pending, and a
    superseded command is never delivered."""
    commands: dict[str, Command] = {}
    superseded: set[str] = set()
    now = T0
    for i, (kind, dt) in enumerate(seq):
        now += timedelta(seconds=dt)
        if kind in ("lock", "unlock"):
            new = cmd(Action(kind), cid=f"c{i}", at=now, force=True)
            for old in superseded_by(new, commands.values()):
                commands[old.id] = step(old, Superseded(now, new.id), PARKED, RULES).command
                superseded.add(old.id)
            commands[new.id] = new
            pending = [c.id for c in commands.values() if c.state in PENDING]
            assert pending == [new.id]
        for cid, c in list(commands.items()):
            event: Event = Acked(now, "ok") if kind == "ack" else Tick(now)
            commands[cid] = step(c, event, replace(PARKED, seen=now), RULES).command
    for cid in superseded:
        assert commands[cid].state is State.SUPERSEDED


def test_params_per_action() -> None:
    from commands.model import params_problem

    assert params_problem(Action.SET_SPEED_LIMIT, {"kmh": 15}) is None
    assert params_problem(Action.SET_SPEED_LIMIT, {"kmh": None}) is None
    assert params_problem(Action.SET_SPEED_LIMIT, {}) is not None
    assert params_problem(Action.SET_SPEED_LIMIT, {"kmh": True}) is not None
    assert params_problem(Action.ALARM, {}) is None
    assert params_problem(Action.ALARM, {"duration_s": 4000}) is not None
    assert params_problem(Action.LOCK, {"x": 1}) == "lock takes no parameter 'x'"
