"""Run a simulated fleet through a real broker: `run_fleet(config, ...) -> SimSummary`.

Each device is one asyncio task with its own MQTT connection (see `simulators.device`). This module
owns what they share: the simulated clock, the reconnect ramp, the `--count` budget, the storm
signal, the counters (`simulators.run`) and the stop that always comes (duration or count).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import resource
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from simulators.config import SimConfig, device_id, role
from simulators.device import DeviceSim
from simulators.run import FleetRun, Progress, SimSummary

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0
STOP_GRACE_S = 15.0  # how long devices get to say `offline` and disconnect cleanly at the end
FDS_PER_DEVICE = 1  # aiomqtt drives paho without its wake-up socket pair: one socket each


class FleetError(RuntimeError):
    """The fleet could not run at all (for example: the process may not open enough sockets)."""


async def run_fleet(
    config: SimConfig,
    *,
    mqtt_host: str,
    mqtt_port: int,
    credentials: Mapping[str, str],
    on_progress: Callable[[Progress], None] | None = None,
    tls: ssl.SSLContext | None = None,
) -> SimSummary:
    """Run the fleet until `duration_s` has passed or `count` messages are out, whichever is first.

    `credentials` maps device id to MQTT password; ids missing from it connect without a password
    (fine for a broker that allows anonymous clients, refused and retried otherwise). `tls`: every
    device connects over TLS with this context.
    """
    raise_open_files(config.devices * FDS_PER_DEVICE + 256)
    loop = asyncio.get_running_loop()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(functools.partial(_quiet_closed_socket_races, previous_handler))
    try:
        return await _run(config, mqtt_host, mqtt_port, credentials, on_progress, tls)
    finally:
        loop.set_exception_handler(previous_handler)


async def _run(
    config: SimConfig,
    mqtt_host: str,
    mqtt_port: int,
    credentials: Mapping[str, str],
    on_progress: Callable[[Progress], None] | None,
    tls: ssl.SSLContext | None,
) -> SimSummary:
    run = FleetRun(config, mqtt_host, mqtt_port, tls)
    run.devices = [
        DeviceSim(run, role(config, i), credentials.get(device_id(config, i))) for i in range(config.devices)
    ]
    tasks = [asyncio.create_task(d.run_forever(), name=d.role.device_id) for d in run.devices]
    watcher = asyncio.create_task(_watch(run, on_progress))
    try:
        done = asyncio.gather(*tasks)
        await _until_stopped(run, done)
    finally:
        watcher.cancel()
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, watcher, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                run.counters.errors += 1
                log.warning("device task failed: %r", result)
    return run.summary()


async def _until_stopped(run: FleetRun, devices_done: asyncio.Future[list[None]]) -> None:
    """Wait for the duration or the count, then give devices a grace period to sign off."""
    deadline = run.config.duration_s
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(deadline):
            await run.stopped.wait()
    run.stop()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STOP_GRACE_S):
            await asyncio.shield(devices_done)


async def _watch(run: FleetRun, on_progress: Callable[[Progress], None] | None) -> None:
    """Progress reports and reconnect storms, once a second."""
    storm_p = run.config.faults.reconnect_storm
    rng = np.random.default_rng([run.config.seed, 2**32 - 1])
    last_sent, last_t = 0, time.time()
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        now = time.time()
        if on_progress is not None:
            on_progress(run.progress(last_sent, now - last_t))
        last_sent, last_t = run.counters.sent, now
        if storm_p and rng.random() < storm_p and not run.stopping:
            log.info("reconnect storm")
            run.counters.ledger.faults["reconnect_storm"] += 1
            run.storm()


def _quiet_closed_socket_races(
    previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None,
    loop: asyncio.AbstractEventLoop,
    context: dict[str, Any],
) -> None:
    """aiomqtt schedules `add_writer` for a socket that paho may close first (a DISCONNECT is written
    at once, then the socket closed). With thousands of devices signing off together a few hundred
    such callbacks fail with EBADF; they are harmless, so they go to DEBUG, everything else as usual."""
    exc = context.get("exception")
    if isinstance(exc, OSError) and exc.errno == errno.EBADF and "add_writer" in repr(context.get("handle")):
        log.debug("late add_writer on a closed MQTT socket ignored")
        return
    if previous is not None:
        previous(loop, context)
    else:
        loop.default_exception_handler(context)


def raise_open_files(needed: int) -> int:
    """Lift the soft open-files limit towards the hard one; 10,000 devices need 10,000 sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        raise FleetError(f"{needed} open files needed, the hard limit is {hard}: raise it (ulimit -Hn)")
    return target
