"""The fast ways to make a `Command` and its id give exactly what the standard ones would."""

from __future__ import annotations

import uuid
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from commands.issue import new_ids
from commands.model import Action, Command, State, command_from, evolve

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
times = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC))
commands = st.builds(
    Command, id=st.uuids().map(str), device_id=st.text(min_size=1, max_size=20), action=st.sampled_from(Action),
    reason=st.text(max_size=10), requested_by=st.text(max_size=10), created_at=times, expires_at=times,
    params=st.dictionaries(st.text(max_size=5), st.integers(), max_size=2), force=st.booleans(),
    state=st.sampled_from(State), attempts=st.integers(0, 9), sent_at=st.none() | times, next_at=st.none() | times,
    detail=st.text(max_size=20), version=st.integers(0, 1000),
)  # fmt: skip
changes = st.fixed_dictionaries(
    {}, optional={"state": st.sampled_from(State), "detail": st.text(max_size=20), "attempts": st.integers(0, 9),
                  "sent_at": st.none() | times, "next_at": st.none() | times, "version": st.integers(0, 1000)},
)  # fmt: skip


@given(commands, changes)
def test_evolve_is_replace(command: Command, change: dict[str, object]) -> None:
    assert evolve(command, **change) == replace(command, **change)  # type: ignore[arg-type]


@given(commands)
def test_command_from_is_the_constructor(command: Command) -> None:
    values = {f.name: getattr(command, f.name) for f in fields(Command)}
    rebuilt = command_from(**values)
    assert rebuilt == command and type(rebuilt) is Command


def test_unknown_or_missing_fields_are_refused() -> None:
    command = Command("c1", "bike-1", Action.LOCK, "operator", "alice", T0, T0 + timedelta(hours=1))
    with pytest.raises(TypeError):
        evolve(command, colour="red")
    values = {f.name: getattr(command, f.name) for f in fields(Command)}
    del values["detail"]
    with pytest.raises(TypeError):
        command_from(**values)
    with pytest.raises(TypeError):
        command_from(**values, colour="red")


@given(st.integers(0, 300))
def test_new_ids_are_distinct_version_4_uuids(n: int) -> None:
    ids = new_ids(n)
    assert len(ids) == n == len(set(ids))
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
