"""The `fleet` command: stack management, the services, the simulator and the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kernel.settings import Settings

app = typer.Typer(help="IoT fleet gateway and telemetry engine.", no_args_is_help=True)
stack_app = typer.Typer(help="Local Mosquitto, PostgreSQL + TimescaleDB and Redis under the state folder.")
devices_app = typer.Typer(help="Register and manage devices (database, broker credentials, gateway).")
app.add_typer(stack_app, name="stack")
app.add_typer(devices_app, name="devices")
bench_app = typer.Typer(help="Benchmarks from bench/ (run from a checkout); extra options pass through.")
app.add_typer(bench_app, name="bench")
console = Console()

StateDir = Annotated[Path | None, typer.Option("--state-dir", help="State folder (default .fleet/).")]
MetricsPort = Annotated[
    int, typer.Option("--metrics-port", help="Serve Prometheus metrics on this port (0: off).", min=0, max=65535)
]


# -- stack ----------------------------------------------------------------------------------------
@stack_app.command("install")
def stack_install(
    tests: Annotated[bool, typer.Option("--tests", help="Also what the test suite needs (chromium).")] = False,
) -> None:
    """Install the server binaries and build TimescaleDB if missing (root), else print what to run."""
    from localstack import StackError, ensure_installed

    try:
        ensure_installed(log=console.print, tests=tests)
    except StackError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


@stack_app.command("up")
def stack_up(state_dir: StateDir = None) -> None:
    """Start the servers (installing them first if needed) and apply the schema.

    Prints where each account connects, passwords redacted: they are in the credentials file.
    """
    from ingest.migrate import migrate
    from localstack import StackError, ensure_installed
    from localstack.resolve import local_stack, resolve

    settings = Settings.at(state_dir)
    try:
        if not settings.external:
            ensure_installed(log=console.print)
        endpoints = resolve(settings, start=True)
    except StackError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    applied = migrate(endpoints.database_url)
    console.print(f"schema: {len(applied)} migration(s) applied")
    for account, url in endpoints.shown().items():
        console.print(f"  {account:18} {url}", highlight=False, soft_wrap=True)
    if endpoints.local_stack:
        path = local_stack(settings).credentials_file
        console.print(
            f"passwords: {path} (mode 600); `fleet gateway`, `fleet ingest`, ... read it themselves",
            highlight=False, soft_wrap=True,
        )  # fmt: skip


@stack_app.command("down")
def stack_down(state_dir: StateDir = None) -> None:
    """Stop the local servers; no process is left behind."""
    from localstack.resolve import local_stack

    local_stack(Settings.at(state_dir)).down()
    console.print("stack stopped")


@stack_app.command("status")
def stack_status(state_dir: StateDir = None) -> None:
    from localstack.resolve import local_stack

    for name, info in local_stack(Settings.at(state_dir)).status().items():
        console.print(f"{name:10} {info}", highlight=False)


# -- services -------------------------------------------------------------------------------------
@app.command()
def migrate(state_dir: StateDir = None) -> None:
    """Apply the database schema migrations that are not applied yet."""
    from ingest.migrate import migrate as run
    from localstack.resolve import resolve

    applied = run(resolve(Settings.at(state_dir)).database_url)
    console.print(f"{len(applied)} migration(s) applied: {[m.name for m in applied]}")


@app.command()
def gateway(
    state_dir: StateDir = None,
    instance: Annotated[
        str | None, typer.Option(help="Stable id of this gateway (its broker session); default: host name.")
    ] = None,
    retire: Annotated[
        bool, typer.Option(help="Drain and delete this instance's broker session for good, then exit.")
    ] = False,
    shared: Annotated[
        bool,
        typer.Option(
            help="Share the device topics with other gateways (MQTT 5 shared subscription). Without it one "
            "gateway takes them all, which is what survives a broker restart losing nothing."
        ),
    ] = False,
    metrics_port: MetricsPort = 0,
) -> None:
    """Run a gateway process (MQTT → Redis stream). Several may run side by side with distinct ids."""
    from gateway.service import run_gateway
    from kernel import metrics
    from kernel.process import setup_logging
    from localstack.resolve import resolve

    setup_logging()
    settings = Settings.at(state_dir)
    endpoints = resolve(settings, service="gateway")
    metrics.serve(metrics_port)
    code = run_gateway(
        endpoints.mqtt_url,
        endpoints.redis_url,
        settings.stream_key,
        settings.max_payload_bytes,
        settings.future_tolerance_s,
        instance,
        retire=retire,
        shared=shared,
    )
    raise typer.Exit(code)


@app.command()
def ingest(
    state_dir: StateDir = None,
    instance: Annotated[str | None, typer.Option(help="Stable id of this worker (its consumer name).")] = None,
    metrics_port: MetricsPort = 0,
) -> None:
    """Run an ingest worker (Redis stream → TimescaleDB + live state). Several may run side by side."""
    from ingest.service import run_ingest
    from kernel import metrics
    from kernel.process import setup_logging
    from localstack.resolve import resolve

    setup_logging()
    settings = Settings.at(state_dir)
    endpoints = resolve(settings, service="ingest")
    metrics.serve(metrics_port, endpoints.redis_url, ["ingest"])
    run_ingest(
        endpoints.redis_url,
        endpoints.database_url,
        settings.stream_key,
        settings.ingest_group,
        settings.ingest_batch_entries,
        instance,
        settings.positions_max_bytes,
    )


@app.command()
def api(
    state_dir: StateDir = None,
    host: str | None = None,
    port: int | None = None,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate (chain): serve HTTPS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
) -> None:
    """Serve the operator API (HTTPS when given a certificate and key, or FLEET_API_TLS_CERT/KEY)."""
    import uvicorn

    from api.app import create_app
    from api.deps import ApiConfig
    from localstack.resolve import resolve

    settings = Settings.at(state_dir)
    cert, key = tls_cert or settings.api_tls_cert, tls_key or settings.api_tls_key
    if (cert is None) != (key is None):
        console.print("[red]HTTPS needs both a certificate and its key (--tls-cert and --tls-key)[/red]")
        raise typer.Exit(2)
    endpoints = resolve(settings, service="api")
    from subscriptions.settings import WebhookSettings

    hooks = WebhookSettings()
    config = ApiConfig(endpoints.database_url, endpoints.redis_url, endpoints.mqtt_admin_url, docs=settings.api_docs,
                       webhook_secret=hooks.shared_secret(), webhook_tolerance_s=hooks.tolerance_s,
                       mqtt_url=endpoints.mqtt_url or endpoints.mqtt_admin_url or settings.mqtt_url,
                       map_tiles_url=settings.map_tiles_url,
                       map_tiles_attribution=settings.map_tiles_attribution)  # fmt: skip
    uvicorn.run(
        create_app(config),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level="info",
        ws="websockets-sansio",  # /v1/live; uvicorn's default picks websockets' deprecated legacy API
        # compressing every client's updates separately cost more CPU than all the rest of the fan-out
        # (bench/live.py, docs/performance.md)
        ws_per_message_deflate=False,
        ssl_certfile=str(cert) if cert else None,
        ssl_keyfile=str(key) if key else None,
    )


@app.command()
def geofence(
    state_dir: StateDir = None,
    instance: Annotated[str | None, typer.Option(help="Stable worker id.")] = None,
    metrics_port: MetricsPort = 0,
) -> None:
    """Run the geofence worker (zone events, trips, utilization rollups) on committed positions."""
    from geofence.service import run_geofence
    from kernel import metrics
    from kernel.process import setup_logging
    from localstack.resolve import resolve

    setup_logging()
    settings = Settings.at(state_dir)
    endpoints = resolve(settings, service="geofence")
    metrics.serve(metrics_port, endpoints.redis_url, ["geofence"])
    run_geofence(endpoints.redis_url, endpoints.database_url, instance=instance, ingest_stream=settings.stream_key,
                 ingest_group=settings.ingest_group)  # fmt: skip


# -- devices --------------------------------------------------------------------------------------
def _registry(state_dir: Path | None):  # type: ignore[no-untyped-def]
    from localstack.resolve import resolve
    from provisioning.broker_admin import BrokerAdmin
    from provisioning.registry import DeviceRegistry

    endpoints = resolve(Settings.at(state_dir))
    if not endpoints.mqtt_admin_url:
        console.print("[red]no broker admin account: set FLEET_MQTT_ADMIN_URL[/red]")
        raise typer.Exit(1)
    return DeviceRegistry(endpoints.database_url, endpoints.redis_url, BrokerAdmin(endpoints.mqtt_admin_url))


@devices_app.command("add")
def devices_add(device_id: str, name: str = "", model: str = "generic", state_dir: StateDir = None) -> None:
    """Register a device and print its MQTT credentials (shown once)."""
    from provisioning.registry import DeviceSpec, RegistryError

    registry = _registry(state_dir)
    try:
        creds = registry.create(DeviceSpec(device_id, name, model))
    except RegistryError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    finally:
        registry.close()
    _audit_cli(state_dir, "device.create", device_id, None, {"id": device_id, "name": name, "model": model})
    console.print(f"device {creds.device_id}: username={creds.username} password={creds.password}", highlight=False)


def _audit_cli(state_dir: Path | None, action: str, target: str, before: object, after: object) -> None:
    """Writes made with the `fleet` command are audited like the API's, under `cli:<user>`."""
    from api.keystore import Actor, record
    from geofence.store import connect

    with connect(_database_url(state_dir), "fleet cli audit") as conn:
        record(conn, Actor.cli(), action, target, before, after, f"cli: fleet {action.replace('.', ' ')}")


