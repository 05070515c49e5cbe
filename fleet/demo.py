"""`fleet demo` and `fleet simulate`: the whole system on one machine, supervised from one process.

Each service runs as its own child process (exactly as in production, where they scale apart); the
demo watches them, and on Ctrl-C or any child's death stops them all, then the local stack.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from rich.console import Console

from kernel.secretfile import write_private
from kernel.settings import MqttTarget, Settings

if TYPE_CHECKING:
    from kernel.endpoints import Endpoints
    from simulators.config import SimConfig
    from simulators.run import SimSummary

DEMO_RATE = 0.5  # messages per second per simulated device
STOP_GRACE_S = 10.0
DEMO_DURATION_S = 7 * 24 * 3600  # the simulator always has a bound; the demo's is a week
DEMO_CREDENTIALS = "demo-devices.json"
DEMO_KEY_NAME = "demo"


def _fleet_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fleet.cli", *args]


def register_simulated(settings: Settings, ids: list[str]) -> dict[str, str]:
    """Register (or re-key) simulated devices; returns device id → password."""
    from localstack.resolve import local_stack, resolve
    from provisioning.broker_admin import BrokerAdmin
    from provisioning.registry import DeviceRegistry, DeviceSpec

    endpoints = resolve(settings)
    if not endpoints.mqtt_admin_url:
        raise SystemExit("no broker admin account: set FLEET_MQTT_ADMIN_URL")
    bulk = local_stack(settings).register_devices if endpoints.local_stack and not settings.mqtt_url else None
    registry = DeviceRegistry(
        endpoints.database_url, endpoints.redis_url, BrokerAdmin(endpoints.mqtt_admin_url), broker_bulk=bulk
    )
    try:
        specs = [DeviceSpec(device_id, model="sim-ebike") for device_id in ids]
        return {c.device_id: c.password for c in registry.register(specs)}
    finally:
        registry.close()


def simulate(
    settings: Settings, config: SimConfig, *, console: Console, credentials_file: Path | None = None
) -> SimSummary:
    """Register the simulated devices (unless their credentials are given) and run the fleet."""
    from localstack.resolve import resolve
    from simulators.config import device_ids
    from simulators.fleet import run_fleet
    from simulators.present import live_progress, summary_table

    if credentials_file is not None:
        credentials = orjson.loads(credentials_file.read_bytes())
    else:
        credentials = register_simulated(settings, device_ids(config))
    target = MqttTarget.parse(settings.mqtt_url or resolve(settings).mqtt_url)  # only its address is used
    with live_progress(console) as show:
        summary = asyncio.run(
            run_fleet(
                config,
                mqtt_host=target.host,
                mqtt_port=target.port,
                credentials=credentials,
                on_progress=show,
                tls=target.ssl_context(),
            )
        )
    console.print(summary_table(summary))
    return summary


def run_demo(settings: Settings, *, devices: int, console: Console) -> int:
    from localstack import ensure_installed
    from localstack.resolve import local_stack, resolve

    if not settings.external:
        ensure_installed(log=console.print)
    endpoints = resolve(settings, start=True)
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        logs, ends = _prepare(settings, endpoints, devices, console)
        key = demo_key(endpoints.database_url)
        for name, args in _services(settings, devices):
            children[name] = _spawn(name, args, _child_env(endpoints, name, settings), logs)
        _announce(settings, devices, logs, key, console, ends)
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    console.print(f"[red]{name} exited with {child.returncode}; see {logs}/{name}.log[/]")
                    stopping = True
            time.sleep(0.5)
        return 0 if all(c.poll() is None for c in children.values()) else 1
    finally:
        console.print("stopping…")
        _stop_all(children)
        if endpoints.local_stack:
            local_stack(settings).down()
        console.print("stopped.")


def _prepare(
    settings: Settings, endpoints: Endpoints, devices: int, console: Console
) -> tuple[Path, dict[str, datetime]]:
    """Schema, the simulated fleet's accounts (written once, in bulk), the log folder."""
    from ingest.migrate import migrate
    from simulators.config import SimConfig, device_ids

    migrate(endpoints.database_url)
    added = demo_zones(endpoints.database_url)
    console.print(f"demo zones: {added} added")
    console.print(f"registering {devices} simulated devices…")
    credentials = register_simulated(settings, device_ids(SimConfig(devices=devices)))
    write_private(Path(settings.state_dir) / DEMO_CREDENTIALS, orjson.dumps(credentials))
    ends = _demo_subscriptions(endpoints, devices, console)
    logs = Path(settings.state_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs, ends


def _demo_subscriptions(endpoints: Endpoints, devices: int, console: Console) -> dict[str, datetime]:
    """Customers and subscriptions for the simulated fleet; the JSON bike's and two more end soon."""
    from simulators.config import SimConfig, device_ids
    from subscriptions.demo import seed_demo

    ids = device_ids(SimConfig(devices=devices))
    bike = _json_bike(devices)
    ending = [bike, *[d for d in ids if d != bike][:2]]
    ends = seed_demo(endpoints.database_url, ids, ending, datetime.now(UTC))
    console.print(f"demo subscriptions: {len(ids)}, {len(ends)} ending during the demo")
    return ends


def demo_key(database_url: str) -> str:
    """A fresh admin key named `demo` for this run; the previous run's demo keys are revoked, so
    keys printed by old runs stop working rather than pile up."""
    from api.keys import Role
    from api.keystore import Actor, create_key, list_keys, revoke_key
    from geofence.store import connect

    actor = Actor(None, "fleet demo", None)
    with connect(database_url, "fleet demo") as conn:
        for old in list_keys(conn, include_revoked=False):
            if old.name == DEMO_KEY_NAME:
                revoke_key(conn, old.id, actor, "fleet demo")
        _, token = create_key(conn, DEMO_KEY_NAME, Role.ADMIN, actor, "fleet demo")
    return token


def demo_zones(database_url: str) -> int:
    """A service area over the simulated city and a few zones inside it, so events flow at once.
    Zones already there (a second run, or the operator's own edits) are left alone."""
    from geofence.store import ZoneExists, connect, insert_zone
    from geofence.zones import parse_zone
    from simulators.city import City

    city = City()
    lon_c, lat_c = (city.lon_min + city.lon_max) / 2, (city.lat_min + city.lat_max) / 2

    def box(lon0: float, lat0: float, lon1: float, lat1: float) -> dict[str, object]:
        ring = [[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]
        return {"type": "Polygon", "coordinates": [ring]}

    zones = [
        parse_zone(box(city.lon_min, city.lat_min, city.lon_max, city.lat_max), id="demo-service-area",
                   kind="service_area", name="Service area"),
        parse_zone(box(lon_c - 0.01, lat_c - 0.006, lon_c + 0.01, lat_c + 0.006), id="demo-slow-centre",
                   kind="slow", speed_limit_kmh=15.0, name="Centre: 15 km/h"),
        parse_zone(box(lon_c + 0.03, lat_c - 0.01, lon_c + 0.045, lat_c), id="demo-no-parking",
                   kind="no_parking", name="Station forecourt"),
        parse_zone(box(lon_c - 0.05, lat_c + 0.02, lon_c - 0.035, lat_c + 0.03), id="demo-no-ride",
                   kind="no_ride", name="Park"),
    ]  # fmt: skip
    added = 0
    with connect(database_url, "fleet demo") as conn:
        for zone in zones:
            try:
                insert_zone(conn, zone)
                added += 1
            except ZoneExists:
                pass
    return added


def _services(settings: Settings, devices: int) -> list[tuple[str, list[str]]]:
    creds_file = str(Path(settings.state_dir) / DEMO_CREDENTIALS)
    simulate = ["simulate", "--devices", str(devices), "--rate", str(DEMO_RATE), "--format", "mixed",
                "--duration", str(DEMO_DURATION_S), "--credentials", creds_file]  # fmt: skip
    return [
        (
            "gateway",
            [
                "gateway",
            ],
        ),
        ("ingest", ["ingest"]),
        ("geofence", ["geofence", "--instance", "demo"]),
        ("commands", ["commands", "serve", "--instance", "demo"]),
        ("lockout", ["lockout"]),
        ("api", ["api"]),
        ("simulator", simulate),
    ]


def _child_env(endpoints: Endpoints, name: str, settings: Settings) -> dict[str, str]:
    """Each service process gets its own accounts and no other's; the simulator (whose devices log in
    with their own passwords) only the broker's address."""
    if name == "simulator":
        target = MqttTarget.parse(endpoints.mqtt_url)
        env = endpoints.service_env("gateway", os.environ)
        env.pop("FLEET_REDIS_URL", None)
        env["FLEET_MQTT_URL"] = (
            f"mqtts://{target.host}:{target.port}?cafile={target.ca_file}" if target.tls
            else f"mqtt://{target.host}:{target.port}"
        )  # fmt: skip
    else:
        env = endpoints.service_env(name, os.environ)
    if name in ("lockout", "api"):  # the demo's shortened notice period (said on screen)
        from subscriptions.demo import DEMO_NOTICE_HOURS

        env.setdefault("FLEET_LOCKOUT_NOTICE_HOURS", DEMO_NOTICE_HOURS)
    return {**env, "FLEET_STATE_DIR": str(settings.state_dir)}


def _announce(
    settings: Settings, devices: int, logs: Path, key: str, console: Console, ends: dict[str, datetime]
) -> None:
    scheme = "https" if settings.api_tls_cert and settings.api_tls_key else "http"
    url = f"{scheme}://{settings.api_host}:{settings.api_port}"
    console.print(f"[bold green]Fleet is up[/]: {devices} simulated devices.")
    console.print(f"  map:      {map_url(url, key)}", highlight=False, soft_wrap=True)
    console.print("            (open it, click a bike, lock it; the key stays in that browser)")
    console.print(f"  API key:  {key}   (admin; shown once, revoked by the next demo)", highlight=False)
    console.print(f"  map API:  {url}/v1/vehicles   (GeoJSON)")
    console.print(f"  zones:    {url}/v1/zones   events: {url}/v1/events   utilization: {url}/v1/utilization")
    console.print(f"  try:      curl -H 'Authorization: Bearer {key}' {url}/v1/vehicles", highlight=False)
    console.print(f"  docs:     {url}/docs   health: {url}/healthz   ready: {url}/readyz")
    bike = _json_bike(devices)
    console.print(f"  commands: fleet commands send {bike} lock --reason payment_overdue   (waits until it parks)")
    console.print("            fleet commands show ID   ·   fleet commands list   ·   docs/commands.md")
    _announce_subscriptions(ends.get(bike), bike, console)
    console.print(f"  logs:     {logs}/")
    console.print("Press Ctrl-C to stop.")


def _announce_subscriptions(end: datetime | None, bike: str, console: Console) -> None:
    from subscriptions.demo import DEMO_NOTICE_HOURS

    if end is None:
        return
    minutes = max(0.0, (end - datetime.now(UTC)).total_seconds() / 60)
    console.print(f"  lockout:  {bike}'s subscription ends at {end:%H:%M:%S} UTC (in {minutes:.0f} min): watch it lock")
    console.print(f"            fleet commands list --device {bike}   ·   fleet subscriptions list --ending-within 1")
    console.print(f"            then unlock it by renewing: fleet subscriptions renew {bike}")
    notice_min = float(DEMO_NOTICE_HOURS) * 60
    console.print(f"            [yellow]demo settings: notice period shortened to {notice_min:.0f} min (default 72 h by"
                  " email and SMS), notices marked sent at start[/]   ·   docs/subscriptions.md")  # fmt: skip


def map_url(api_url: str, key: str) -> str:
    """The map page with the key in the fragment: a browser never sends a fragment to the server (so it
    is in no access log), and the page moves it into its own storage and out of the address bar."""
    return f"{api_url}/map#key={key}"


def _json_bike(devices: int) -> str:
    """A simulated bike that reports JSON, the one format with a `locked` field to confirm a lock by."""
    from simulators.config import SimConfig, role
    from simulators.encode import Format

    config = SimConfig(devices=devices, fmt="mixed")
    roles = (role(config, i) for i in range(devices))
    return next((r.device_id for r in roles if r.fmt is Format.JSON), role(config, 0).device_id)


def _spawn(name: str, args: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    with open(logs / f"{name}.log", "ab") as out:
        return subprocess.Popen(_fleet_cmd(*args), env=env, stdout=out, stderr=subprocess.STDOUT)


def _stop_all(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children.values():
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
