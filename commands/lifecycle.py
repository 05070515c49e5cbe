"""The command lifecycle, the superseding rule and the park rule, as pure functions.

Every change to a command goes through `step(command, event, vehicle, rules)`, which returns the new
command, the audit rows to append and whether to publish it now. The service only stores what this
decides and publishes when told to, so the properties that matter are checked here, on random
sequences of events (tests/unit/commands): nothing is sent past its time to live, a superseded,
canceled or expired command never moves again, an unforced lock is never sent to a vehicle that is
not parked, and a command is delivered only on the device's own ack after a send.

States: queued → (waiting_for_park →) sent → delivered → confirmed, or rejected / failed / expired /
superseded / canceled. Lessons taken from other systems:
- delivered only on the device's ack, never on the broker's PUBACK (ThingsBoard showed DELIVERED
  for offline devices); an ack that overtakes anything else is still matched by command id;
- past its time to live a command is never sent, whatever state its device is in (Traccar fired a
  queued immobiliser when a vehicle came back into coverage days later);
- lock and unlock are a desired state: a newer one supersedes every older one not yet delivered,
  so a stale unlock can never undo a later lock (AWS shadow's stale desired state);
- an unforced lock waits for the vehicle to park (Teltonika's immobiliser speed rule).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from commands.model import (
    DESIRED_STATE,
    PENDING,
    TERMINAL,
    Action,
    Command,
    Rules,
    State,
    Transition,
    Vehicle,
    evolve,
)

AckResult = Literal["ok", "rejected", "error"]


@dataclass(frozen=True, slots=True)
class Tick:
    """Look again: a timer came due, or something about the vehicle changed."""

    now: datetime


@dataclass(frozen=True, slots=True)
class Acked:
    now: datetime
    result: AckResult
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Canceled:
    now: datetime
    by: str


@dataclass(frozen=True, slots=True)
class Superseded:
    now: datetime
    by: str  # the newer command's id


Event = Tick | Acked | Canceled | Superseded


@dataclass(frozen=True, slots=True)
class Step:
    command: Command
    transitions: tuple[Transition, ...] = ()
    publish: bool = False  # send the command to the device now (after storing this step)

    @property
    def changed(self) -> bool:
        return bool(self.transitions) or self.publish


SERVICE = "fleet-commands"
DEVICE = "device"


def step(command: Command, event: Event, vehicle: Vehicle, rules: Rules) -> Step:
    if isinstance(event, Acked):
        return _acked(command, event, vehicle)
    if isinstance(event, Canceled | Superseded):
        return _ended_by(command, event)
    return _tick(command, event.now, vehicle, rules)


def parked(vehicle: Vehicle, now: datetime, rules: Rules) -> bool:
    """Standing still for `park_s` by its reports: every report since `still_since` was slow."""
    return vehicle.still_since is not None and (now - vehicle.still_since).total_seconds() >= rules.park_s


def still_since(previous: Vehicle, speed_kmh: float | None, seen: datetime, rules: Rules) -> datetime | None:
    """The start of the slow run after a new report (pure). A report without a speed says nothing
    about motion and keeps the run; a fast one ends it."""
    if speed_kmh is None:
        return previous.still_since
    if speed_kmh > rules.park_speed_kmh:
        return None
    return previous.still_since if previous.still_since is not None else seen


def confirms(command: Command, vehicle: Vehicle) -> bool:
    """The device's own report, received after the first send, shows the command carried out."""
    if command.sent_at is None or vehicle.seen is None or vehicle.seen < command.sent_at:
        return False
    if command.action is Action.LOCK:
        return vehicle.locked is True
    if command.action is Action.UNLOCK:
        return vehicle.locked is False
    return command.action is Action.LOCATE  # any report after the send is the fix asked for


def needs_confirmation(action: Action) -> bool:
    """Alarm and speed limit leave no trace in the reports: their ack is the last word."""
    return action in (Action.LOCK, Action.UNLOCK, Action.LOCATE)


def superseded_by(new: Command, older: Iterable[Command]) -> list[Command]:
    """The commands a new lock or unlock replaces: the same device's older locks and unlocks that
    are not yet delivered. Anything else (locate, alarm, speed limit) replaces nothing."""
    if new.action not in DESIRED_STATE:
        return []
    return [
        c
        for c in older
        if c.id != new.id
        and c.device_id == new.device_id
        and c.action in DESIRED_STATE
        and c.state in PENDING
        and c.created_at <= new.created_at
    ]


def initial_state(command: Command, vehicle: Vehicle, now: datetime, rules: Rules) -> tuple[State, str]:
    """What a new command can be shown as at once, before the service looks at it: an unforced
    lock for a vehicle known to be moving is waiting for it to park."""
    moving = vehicle.speed_kmh is not None and vehicle.speed_kmh > rules.park_speed_kmh
    if command.needs_park and moving:
        return State.WAITING_FOR_PARK, _moving(vehicle, rules)
    return State.QUEUED, ""


