"""`/v1/live` against the real Redis channels, and the map page's own routes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import orjson
import psycopg
import pytest
import redis
from fleet_harness import api_client, api_config, api_key
from map_harness import serve_api
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from api.keys import Role
from kernel import keys
from kernel.endpoints import Endpoints

pytestmark = pytest.mark.integration

BOX = [11.0, 48.0, 12.0, 49.0]


@pytest.fixture
def server(clean: Endpoints) -> Iterator[str]:
    with serve_api(api_config(clean)) as url:
        yield url.replace("http://", "ws://")


def receive(ws: ClientConnection, timeout: float = 5.0) -> dict:
    return orjson.loads(ws.recv(timeout=timeout))


def test_a_socket_without_a_good_key_is_closed(server: str) -> None:
    with connect(f"{server}/v1/live") as ws:
        ws.send(orjson.dumps({"key": "flt_000000000000_nope", "bbox": BOX}).decode())
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


def test_a_bad_box_is_refused_and_the_socket_stays(clean: Endpoints, server: str) -> None:
    with connect(f"{server}/v1/live", additional_headers={"X-API-Key": api_key(clean, Role.VIEWER)}) as ws:
        assert receive(ws)["vehicles"] == []  # the snapshot of an empty fleet
        ws.send('{"bbox": [0, 10, 1, 5]}')
        assert receive(ws) == {"type": "error", "detail": "south must not be above north"}


def test_positions_in_the_box_zone_events_and_command_transitions_stream_live(clean: Endpoints, server: str) -> None:
    admin = redis.Redis.from_url(clean.redis_url)
    admin.hset(keys.VEHICLES, "parked-in", orjson.dumps({"id": "parked-in", "lon": 11.5, "lat": 48.5, "ts": 1.0}))
    admin.hset(keys.VEHICLES, "parked-out", orjson.dumps({"id": "parked-out", "lon": 2.3, "lat": 48.8, "ts": 1.0}))
    stop = threading.Event()

    def publish() -> None:  # again and again, until the subscriber (started by the first client) hears it
        n = 0
        while not stop.wait(0.2):
            n += 1
            admin.publish(keys.LIVE_CHANNEL, orjson.dumps([
                {"id": "in", "lon": 11.5, "lat": 48.5, "ts": float(n), "battery_pct": 80},
                {"id": "out", "lon": 2.3, "lat": 48.8, "ts": float(n)}]))  # fmt: skip
            event = {"type": "zone_event", "device_id": "in", "kind": "violation", "lon": 11.5, "lat": 48.5}
            admin.publish(keys.EVENTS_CHANNEL, orjson.dumps(event))
            admin.publish(keys.COMMANDS_CHANNEL, orjson.dumps([{"id": "c", "device_id": "out", "to": "confirmed"}]))

    with connect(f"{server}/v1/live") as ws:
        ws.send(orjson.dumps({"key": api_key(clean, Role.VIEWER), "bbox": BOX}).decode())
        first = receive(ws)
        assert [v["id"] for v in first["vehicles"]] == ["parked-in"]  # the snapshot: in the box only
        publisher = threading.Thread(target=publish, name="publisher")
        publisher.start()
        try:
            seen: set[str] = set()
            kinds: set[str] = set()
            deadline = time.monotonic() + 15
            while not ({"in"} <= seen and {"zone_event", "command"} <= kinds) and time.monotonic() < deadline:
                update = receive(ws)
                seen.update(v["id"] for v in update["vehicles"])
                kinds.update(e["type"] for e in update["events"])
            assert seen == {"in"}, "only what is in the box"
            assert kinds == {"zone_event", "command"}
            ws.send(orjson.dumps({"bbox": [2.0, 48.0, 3.0, 49.0]}).decode())  # the view moves to Paris
            moved: set[str] = set()
            while "out" not in moved and time.monotonic() < deadline:
                moved.update(v["id"] for v in receive(ws)["vehicles"])
            assert "out" in moved and "parked-out" in moved
        finally:
            stop.set()
            publisher.join()
            admin.close()


def test_the_page_and_its_libraries_are_public_and_its_data_needs_a_key(clean: Endpoints) -> None:
    anonymous = {"Authorization": ""}
    with api_client(clean, Role.VIEWER) as client:
        page = client.get("/map", headers=anonymous)
        assert page.status_code == 200 and "leaflet.js" in page.text
        for path in ("/map/static/vendor/leaflet/dist/leaflet.js", "/map/static/vendor/markercluster/MIT-LICENCE.txt",
                     "/map/static/map.js", "/map/static/vendor/uplot/dist/uPlot.iife.min.js"):  # fmt: skip
            assert client.get(path, headers=anonymous).status_code == 200, path
        assert client.get("/map/config.json", headers=anonymous).json() == {"tiles_url": None, "tiles_attribution": ""}
        assert client.get("/v1/map/maintenance", headers=anonymous).status_code == 401
        assert client.get("/v1/me").json()["role"] == "viewer"
        assert client.get("/v1/map/features").json() == {"subscription_route": "/v1/devices/{device_id}/subscription"}


def test_a_track_is_the_last_hour_oldest_first_and_maintenance_is_listed(clean: Endpoints) -> None:
    with psycopg.connect(clean.database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO device_keys (id) VALUES ('trk') ON CONFLICT DO NOTHING")
        conn.execute(
            "INSERT INTO telemetry (time, device_id, device_key, received_at, source, lon, lat)"
            " SELECT now() - make_interval(mins => m), 'trk', (SELECT key FROM device_keys WHERE id = 'trk'), now(),"
            " 'json', 11 + m / 1000.0, 48 FROM generate_series(5, 95, 10) AS m"
        )
        conn.execute("INSERT INTO device_service (device_id, time, status) VALUES ('trk', now() - interval '1 minute',"
                     " 'maintenance') ON CONFLICT DO NOTHING")  # fmt: skip
    with api_client(clean, Role.VIEWER) as client:
        track = client.get("/v1/map/track/trk").json()
        assert track["geometry"]["type"] == "LineString"
        assert [x for x, _ in track["geometry"]["coordinates"]] == [11.055, 11.045, 11.035, 11.025, 11.015, 11.005]
        assert client.get("/v1/map/track/nobody").json()["geometry"] is None
        assert "trk" in client.get("/v1/map/maintenance").json()
