"""Device accounts at the broker, changed while it runs (Mosquitto's dynamic-security control topic).

Each device gets its own account and role (see provisioning/dynsec.py for why and for the ACLs).
Commands are sent in batches, one control message holding a list of commands, and every response is
checked: a command the broker refused raises `BrokerAdminError` naming the device and the reason.
Registering, disabling, re-enabling and deleting take effect at once; disabling or deleting also
disconnects the device if it is online.

Use it as a context manager to keep one admin connection for many calls; outside a `with` block each
call opens and closes its own connection, so a forgotten `close()` leaks nothing.
"""

from __future__ import annotations

import itertools
import json
import ssl
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt

from kernel.settings import MqttTarget
from provisioning import dynsec
from provisioning.credentials import DeviceCredentials

TIMEOUT_S = 10.0
# Mosquitto 2.0's plugin rewrites its whole JSON file after every command (measured: 2,000 devices in
# 250-device messages took 95 s; each command costs about 19 µs per registered device), so a big
# message keeps the broker busy for seconds. Small messages and a long keepalive keep the admin
# connection alive while the broker works; for thousands of devices on the local stack use
# `Stack.register_devices`, which writes the file while the broker is stopped.
BULK_DEVICES_PER_MESSAGE = 50
KEEPALIVE_S = 600
SECONDS_PER_COMMAND = 0.5
_client_ids = itertools.count()

Command = dict[str, Any]
Response = dict[str, Any]

__all__ = ["BrokerAdmin", "BrokerAdminError", "DeviceCredentials"]


class BrokerAdminError(RuntimeError):
    """The broker could not be reached, or refused an admin command (the message says which and why)."""