# --- the events -----------------------------------------------------------------------------------


def _move(command: Command, to: State, now: datetime, actor: str, detail: str = "", **changes: object) -> Step:
    moved = evolve(command, state=to, detail=detail, **changes)
    return Step(moved, (Transition(command.id, now, command.state, to, actor, detail),))


def _note(command: Command, now: datetime, actor: str, detail: str) -> Step:
    return Step(command, (Transition(command.id, now, command.state, command.state, actor, detail),))


def _acked(command: Command, event: Acked, vehicle: Vehicle) -> Step:
    if command.state in TERMINAL or command.attempts == 0:
        # A late ack (after expiry, superseding or cancel) is kept in the audit log, and moves nothing.
        return _note(command, event.now, DEVICE, f"ack ignored: {event.result} {event.detail}".strip())
    if command.state is State.DELIVERED:
        return Step(command)  # the device acks a repeated id again: nothing new
    if event.result == "rejected":
        return _move(command, State.REJECTED, event.now, DEVICE, event.detail, next_at=None)
    if event.result == "error":
        return _move(command, State.FAILED, event.now, DEVICE, f"device error: {event.detail}", next_at=None)
    # Confirmation is watched for until the time to live ends; alarm and speed limit end here.
    watch = command.expires_at if needs_confirmation(command.action) else None
    delivered = _move(command, State.DELIVERED, event.now, DEVICE, event.detail, next_at=watch)
    return _then_confirm(delivered, vehicle, event.now)


def _then_confirm(done: Step, vehicle: Vehicle, now: datetime) -> Step:
    if not confirms(done.command, vehicle):
        return done
    confirmed = _move(done.command, State.CONFIRMED, now, SERVICE, "reported state matches", next_at=None)
    return Step(confirmed.command, done.transitions + confirmed.transitions, done.publish)


def _ended_by(command: Command, event: Canceled | Superseded) -> Step:
    if command.state not in PENDING:
        return Step(command)
    if isinstance(event, Canceled):
        return _move(command, State.CANCELED, event.now, event.by, "", next_at=None)
    return _move(command, State.SUPERSEDED, event.now, SERVICE, f"by {event.by}", next_at=None)


def _tick(command: Command, now: datetime, vehicle: Vehicle, rules: Rules) -> Step:
    if command.state is State.DELIVERED:
        return _then_confirm(Step(command), vehicle, now)
    if command.state in TERMINAL:
        return Step(command)
    if now >= command.expires_at:
        return _move(command, State.EXPIRED, now, SERVICE, "time to live passed before delivery", next_at=None)
    if command.state is State.SENT:
        if command.next_at is not None and now < command.next_at:
            return Step(command)  # still waiting for the ack
        if not vehicle.online:
            # An ack timeout while the device is away counts for nothing: look again when it returns.
            return Step(evolve(command, next_at=None)) if command.next_at is not None else Step(command)
        if command.attempts >= rules.max_sends:
            detail = f"no ack after {command.attempts} sends"
            return _move(command, State.FAILED, now, SERVICE, detail, next_at=None)
    return _try_send(command, now, vehicle, rules)


def _try_send(command: Command, now: datetime, vehicle: Vehicle, rules: Rules) -> Step:
    if not vehicle.online:
        # Waits, queued in order, for the device's return; a command already sent waits for its ack
        # or a resend then. The expiry timer still runs.
        return Step(evolve(command, next_at=None if command.state is State.SENT else command.expires_at))
    if command.needs_park and not parked(vehicle, now, rules):
        due = command.expires_at
        if vehicle.still_since is not None:
            due = min(due, vehicle.still_since + timedelta(seconds=rules.park_s))
        detail = _moving(vehicle, rules)
        if command.state is State.WAITING_FOR_PARK:
            return Step(evolve(command, next_at=due, detail=detail))
        return _move(command, State.WAITING_FOR_PARK, now, SERVICE, detail, next_at=due)
    sends = command.attempts + 1
    due = min(now + timedelta(seconds=rules.ack_wait_s(sends)), command.expires_at)
    forced = command.action is Action.LOCK and command.force and not parked(vehicle, now, rules)
    detail = f"send {sends}" + (" (forced: the vehicle is not known to be parked)" if forced else "")
    sent = _move(command, State.SENT, now, SERVICE, detail, attempts=sends, sent_at=command.sent_at or now, next_at=due)
    return Step(sent.command, sent.transitions, publish=True)


def _moving(vehicle: Vehicle, rules: Rules) -> str:
    if vehicle.speed_kmh is None and vehicle.still_since is None:
        return "waiting for the vehicle to park (no speed reported yet)"
    speed = "unknown" if vehicle.speed_kmh is None else f"{vehicle.speed_kmh:g} km/h"
    return f"waiting for the vehicle to park (≤ {rules.park_speed_kmh:g} km/h for {rules.park_s:g} s; now {speed})"
