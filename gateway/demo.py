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
from pathlib import Path

import orjson
from rich.console import Console

from gateway.settings import MqttTarget, Settings

DEMO_RATE = 0.5  # messages per second per simulated device
STOP_GRACE_S = 10.0


def _fleet_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


def register_simulated(settings: Settings, devices: int, prefix: str) -> dict[str, str]:
    """Register (or re-key) the simulated devices; returns device id → password."""
    from gateway.broker_admin import BrokerAdmin
    from gateway.config import local_stack, resolve
    from gateway.registry import DeviceRegistry, DeviceSpec

    endpoints = resolve(settings)
    if not endpoints.mqtt_admin_url:
        raise SystemExit("no broker admin account: set FLEET_MQTT_ADMIN_URL")
    bulk = local_stack(settings).register_devices if endpoints.local_stack and not settings.mqtt_url else None
    registry = DeviceRegistry(
        endpoints.database_url, endpoints.redis_url, BrokerAdmin(endpoints.mqtt_admin_url), broker_bulk=bulk
    )
    try:
        specs = [DeviceSpec(f"{prefix}{i:05d}", model="sim-ebike") for i in range(devices)]
        return {c.device_id: c.password for c in registry.register(specs)}
    finally:
        registry.close()


def simulate(
    settings: Settings,
    *,
    devices: int,
    rate: float,
    fmt: str,
    seed: int,
    duration: float | None,
    count: int | None,
    prefix: str,
    console: Console,
) -> None:
    from gateway.config import resolve
    from simulators.fleet import SimConfig, run_fleet
    from simulators.progress import ProgressLine

    credentials = register_simulated(settings, devices, prefix)
    target = MqttTarget.parse(resolve(settings).mqtt_url)
    config = SimConfig(devices=devices, rate=rate, format=fmt, seed=seed, duration_s=duration, count=count,
                       id_prefix=prefix)  # fmt: skip
    with ProgressLine(console) as progress:
        summary = asyncio.run(
            run_fleet(
                config,
                mqtt_host=target.host,
                mqtt_port=target.port,
                credentials=credentials,
                on_progress=progress.update,
            )
        )
    console.print(summary.describe() if hasattr(summary, "describe") else summary)


def run_demo(settings: Settings, *, devices: int, console: Console) -> int:
    from gateway.config import local_stack, resolve
    from gateway.stack import ensure_installed
    from ingest.migrate import migrate

    if not settings.external:
        ensure_installed(log=console.print)
    endpoints = resolve(settings, start=True)
    migrate(endpoints.database_url)
    console.print(f"registering {devices} simulated devices…")
    creds_file = Path(settings.state_dir) / "demo-devices.json"
    creds_file.write_bytes(orjson.dumps(register_simulated(settings, devices, "sim-")))
    creds_file.chmod(0o600)
    env = {**os.environ, **endpoints.env(), "FLEET_STATE_DIR": str(settings.state_dir)}
    logs = Path(settings.state_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        for name, args in (("gateway", ["gateway"]), ("ingest", ["ingest"]), ("api", ["api"])):
            children[name] = _spawn(name, args, env, logs)
        children["simulator"] = _spawn(
            "simulator",
            ["simulate", "--devices", str(devices), "--rate", str(DEMO_RATE), "--format", "mixed",
             "--duration", str(7 * 24 * 3600), "--credentials", str(creds_file)],
            env, logs,
        )  # fmt: skip
        url = f"http://{settings.api_host}:{settings.api_port}"
        console.print(f"[bold green]Fleet is up[/]: {devices} simulated devices.")
        console.print(f"  map API:  {url}/v1/vehicles   (GeoJSON)")
        console.print(f"  health:   {url}/healthz")
        console.print(f"  logs:     {logs}/")
        console.print("Press Ctrl-C to stop.")
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
