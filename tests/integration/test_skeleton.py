"""The walking skeleton, end to end on the real servers: device → broker → gateway → Redis stream →
ingest → TimescaleDB, and the vehicle on the map API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
from fleet_harness import api_client, device_client, publish_all, register, scalar, services, wait_for

from kernel.endpoints import Endpoints

pytestmark = pytest.mark.integration

# Counted per device: the gateway's persistent session may still deliver an earlier test's stragglers
# (a simulated device's Last Will, say), which must not make these counts flaky.
OURS = "SELECT count(*) FROM telemetry WHERE device_id = ANY(%s)"
OUR_DEAD = "SELECT count(*) FROM dead_letters WHERE device_id = ANY(%s)"


def _report(device_id: str, t: datetime, lat: float, lon: float, **extra: object) -> bytes:
    return orjson.dumps({"v": 1, "id": device_id, "ts": t.isoformat(), "lat": lat, "lon": lon, **extra})


def test_published_telemetry_reaches_the_hypertable_and_the_map(clean: Endpoints) -> None:
    creds = register(clean, ["bike-1", "bike-2"])
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    with services(clean), device_client(clean, "bike-1", creds["bike-1"]) as bike1:
        with device_client(clean, "bike-2", creds["bike-2"]) as bike2:
            publish_all(
                bike1,
                [
                    ("fleet/bike-1/telemetry", _report("bike-1", start + timedelta(seconds=i), 52.5 + i * 1e-4, 13.4,
                                                       speed_kmh=15.0, battery_pct=80 - i, locked=False))
                    for i in range(50)
                ],
            )  # fmt: skip
            publish_all(bike2, [("fleet/bike-2/telemetry", _report("bike-2", start, 52.51, 13.41, locked=True))])
        wait_for(lambda: scalar(clean.database_url, OURS, ["bike-1", "bike-2"]) == 51, what="51 rows")

    assert scalar(clean.database_url, "SELECT count(*) FROM telemetry WHERE device_id = 'bike-1'") == 50
    with api_client(clean) as api:
        response = api.get("/v1/vehicles")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/geo+json"
    collection = response.json()
    assert collection["type"] == "FeatureCollection"
    by_id = {f["id"]: f for f in collection["features"]}
    assert set(by_id) == {"bike-1", "bike-2"}
    lon, lat = by_id["bike-1"]["geometry"]["coordinates"]
    assert (lon, lat) == pytest.approx((13.4, 52.5 + 49e-4))
    assert by_id["bike-1"]["properties"]["battery_pct"] == 31
    assert by_id["bike-2"]["properties"]["locked"] is True


def test_duplicates_are_stored_once_and_late_records_do_not_move_the_vehicle_back(clean: Endpoints) -> None:
    creds = register(clean, ["bike-9"])
    now = datetime.now(UTC).replace(microsecond=0)
    newest = _report("bike-9", now, 52.6, 13.5)
    late = _report("bike-9", now - timedelta(hours=1), 52.0, 13.0)
    with services(clean), device_client(clean, "bike-9", creds["bike-9"]) as bike:
        topic = "fleet/bike-9/telemetry"
        publish_all(bike, [(topic, newest), (topic, newest), (topic, newest)])
        wait_for(lambda: scalar(clean.database_url, OURS, ["bike-9"]) == 1, what="first row")
        publish_all(bike, [(topic, late), (topic, late)])
        wait_for(lambda: scalar(clean.database_url, OURS, ["bike-9"]) == 2, what="late row")
        wait_for(lambda: not _pending(clean), what="stream drained")

    assert scalar(clean.database_url, "SELECT count(DISTINCT time) FROM telemetry WHERE device_id = 'bike-9'") == 2
    with api_client(clean) as api:
        feature = api.get("/v1/vehicles/bike-9").json()
    assert feature["geometry"]["coordinates"] == pytest.approx([13.5, 52.6])


def test_refused_messages_become_dead_letters_with_reasons(clean: Endpoints) -> None:
    creds = register(clean, ["bike-3"])
    with services(clean), device_client(clean, "bike-3", creds["bike-3"]) as bike:
        publish_all(
            bike,
            [
                ("fleet/bike-3/telemetry", b"{not json"),
                ("fleet/bike-3/telemetry", _report("bike-3", datetime.now(UTC), 95.0, 13.4)),
                ("fleet/bike-3/telemetry", _report("someone-else", datetime.now(UTC), 52.0, 13.4)),
            ],
        )
        wait_for(lambda: scalar(clean.database_url, OUR_DEAD, ["bike-3"]) == 3, what="dead letters")
    with psycopg.connect(clean.database_url) as conn:
        rows = conn.execute(
            "SELECT reason, payload FROM dead_letters WHERE device_id = 'bike-3' ORDER BY reason"
        ).fetchall()
    assert [r[0] for r in rows] == ["bad_json", "id_mismatch", "out_of_range"]
    assert bytes(rows[0][1]) == b"{not json"
    assert scalar(clean.database_url, OURS, ["bike-3"]) == 0


def _pending(endpoints: Endpoints) -> int:
    import redis

    client = redis.Redis.from_url(endpoints.redis_url)
    try:
        return int(client.xlen("fleet:ingest"))
    finally:
        client.close()


def test_ingest_commits_durably_whatever_the_server_default(clean: Endpoints) -> None:
    """The worker acknowledges entries once the commit returns, so that commit must be flushed. The
    local stack's default is `synchronous_commit = off`; the worker's sessions override it."""
    creds = register(clean, ["bike-d"])
    with services(clean) as running, device_client(clean, "bike-d", creds["bike-d"]) as bike:
        publish_all(bike, [("fleet/bike-d/telemetry", _report("bike-d", datetime.now(UTC), 52.5, 13.4))])
        wait_for(lambda: scalar(clean.database_url, OURS, ["bike-d"]) == 1, what="the row")
        worker_setting = running.ingest._conn.execute("SHOW synchronous_commit").fetchone()  # type: ignore[union-attr]
    assert scalar(clean.database_url, "SHOW synchronous_commit") == "off"
    assert worker_setting == ("on",)