@devices_app.command("list")
def devices_list(state_dir: StateDir = None) -> None:
    for device in _registry(state_dir).list():
        console.print(f"{device.id:24} {device.status:9} {device.model:12} {device.name}", highlight=False)


def _device_action(action: str, device_id: str, state_dir: Path | None) -> None:
    from dataclasses import asdict

    from provisioning.registry import RegistryError

    registry = _registry(state_dir)
    try:
        before = registry.get(device_id)
        getattr(registry, action)(device_id)
        after = registry.get(device_id)
    except RegistryError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    finally:
        registry.close()
    _audit_cli(state_dir, f"device.{action}", device_id, before and asdict(before), after and asdict(after))
    console.print(f"{device_id}: {action}d")


@devices_app.command("service")
def devices_service(
    device_id: str,
    status: Annotated[str, typer.Argument(help="in_service | maintenance | inactive")],
    state_dir: StateDir = None,
) -> None:
    """Set a device's service status (maintenance vehicles leave the utilization denominator)."""
    from geofence.store import UnknownDevice, set_device_service
    from localstack.resolve import resolve

    try:
        since = set_device_service(resolve(Settings.at(state_dir)).database_url, device_id, status)
    except (UnknownDevice, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    _audit_cli(state_dir, "device.service", device_id, None, {"status": status, "since": since.isoformat()})
    console.print(f"{device_id}: {status} since {since.isoformat()}")


@devices_app.command("rotate")
def devices_rotate(device_id: str, state_dir: StateDir = None) -> None:
    """New MQTT credentials for a registered device (shown once); the old password stops working."""
    from provisioning.registry import RegistryError

    registry = _registry(state_dir)
    try:
        creds = registry.rotate(device_id)
    except RegistryError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    finally:
        registry.close()
    _audit_cli(state_dir, "device.rotate", device_id, {"credentials": "previous"}, {"credentials": "rotated"})
    console.print(f"device {creds.device_id}: username={creds.username} password={creds.password}", highlight=False)


@devices_app.command("disable")
def devices_disable(device_id: str, state_dir: StateDir = None) -> None:
    _device_action("disable", device_id, state_dir)


@devices_app.command("enable")
def devices_enable(device_id: str, state_dir: StateDir = None) -> None:
    _device_action("enable", device_id, state_dir)


@devices_app.command("delete")
def devices_delete(device_id: str, state_dir: StateDir = None) -> None:
    _device_action("delete", device_id, state_dir)


# -- API keys (`fleet/keys_cli.py`) ----------------------------------------------------------------------
def _database_url(state_dir: Path | None) -> str:
    from localstack.resolve import resolve

    return resolve(Settings.at(state_dir)).database_url


def _keys_app() -> typer.Typer:
    from fleet.keys_cli import keys_app

    return keys_app


app.add_typer(_keys_app(), name="keys")


# -- simulator and demo ---------------------------------------------------------------------------
@app.command()
def simulate(
    devices: Annotated[int, typer.Option(help="Number of simulated devices.")] = 200,
    rate: Annotated[float, typer.Option(help="Reports per second per device.")] = 0.2,
    format: Annotated[str, typer.Option("--format", help="json|nmea|owntracks|mixed")] = "json",
    seed: Annotated[int, typer.Option(help="Same seed, same fleet.")] = 1,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = 60.0,
    count: Annotated[int | None, typer.Option(help="Stop after this many messages.")] = None,
    city: Annotated[str | None, typer.Option(help="City box lon_min,lat_min,lon_max,lat_max.")] = None,
    faults: Annotated[str, typer.Option(help="none | all=0.05 | malformed_json=0.01,duplicate=0.02,...")] = "none",
    offline_share: float = 0.0,
    slow_share: float = 0.0,
    drop_share: float = 0.0,
    ack_delay: Annotated[float, typer.Option(help="Seconds before a device acknowledges a command.")] = 0.2,
    prefix: str = "sim-",
    credentials: Annotated[
        Path | None, typer.Option(help="JSON file of device id → password; skips registration.")
    ] = None,
    state_dir: StateDir = None,
) -> None:
    """Run a simulated fleet through the real broker (devices are registered first)."""
    from fleet.demo import simulate as run
    from simulators.city import City
    from simulators.config import SimConfig
    from simulators.faults import FaultConfig

    try:
        config = SimConfig(
            devices=devices, rate=rate, fmt=format, seed=seed, duration_s=duration, count=count,
            city=City.parse_box(city) if city else City(), faults=FaultConfig.parse(faults),
            offline_share=offline_share, slow_share=slow_share, drop_share=drop_share,
            ack_delay_s=ack_delay, id_prefix=prefix,
        )  # fmt: skip
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    run(Settings.at(state_dir), config, console=console, credentials_file=credentials)


@app.command()
def demo(
    devices: Annotated[int, typer.Option(help="Number of simulated devices.")] = 200,
    state_dir: StateDir = None,
) -> None:
    """The whole system with a simulated fleet; Ctrl-C stops everything."""
    from fleet.demo import run_demo

    raise typer.Exit(run_demo(Settings.at(state_dir), devices=devices, console=console))


# -- benchmarks -----------------------------------------------------------------------------------
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _run_bench(name: str, args: list[str]) -> None:
    """A child process: the scripts' names are those of the packages they measure."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    if not script.exists():
        console.print(f"[red]{script} not found: benchmarks run from a source checkout[/red]")
        raise typer.Exit(1)
    raise typer.Exit(subprocess.call([sys.executable, str(script), *args]))


@bench_app.command("geofence", context_settings=_PASS_THROUGH)
def bench_geofence(ctx: typer.Context) -> None:
    """1M points against 1,000 zones: our grid index against shapely, in the same run."""
    _run_bench("geofence", ctx.args)


@bench_app.command("geofence-e2e", context_settings=_PASS_THROUGH)
def bench_geofence_e2e(ctx: typer.Context) -> None:
    """A busy city's fleet (or `--workload worst`) through the whole pipeline: ingest records/s beside
    geofence positions/s, the backlog over time, events against the pure core."""
    _run_bench("geofence_e2e", ctx.args)


@bench_app.command("ingest", context_settings=_PASS_THROUGH)
def bench_ingest(ctx: typer.Context) -> None:
    """Records/s, loss, duplicates and latency through the real broker, against bare mosquitto_sub."""
    _run_bench("ingest", ctx.args)


@bench_app.command("reliability", context_settings=_PASS_THROUGH)
def bench_reliability(ctx: typer.Context) -> None:
    """Broker restarts and kills, refused records, new devices: accepted, stored, dead-lettered, lost
    (`--write` rewrites the table in docs/reliability.md)."""
    _run_bench("reliability", ctx.args)


@bench_app.command("hostile", context_settings=_PASS_THROUGH)
def bench_hostile(ctx: typer.Context) -> None:
    """At least 100,000 generated hostile messages through the whole pipeline, accounted for."""
    _run_bench("hostile", ctx.args)


@bench_app.command("session", context_settings=_PASS_THROUGH)
def bench_session(ctx: typer.Context) -> None:
    """Records/s through the whole pipeline with our MQTT session and with paho (manual acks), and the ratio."""
    _run_bench("session", ctx.args)


@bench_app.command("api", context_settings=_PASS_THROUGH)
def bench_api(ctx: typer.Context) -> None:
    """The map API on 100,000 live vehicles: the whole fleet and 1 % bounding boxes, p50/p95."""
    _run_bench("api", ctx.args)


# -- commands (the subcommands live in fleet/commands_cli.py) --------------------------------------------
from fleet.commands_cli import app as commands_app  # noqa: E402

app.add_typer(commands_app, name="commands")


@bench_app.command("live", context_settings=_PASS_THROUGH)
def bench_live(ctx: typer.Context) -> None:
    """/v1/live fan-out: WebSocket clients (100), vehicle updates a second (10,000), the lag each client sees."""
    _run_bench("live", ctx.args)


@bench_app.command("commands", context_settings=_PASS_THROUGH)
def bench_commands(ctx: typer.Context) -> None:
    """A burst of lock commands: issue → delivered / confirmed p50 and p99, commands/s, lost."""
    _run_bench("commands", ctx.args)


# -- subscriptions: the notify service and the bulk import (fleet/notify_cli.py, import_cli.py)
from fleet.import_cli import import_file  # noqa: E402 - kept in this one block
from fleet.notify_cli import app as notify_app  # noqa: E402

app.add_typer(notify_app, name="notify")
app.command("import")(import_file)


@bench_app.command("reminders", context_settings=_PASS_THROUGH)
def bench_reminders(ctx: typer.Context) -> None:
    """Reminders for 5,000 devices of 2,000 customers: scheduled, rendered and handed to an SMTP server."""
    _run_bench("reminders", ctx.args)


# -- subscriptions and the lockout engine (fleet/subscriptions_cli.py) ------------------------------------
from fleet.subscriptions_cli import app as subscriptions_app  # noqa: E402 - kept in this one block
from fleet.subscriptions_cli import lockout  # noqa: E402

app.add_typer(subscriptions_app, name="subscriptions")
app.command("lockout")(lockout)


@bench_app.command("lockout", context_settings=_PASS_THROUGH)
def bench_lockout(ctx: typer.Context) -> None:
    """5,000 subscriptions ending within a minute: expiry → lock command issued p50/p99, missed, duplicates."""
    _run_bench("lockout", ctx.args)


if __name__ == "__main__":
    app()
