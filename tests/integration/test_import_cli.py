"""`fleet import` from the command line, on the real servers (XML with a report of row errors)."""

from __future__ import annotations

import pytest
from notify_harness import rows, truncate
from typer.testing import CliRunner

from fleet.cli import app
from kernel.endpoints import Endpoints

pytestmark = pytest.mark.integration


def _xml(n: int, bad: bool = False) -> bytes:
    body = "".join(
        f"<row><serial>CLI-{i:04d}</serial><customer_ref>K{i // 2}</customer_ref><customer_name>K {i // 2}"
        f"</customer_name><email>k{i // 2}@example.org</email><plan>tracker-1y</plan><start>2027-01-01</start></row>"
        for i in range(n)
    )
    if bad:
        body += "<row><serial>CLI-X</serial><customer_ref>Z</customer_ref><plan>nope</plan></row>"
    return f"<import>{body}</import>".encode()


def test_fleet_import_reports_errors_then_imports_once(clean: Endpoints, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    truncate(clean)
    rows(clean, "INSERT INTO plans (id, name, period_months, price_cents, created_at)"
                " VALUES ('tracker-1y', 'Tracker 1 year', 12, 4900, now()) RETURNING id")  # fmt: skip
    api = clean.for_service("api")
    env = {"FLEET_DATABASE_URL": api.database_url, "FLEET_REDIS_URL": api.redis_url, "FLEET_MQTT_URL": clean.mqtt_url,
           "FLEET_MQTT_ADMIN_URL": clean.mqtt_admin_url or ""}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bad, good = tmp_path / "bad.xml", tmp_path / "good.xml"
    bad.write_bytes(_xml(4, bad=True))
    good.write_bytes(_xml(4))
    runner = CliRunner()
    refused = runner.invoke(app, ["import", str(bad), "--state-dir", str(tmp_path)])
    assert refused.exit_code == 1, refused.output
    said = " ".join(refused.output.split())
    assert "nothing imported" in said and "unknown plan" in said
    creds = tmp_path / "creds.csv"
    done = runner.invoke(app, ["import", str(good), "--credentials", str(creds), "--state-dir", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert "imported 4 rows" in " ".join(done.output.split()) and len(creds.read_text().splitlines()) == 5
    again = runner.invoke(app, ["import", str(good), "--state-dir", str(tmp_path)])
    said = " ".join(again.output.split())  # the console wraps long lines
    assert "devices registered 0, customers written 0, subscriptions written 0, assignments written 0" in said
    assert rows(clean, "SELECT count(*) FROM subscription_devices") == [(4,)]
