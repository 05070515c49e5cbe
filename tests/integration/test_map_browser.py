"""The map page in a real browser (Debian's chromium, headless) against the whole pipeline and 50
simulated bikes: the markers appear, one moves, a click opens it, a lock is confirmed by the bike.
Once at desktop size, once at a phone's. Any console error in the page fails the test; a
screenshot of each run is kept in tests/artifacts/ (or $FLEET_TEST_ARTIFACTS).

Playwright never downloads a browser here (that fails on these machines): it is pointed at
/usr/bin/chromium, which `fleet stack install --tests` installs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from commands_harness import command_service, truncate_commands
from fleet_harness import api_config, api_key, register, services
from map_harness import serve_api

from api.keys import Role
from fleet.demo import demo_zones
from kernel.endpoints import Endpoints
from kernel.settings import MqttTarget
from simulators.config import SimConfig, device_ids
from simulators.fleet import run_fleet
from simulators.vehicle import Behaviour

pytestmark = pytest.mark.integration

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
DEVICES = 50
ARTIFACTS = Path(os.environ.get("FLEET_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts"))
SEEN_S = 45.0  # markers, a move, a confirmation: each within this


@pytest.fixture
def fleet(clean: Endpoints) -> Iterator[tuple[Endpoints, str, list[str]]]:
    """The pipeline, the command service, the API on a port and 50 bikes riding, parking and
    obeying commands; yields the endpoints, the API's URL and the bikes' ids."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `fleet stack install --tests` (as root) or apt-get install chromium")
    truncate_commands(clean)
    demo_zones(clean.database_url)
    config = SimConfig(devices=DEVICES, rate=1.0, fmt="json", seed=14, duration_s=600.0, id_prefix="map-",
                       behaviour=Behaviour(park_mean_s=20.0, park_min_s=8.0))  # fmt: skip
    ids = device_ids(config)
    credentials = register(clean, ids)
    target = MqttTarget.parse(clean.mqtt_url)
    loop = asyncio.new_event_loop()
    riding = loop.create_task(_quietly(run_fleet(config, mqtt_host=target.host, mqtt_port=target.port,
                                                 credentials=credentials)))  # fmt: skip
    runner = threading.Thread(target=loop.run_until_complete, args=(riding,), name="sim-fleet")
    try:
        with services(clean), command_service(clean), serve_api(api_config(clean)) as url:
            runner.start()
            yield clean, url, ids
    finally:
        if runner.is_alive():
            loop.call_soon_threadsafe(riding.cancel)
            runner.join(timeout=90)  # 50 devices say `offline` and disconnect; slow on a loaded machine
        if not runner.is_alive():  # else the leftover-thread check names it
            loop.run_until_complete(loop.shutdown_default_executor())  # the resolver's threads too
            loop.close()
        with psycopg.connect(clean.database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM zones WHERE id LIKE 'demo-%'")


async def _quietly(fleet: Any) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await fleet


PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
DESKTOP = {"viewport": {"width": 1440, "height": 900}}


@pytest.mark.parametrize("screen", ["desktop", "phone"])
def test_an_operator_sees_the_fleet_move_and_locks_a_bike(fleet: tuple[Endpoints, str, list[str]], screen: str) -> None:
    from playwright.sync_api import sync_playwright

    endpoints, url, ids = fleet
    key = api_key(endpoints, Role.OPERATOR, name="map test")
    problems: list[str] = []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_context(**(PHONE if screen == "phone" else DESKTOP)).new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(f"{url}/map#key={key}")
            try:
                _drive(page, ids, screen)
            except Exception as exc:
                raise AssertionError(f"{exc}\npage problems: {problems}") from exc
            finally:
                page.screenshot(path=ARTIFACTS / f"map-{screen}.png")
        finally:
            browser.close()
    assert problems == [], "the page logged errors"


def _drive(page: Any, ids: list[str], screen: str) -> None:
    ms = SEEN_S * 1000
    # the markers: every bike known to the page, and markers or clusters drawn
    page.wait_for_function(f"window.fleetMap && window.fleetMap.vehicles.size >= {len(ids)}", timeout=ms)
    assert page.locator(".veh, .marker-cluster").count() > 0
    assert "#key=" not in page.url  # the key is taken out of the address bar
    page.wait_for_function("document.getElementById('live-status').textContent === 'live'", timeout=ms)
    # one moves: a live update changes a marker's position
    page.evaluate("window.before = Object.fromEntries([...fleetMap.vehicles].map(([id, v]) => "
                  "[id, v.marker.getLatLng().toString()]))")  # fmt: skip
    page.wait_for_function("[...fleetMap.vehicles].some(([id, v]) => v.marker.getLatLng().toString() !== before[id])",
                           timeout=ms)  # fmt: skip
    # a standing, unlocked bike, so the lock needs no wait for it to park (it may set off again: then it waits)
    bike = page.evaluate("[...fleetMap.vehicles].find(([, v]) => v.state === 'parked')?.[0] ?? null") or ids[0]
    page.fill("#find-id", bike)
    page.press("#find-id", "Enter")
    marker = page.locator(f'[data-vehicle="{bike}"]')
    marker.wait_for(state="visible", timeout=ms)
    page.wait_for_timeout(400)  # the zoom animation settles
    page.locator(f'[data-vehicle="{bike}"]').click()
    page.wait_for_function(f"document.getElementById('vehicle-id').textContent === {bike!r}", timeout=ms)
    assert page.locator("#vehicle-facts").inner_text().count("\n") >= 5
    page.locator("#lock").click()
    status = "document.getElementById('command-status').dataset.state"
    page.wait_for_function(f"['queued', 'waiting_for_park', 'sent', 'delivered', 'confirmed'].includes({status})",
                           timeout=ms)  # fmt: skip
    page.wait_for_function("document.getElementById('command-status').dataset.state === 'confirmed'", timeout=ms * 2)
    assert "lock confirmed" in page.locator("#command-status").inner_text()
    page.wait_for_function("document.querySelector('#commands li')?.textContent.startsWith('lock confirmed')",
                           timeout=ms)  # fmt: skip
    if screen == "phone":
        assert page.locator("#panel").bounding_box()["width"] <= 390  # a sheet across the screen, not a side panel
