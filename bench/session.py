"""The gateway's MQTT client, measured where it matters: records/s through the whole pipeline
(publishers → Mosquitto → gateway → Redis stream → ingest → TimescaleDB) with our bulk MQTT 5 session
(`kernel/mqtt_session.py`) and with paho-mqtt 2 using manual acknowledgement (`bench/paho_session.py`),
the same gateway loop around each.

    fleet bench session                          # 100,000 records per run, one run each
    fleet bench session --records 300000 --rounds 3

Runs alternate between the two clients (bulk, paho, bulk, ...) so that other load on the machine hits
both alike; the report gives each run and the medians, and the ratio bulk / paho. The project's rule:
if paho (or aiomqtt) comes within 20 % of the hand-written session, the gateway uses the library.
Servers: a private stack in a temporary folder, or FLEET_DATABASE_URL / FLEET_MQTT_URL / FLEET_REDIS_URL.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE.parent), str(_HERE)]

from ingest_load import Plan  # noqa: E402


def _load_pipeline() -> ModuleType:
    """bench/ingest.py by its path: its name is taken by the `ingest` package."""
    spec = importlib.util.spec_from_file_location("bench_ingest", _HERE / "ingest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_ingest"] = module
    spec.loader.exec_module(module)
    return module


pipeline = _load_pipeline()

KINDS = ("bulk", "paho")
THRESHOLD = 0.8  # paho at 80 % or more of the bulk session's rate: use paho


def serve_gateway(kind: str, mqtt_url: str | None) -> int:
    """A gateway process like `fleet gateway`, on the given MQTT client (and URL, e.g. mqtts://)."""
    from gateway.service import Gateway, gateway_client_id
    from kernel.mqtt_session import MqttSession
    from kernel.process import quiet_collector, setup_logging, stop_on_signals
    from kernel.settings import MqttTarget, Settings
    from localstack.resolve import resolve

    setup_logging()
    settings = Settings()
    endpoints = resolve(settings)
    if kind == "paho":
        from paho_session import PahoSession

        factory: type = PahoSession
    else:
        factory = MqttSession
    stop = stop_on_signals()
    quiet_collector()
    target = MqttTarget.parse(mqtt_url or endpoints.mqtt_url)
    gateway = Gateway(target, endpoints.redis_url, stream_key=settings.stream_key,
                      max_payload=settings.max_payload_bytes, future_tolerance_s=settings.future_tolerance_s,
                      client_id=gateway_client_id(), session_factory=factory)  # fmt: skip
    gateway.run(stop)
    return 0


def one_run(kind: str, args: argparse.Namespace, servers: object, logs: Path) -> tuple[float, float, int]:
    """(records/s first publish → last commit, steady records/s, records lost) for one client."""
    command = [sys.executable, str(Path(__file__).resolve()), "--serve-gateway", kind]
    if args.tls:
        stack = getattr(servers, "stack", None)
        if stack is None:
            raise SystemExit("--tls needs the private stack (its TLS listener and CA)")
        command += ["--gateway-url", stack.mqtts(getattr(servers, "mqtt_url"))]  # noqa: B009
    pipeline.COMMANDS["gateway"] = command
    plan = Plan(f"s{secrets.token_hex(3)}-", args.records, 1, 1, args.devices, args.publishers, 0.0, args.window,
                10, float(int(time.time()) - 3600))  # fmt: skip
    out = pipeline.run_pipeline(plan, servers, 1, 1, logs, drain=False)
    stored = min(out.distinct, plan.records)
    rate = stored / (out.committed_at - out.start) if out.committed_at > out.start else 0.0
    accepted = sum(r.acked for r in out.results)
    return rate, out.steady_rate, accepted - out.distinct


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1, help="runs per client (alternating)")
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--window", type=int, default=4000)
    parser.add_argument("--tls", action="store_true", help="the gateways connect over TLS (publishers stay plain)")
    parser.add_argument("--serve-gateway", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--gateway-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_gateway:
        return serve_gateway(args.serve_gateway, args.gateway_url)
    workdir = Path(tempfile.mkdtemp(prefix="fleet-bench-session-"))
    (workdir / "logs").mkdir()
    servers = pipeline.start_servers(workdir)
    results: dict[str, list[tuple[float, float, int]]] = {k: [] for k in KINDS}
    try:
        busy = pipeline.machine_busy()
        for _ in range(args.rounds):
            for kind in KINDS:
                results[kind].append(one_run(kind, args, servers, workdir / "logs"))
                print(f"  {kind:5} {results[kind][-1][0]:10,.0f} records/s", flush=True)
    finally:
        if servers.stack is not None:
            servers.stack.down()  # type: ignore[attr-defined]
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nsession benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  {os.cpu_count()} cores, "
          f"other load before the runs {busy:.0%} of the cores")  # fmt: skip
    print(f"  {args.records:,} single-record QoS 1 messages per run, {args.devices} devices, {args.publishers} "
          f"publishers flat out, 1 gateway{' over TLS' if args.tls else ''}, 1 ingest worker, "
          f"{args.rounds} run(s) per client")  # fmt: skip
    medians = {}
    for kind in KINDS:
        runs = results[kind]
        medians[kind] = statistics.median(r[0] for r in runs)
        each = ", ".join(f"{r[0]:,.0f}" for r in runs)
        steady = statistics.median(r[1] for r in runs)
        lost = sum(r[2] for r in runs)
        print(f"  {kind:5} median {medians[kind]:10,.0f} records/s (runs: {each}; steady {steady:,.0f}; lost {lost})")
    ratio = medians["bulk"] / medians["paho"] if medians["paho"] else float("inf")
    print(f"  ratio bulk / paho: {ratio:.2f}")
    verdict = "paho is within 20 %: use it" if medians["paho"] >= THRESHOLD * medians["bulk"] else (
        "paho is more than 20 % slower: keep the bulk session")  # fmt: skip
    print(f"  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
