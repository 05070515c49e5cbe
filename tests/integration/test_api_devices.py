"""Device registration through the API: credentials work at the broker at once, bad input is a 4xx."""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from fleet_harness import api_client, device_client
from paho.mqtt.enums import CallbackAPIVersion

from kernel.endpoints import Endpoints
from kernel.settings import MqttTarget

pytestmark = pytest.mark.integration


def _api(endpoints: Endpoints) -> TestClient:
    return api_client(endpoints, registry=True)


def _refused(endpoints: Endpoints, device_id: str, password: str) -> bool:
    target = MqttTarget.parse(endpoints.mqtt_url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(device_id, password)
    try:
        client.connect(target.host, target.port)
        for _ in range(30):  # the CONNACK (refusal or not) arrives within a few loops
            client.loop(0.1)
            if client.is_connected():
                return False
        return True
    finally:
        client.disconnect()


def test_registered_device_connects_and_disabled_one_is_refused(clean: Endpoints) -> None:
    with _api(clean) as api:
        response = api.post("/v1/devices", json={"id": "tracker-7", "name": "Blue bike", "model": "ebike-v2"})
        assert response.status_code == 201, response.text
        creds = response.json()
        assert creds["mqtt_username"] == "tracker-7"
        with device_client(clean, "tracker-7", creds["mqtt_password"]) as client:
            assert client.is_connected()
        listed = api.get("/v1/devices").json()
        assert listed == [{"id": "tracker-7", "name": "Blue bike", "model": "ebike-v2", "status": "active"}]
        assert api.post("/v1/devices/tracker-7/disable").status_code == 204
        assert _refused(clean, "tracker-7", creds["mqtt_password"])
        assert api.get("/v1/devices").json()[0]["status"] == "disabled"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"id": "has space"}, 422),
        ({"id": "a/b"}, 422),
        ({"id": ""}, 422),
        ({"name": "no id"}, 422),
    ],
)
def test_bad_registrations_are_4xx_with_a_message(clean: Endpoints, body: dict[str, str], status: int) -> None:
    with _api(clean) as api:
        response = api.post("/v1/devices", json=body)
    assert response.status_code == status
    assert response.json()["detail"]


def test_unknown_device_actions_are_404(clean: Endpoints) -> None:
    with _api(clean) as api:
        response = api.post("/v1/devices/nobody/disable")
        assert response.status_code == 404
        assert "nobody" in response.json()["detail"]
        assert api.get("/v1/vehicles/nobody").status_code == 404
