"""The demo's loop on the real servers: a seeded bike locks when its subscription ends, and
`fleet subscriptions renew` unlocks it at once; the other CLI mirrors work on the same rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from subs_harness import add_devices, commands_for, lockout_engine, truncate_subscriptions, wait_until
from typer.testing import CliRunner

from kernel.endpoints import Endpoints
from subscriptions.demo import ENDING_IN, seed_demo
from subscriptions.policy import PolicySettings

pytestmark = pytest.mark.integration


def test_demo_bike_locks_at_its_end_and_renew_unlocks(clean: Endpoints, monkeypatch: pytest.MonkeyPatch) -> None:
    from fleet.cli import app

    truncate_subscriptions(clean)
    devices = ["demo-1", "demo-2", "demo-3"]
    add_devices(clean, devices)
    now = datetime.now(UTC)
    ends = seed_demo(clean.database_url, devices, ["demo-1"], now - ENDING_IN[0] + timedelta(seconds=2))
    seed_demo(clean.database_url, devices, ["demo-1"], now - ENDING_IN[0] + timedelta(seconds=2))  # a second run
    for name, value in clean.env().items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    listed = runner.invoke(app, ["subscriptions", "list"])
    assert listed.exit_code == 0 and all(d in listed.output for d in devices), listed.output
    with lockout_engine(clean, PolicySettings(notice=timedelta(minutes=1))):
        wait_until(lambda: len(commands_for(clean)) == 1, 10, "the demo bike's lock")
        assert commands_for(clean)[0][:2] == ("demo-1", "lock")
        assert commands_for(clean)[0][2] - ends["demo-1"] <= timedelta(seconds=1)
        renewed = runner.invoke(app, ["subscriptions", "renew", "demo-1"])
        assert renewed.exit_code == 0 and "active" in renewed.output, renewed.output
        wait_until(lambda: len(commands_for(clean)) == 2, 5, "the unlock")
        assert commands_for(clean)[1][:2] == ("demo-1", "unlock")
        assert runner.invoke(app, ["subscriptions", "pay", "demo-2", "--failed"]).exit_code == 0
        assert runner.invoke(app, ["subscriptions", "cancel", "demo-3"]).exit_code == 0
        assert runner.invoke(app, ["subscriptions", "renew", "nope"]).exit_code == 1
    assert len(commands_for(clean)) == 2
