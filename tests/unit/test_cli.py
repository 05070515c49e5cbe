"""The `fleet` command offers every subcommand the README and the demo rely on."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fleet.cli import app

COMMANDS = ["migrate", "gateway", "ingest", "geofence", "api", "simulate", "demo", "stack", "devices", "bench",
            "keys", "commands", "subscriptions", "lockout"]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_every_documented_command_exists(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output


def test_the_demo_starts_only_commands_that_exist() -> None:
    from fleet.demo import _services
    from kernel.settings import Settings

    for _name, args in _services(Settings(), 10):
        command = args[:2] if args[0] == "commands" else args[:1]
        result = CliRunner().invoke(app, [*command, "--help"])
        assert result.exit_code == 0, (args, result.output)


def test_bad_simulator_options_are_a_clear_error() -> None:
    result = CliRunner().invoke(app, ["simulate", "--format", "morse", "--devices", "1"])
    assert result.exit_code == 2


def test_commands_send_refuses_an_unknown_action_before_touching_a_server() -> None:
    result = CliRunner().invoke(app, ["commands", "send", "bike-1", "selfdestruct"])
    assert result.exit_code == 2 and "unknown action" in result.output
