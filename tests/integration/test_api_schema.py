"""Schemathesis against the API served by uvicorn on the real servers, with an admin key: every
operation of the OpenAPI document is called with generated input, and every answer must be no 5xx,
a documented status and content type, and a body its schema allows. A bounded number of examples
per operation (`EXAMPLES`) keeps the run under a minute.

Left out: the check that every schema-valid request is accepted. Some refusals are about meaning,
which a schema cannot say (`from` after `to`, a bounding box with min above max, a cursor this API
did not give out); they are 422s with a sentence, and the document says so."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
import schemathesis
import uvicorn
from fleet_harness import api_config, api_key
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance
from test_api_fleet import GEO_TABLES, SQUARE, put_live

from api.app import create_app
from api.deps import ApiConfig
from kernel.endpoints import Endpoints

pytestmark = pytest.mark.integration
EXAMPLES = 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(endpoints: Endpoints) -> Iterator[tuple[str, str]]:
    """(base URL, admin key) of the API on a free port, with a little of everything to read."""
    from conftest import refuse_foreign_wipe

    refuse_foreign_wipe(endpoints)
    with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {GEO_TABLES}, dead_letters")
        conn.execute("INSERT INTO zones (id, kind, speed_limit_kmh, geometry) VALUES ('z1', 'slow', 12, %s)",
                     (psycopg.types.json.Jsonb({"type": "Polygon", "coordinates": SQUARE}),))  # fmt: skip
    put_live(endpoints, {"bike-1": {"lon": 13.405, "lat": 52.505, "locked": True, "battery_pct": 40.0}}, {})
    own = api_config(endpoints)
    config = ApiConfig(own.database_url, own.redis_url, own.mqtt_admin_url, mqtt_url=endpoints.mqtt_url)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn")
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", api_key(endpoints, name="schemathesis")
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def test_every_operation_answers_as_documented(served: tuple[str, str]) -> None:
    """Each operation in turn, with its own Hypothesis run; the failures of all are reported together."""
    base_url, key = served
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    # the document names both key headers; the generator fills them in too, so both carry our key
    headers = {"Authorization": f"Bearer {key}", "X-API-Key": key}
    failures: dict[str, str] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case: schemathesis.Case) -> None:  # type: ignore[name-defined]
            case.call_and_validate(base_url=base_url, headers=headers, excluded_checks=[positive_data_acceptance])

        try:
            call()
        except Exception as exc:  # one operation's failure must not hide the others'
            failures[operation.label] = str(exc)[:2000]
    assert operations >= 40, f"only {operations} operations in the document"
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