class _Connection:
    """One admin MQTT connection: sends control messages and collects the responses by correlation id."""

    def __init__(
        self, host: str, port: int, username: str, password: str, timeout_s: float, tls: ssl.SSLContext | None
    ) -> None:
        self.timeout_s = timeout_s
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"fleet-broker-admin-{threading.get_native_id()}-{next(_client_ids)}",
            protocol=mqtt.MQTTv311,
        )
        self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set_context(tls)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.ready = threading.Event()
        self.error: str | None = None
        self.replies: dict[str, list[Response]] = {}
        self.replied = threading.Condition()
        self.sequence = itertools.count()
        try:
            self.client.connect(host, port, keepalive=KEEPALIVE_S)
        except OSError as exc:
            raise BrokerAdminError(f"cannot reach the broker at {host}:{port}: {exc}") from None
        self.client.loop_start()
        if not self.ready.wait(timeout_s) or self.error:
            self.close()
            raise BrokerAdminError(f"admin connection to {host}:{port} failed: {self.error or 'timed out'}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.error = f"broker said {reason}"
            self.ready.set()
            return
        client.subscribe(dynsec.RESPONSE_TOPIC, qos=1)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if any(r.is_failure for r in reasons):
            self.error = "not allowed to read the dynamic-security responses (is this the admin account?)"
        self.ready.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            responses = json.loads(message.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            return
        with self.replied:
            for response in responses:
                batch = str(response.get("correlationData", "")).split(":", 1)[0]
                self.replies.setdefault(batch, []).append(response)
            self.replied.notify_all()

    def send(self, commands: Sequence[Command]) -> list[tuple[Command, Response]]:
        batch = str(next(self.sequence))
        tagged = [{**command, "correlationData": f"{batch}:{i}"} for i, command in enumerate(commands)]
        info = self.client.publish(dynsec.CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerAdminError(f"could not send admin commands: {mqtt.error_string(info.rc)}")
        with self.replied:
            if not self.replied.wait_for(
                lambda: len(self.replies.get(batch, ())) >= len(tagged),
                timeout=self.timeout_s + SECONDS_PER_COMMAND * len(tagged),
            ):
                raise BrokerAdminError(f"the broker did not answer {len(tagged)} admin commands in time")
            responses = self.replies.pop(batch)
        responses.sort(key=lambda r: int(str(r["correlationData"]).split(":", 1)[1]))
        return list(zip(commands, responses, strict=True))


class BrokerAdmin:
    """Device accounts through the admin account's URL, e.g. `StackUrls.mqtt_admin_url`."""

    def __init__(self, url: str | None, *, timeout_s: float = TIMEOUT_S) -> None:
        try:
            target = MqttTarget.parse(url or "")
            tls = target.ssl_context()
        except ValueError as exc:
            raise BrokerAdminError(str(exc)) from None
        if not target.username or not target.password:
            raise BrokerAdminError("the broker admin URL must look like mqtt[s]://user:password@host:port")
        self._target = (target.host, target.port, target.username, target.password, timeout_s, tls)
        self._connection: _Connection | None = None

    def __enter__(self) -> BrokerAdmin:
        self.connect()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def connect(self) -> None:
        if self._connection is None:
            self._connection = _Connection(*self._target)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @contextmanager
    def _session(self) -> Iterator[_Connection]:
        if self._connection is not None:
            yield self._connection
            return
        self._connection = _Connection(*self._target)
        try:
            yield self._connection
        finally:
            self.close()

    # ------------------------------------------------------------ requests

    def execute(self, commands: Sequence[Command], *, tolerate: Sequence[str] = ()) -> list[Response]:
        """Send commands in one control message; raise on any error not containing one of `tolerate`."""
        with self._session() as connection:
            answered = connection.send(commands)
        failures = [
            (command, str(r["error"]))
            for command, r in answered
            if r.get("error") and not any(t in str(r["error"]) for t in tolerate)
        ]
        if failures:
            raise BrokerAdminError(_describe(failures))
        return [response for _, response in answered]

    def add_device(self, device_id: str, password: str) -> None:
        """Register a device, or give an already registered one this password (and enable it)."""
        self.add_devices([DeviceCredentials(device_id, password)])

    def add_devices(
        self,
        devices: Iterable[DeviceCredentials | tuple[str, str]],
        per_message: int = BULK_DEVICES_PER_MESSAGE,
    ) -> int:
        """Register or re-key many devices, `per_message` per control message; returns how many."""
        done = 0
        with self._session():
            for chunk in _chunks((_as_credentials(d) for d in devices), per_message):
                commands = [c for d in chunk for c in _checked(dynsec.add_device_commands, d.device_id, d.password)]
                responses = self.execute(commands, tolerate=("already exists",))
                answered = zip(commands, responses, strict=True)
                existing = {c["username"] for c, r in answered if r.get("error") and "username" in c}
                self._refuse_non_devices(sorted(existing))
                rekey = [
                    command
                    for d in chunk
                    if d.device_id in existing
                    for command in (
                        *dynsec.set_password_commands(d.device_id, d.password),
                        *dynsec.enable_device_commands(d.device_id),
                    )
                ]
                if rekey:
                    self.execute(rekey)
                done += len(chunk)
        return done

    def _refuse_non_devices(self, usernames: Sequence[str]) -> None:
        """Re-keying must never reach a service account that happens to share a name with a device id."""
        if not usernames:
            return
        responses = self.execute([{"command": "getClient", "username": name} for name in usernames])
        others = [
            name
            for name, response in zip(usernames, responses, strict=True)
            if dynsec.device_role(name) not in {r["rolename"] for r in response["data"]["client"].get("roles", [])}
        ]
        if others:
            raise BrokerAdminError(f"not device accounts, left unchanged: {', '.join(others)}")

    def disable_device(self, device_id: str) -> None:
        """Refuse the device's connections from now on and disconnect it if online."""
        self.execute(_checked(dynsec.disable_device_commands, device_id))

    def enable_device(self, device_id: str) -> None:
        self.execute(_checked(dynsec.enable_device_commands, device_id))

    def delete_device(self, device_id: str) -> None:
        """Remove the device's account and role (disconnecting it); a device already gone is no error."""
        self.execute(_checked(dynsec.delete_device_commands, device_id), tolerate=("not found",))

    def set_password(self, username: str, password: str) -> None:
        self.execute(_checked(dynsec.set_password_commands, username, password))

    def get_client(self, username: str) -> dict[str, Any] | None:
        """The broker's view of an account (roles, `disabled`), or None when there is no such account."""
        (response,) = self.execute([{"command": "getClient", "username": username}], tolerate=("not found",))
        if response.get("error"):
            return None
        client: dict[str, Any] = response["data"]["client"]
        return client


def _as_credentials(item: DeviceCredentials | tuple[str, str]) -> DeviceCredentials:
    if isinstance(item, DeviceCredentials):
        return item
    try:
        device_id, password = item
    except (TypeError, ValueError):
        # the type only: the value may hold a password
        raise BrokerAdminError(
            f"expected (device_id, password) or DeviceCredentials, got {type(item).__name__}"
        ) from None
    return DeviceCredentials(device_id, password)


def _checked(build: Any, *args: str) -> list[Command]:
    try:
        commands: list[Command] = build(*args)
    except ValueError as exc:
        raise BrokerAdminError(str(exc)) from None
    return commands


def _describe(failures: list[tuple[Command, str]]) -> str:
    shown = [
        f"{command['command']} {command.get('username') or command.get('rolename')}: {error}"
        for command, error in failures[:10]
    ]
    more = f" (and {len(failures) - 10} more)" if len(failures) > 10 else ""
    return "the broker refused: " + "; ".join(shown) + more


def _chunks(items: Iterable[DeviceCredentials], size: int) -> Iterator[tuple[DeviceCredentials, ...]]:
    if size < 1:
        raise BrokerAdminError(f"per_message must be at least 1, got {size}")
    iterator = iter(items)
    while chunk := tuple(itertools.islice(iterator, size)):
        yield chunk
