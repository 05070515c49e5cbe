"""Mosquitto 2 with the dynamic-security plugin, on a loopback port, persistence under the state folder.

Accounts and ACLs live in the plugin's JSON file, written once before the first start (the plugin keeps
it up to date afterwards, so later starts must not overwrite devices registered at run time).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kernel import mqtt_codec as codec
from kernel.services import ADMIN_USER, COMMANDS_USER, SERVICE_USER
from localstack import tls
from localstack.errors import StackError
from localstack.install import Binaries
from localstack.model import LOOPBACK, StackSecrets
from localstack.server import Log, Server
from localstack.tls import TlsFiles
from provisioning import dynsec

# The gateway's persistent session must ride out a restart at full rate; and Mosquitto 2.0.11 counts
# a busy session's queue as far longer than it is: with 200,000 it dropped messages for a gateway
# whose real backlog stayed under 30,000 (publish → gateway p99 0.6 s) once about 300,000 messages
# had passed through the session flat out (docs/performance.md, "Broker behaviour").
MAX_QUEUED_MESSAGES = 2_000_000
MAX_INFLIGHT_MESSAGES = 1_000
MAX_PACKET_BYTES = 4 * 1024 * 1024  # bounds device abuse; bulk admin messages stay well below
# Mosquitto keeps sessions, subscriptions and queued messages in memory and writes them all to its
# persistence file every AUTOSAVE_INTERVAL_S (and on a clean exit). A kill -9 loses what changed since:
# sessions and subscriptions made since (the gateway's plain subscription, which is what carries
# messages over a restart, is on disk within this time of the first start), and messages queued for
# a gateway that is away or behind (docs/reliability.md measures it). Saves are by time, not by
# change count: counted changes include every queued message, so under load the whole file would be
# rewritten many times a second.
AUTOSAVE_INTERVAL_S = 10
OPEN_FILES = 131_072  # one descriptor per connection: 10,000+ devices plus headroom
OPEN_FILES_NEEDED = 12_000  # 10,000 devices and the services


def render_config(
    port: int | None, plugin: str, dynsec_file: str, data_dir: str, tls_port: int | None = None,
    tls: TlsFiles | None = None,
) -> str:  # fmt: skip
    """Listeners: plain MQTT on `port` (None: off) and MQTT over TLS on `tls_port` with `tls`'s files."""
    listeners = f"listener {port} {LOOPBACK}\n" if port is not None else ""
    if tls_port is not None and tls is not None:
        listeners += (
            f"listener {tls_port} {LOOPBACK}\ncertfile {tls.server_cert}\nkeyfile {tls.server_key}\n"
            "tls_version tlsv1.2\n"  # the oldest accepted; TLS 1.3 is negotiated when both sides have it
        )
    return f"""# written by `fleet stack up` on every start; edit localstack/mosquitto.py instead
per_listener_settings false
allow_anonymous false
{listeners}plugin {plugin}
plugin_opt_config_file {dynsec_file}
persistence true
persistence_location {data_dir}/
autosave_interval {AUTOSAVE_INTERVAL_S}
autosave_on_changes false
persistent_client_expiration 7d
max_connections -1
max_queued_messages {MAX_QUEUED_MESSAGES}
max_inflight_messages {MAX_INFLIGHT_MESSAGES}
max_packet_size {MAX_PACKET_BYTES}
connection_messages false
log_dest stderr
log_type error
log_type warning
log_type notice
log_timestamp_format %Y-%m-%dT%H:%M:%S
"""


def connect_packet(client_id: str, username: str, password: str) -> bytes:
    """An MQTT 3.1.1 CONNECT with clean session and credentials."""
    return codec.connect_packet(client_id, username, password, keepalive=30, clean=True, version=codec.V311)


def connack_code(
    port: int, username: str, password: str, timeout_s: float = 2.0, tls: ssl.SSLContext | None = None
) -> int | None:
    """The broker's CONNACK return code for these credentials, or None when nothing answers yet."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout_s) as raw:
            if tls is None:
                return _probe(raw, username, password)
            with tls.wrap_socket(raw, server_hostname=LOOPBACK) as sock:
                return _probe(sock, username, password)
    except OSError:
        return None


def _probe(sock: socket.socket, username: str, password: str) -> int | None:
    sock.sendall(connect_packet(f"fleet-stack-probe-{os.getpid()}", username, password))
    reply = b""
    while len(reply) < 4:
        chunk = sock.recv(4 - len(reply))
        if not chunk:
            return None
        reply += chunk
    if reply[0] == 0x20 and reply[3] == 0:
        sock.sendall(codec.DISCONNECT_PACKET)
    return reply[3] if reply[0] == 0x20 else None


class Mosquitto(Server):
    name = "mqtt"
    account = "mosquitto"
    nofile = OPEN_FILES
    nofile_needed = OPEN_FILES_NEEDED

    def __init__(
        self, state_dir: Path, port: int, binaries: Binaries, credentials: StackSecrets, *,
        tls_port: int | None = None, plain: bool = True,
    ) -> None:  # fmt: skip
        """`tls_port`: the TLS listener (None: none); `plain`: whether `port` listens without TLS."""
        super().__init__(state_dir, port, binaries, credentials)
        self.tls_port = tls_port
        self.plain = plain

    @property
    def folder(self) -> str:
        return "mosquitto"

    @property
    def dynsec_file(self) -> str:
        return str(self.home / "dynamic-security.json")

    @property
    def tls(self) -> TlsFiles:
        return tls.tls_files(self.state_dir)

    def prepare(self, log: Log) -> None:
        self.own_folder(self.home)
        self.own_folder(self.home / "data")
        if not os.path.exists(self.dynsec_file):
            log("writing the broker's accounts (fleet-service, fleet-commands, fleet-admin)")
            config = initial_config(self.credentials, lambda: os.urandom(dynsec.SALT_BYTES))
            self.write_private(self.home / "dynamic-security.json", json.dumps(config, indent=1))
        if self.tls_port is not None:
            tls.ensure(self.tls, self.account, dt.datetime.now(dt.UTC), log)
        plain = self.port if self.plain else None
        config = render_config(plain, str(self.binaries.dynsec_plugin), self.dynsec_file, str(self.home / "data"),
                               self.tls_port, self.tls)  # fmt: skip
        self.write_private(self.home / "mosquitto.conf", config)

    def command(self) -> list[str]:
        return [str(self.binaries.mosquitto), "-c", str(self.home / "mosquitto.conf")]

    def answers(self) -> bool:
        """Every listener answers with a CONNACK (the TLS one checked against the stack's CA)."""
        probes: list[tuple[int, ssl.SSLContext | None]] = []
        if self.plain or self.tls_port is None:
            probes.append((self.port, None))
        if self.tls_port is not None:
            probes.append((self.tls_port, ssl.create_default_context(cafile=str(self.tls.ca_cert))))
        for port, context in probes:
            code = connack_code(port, SERVICE_USER, self.credentials.mqtt_service, tls=context)
            if code not in (None, 0):
                raise StackError(
                    f"the broker refuses the fleet-service account (CONNACK {code}); "
                    f"{self.dynsec_file} does not match {self.state_dir / 'credentials.json'} — "
                    "delete the state folder to start afresh"
                )
            if code is None:
                return False
        return True


def initial_config(credentials: StackSecrets, salt: Callable[[], bytes]) -> dict[str, Any]:
    """The plugin's JSON for a new broker: three service accounts and nothing allowed by default."""
    accounts = (
        (SERVICE_USER, credentials.mqtt_service, dynsec.SERVICE_ROLE, dynsec.service_acls()),
        (COMMANDS_USER, credentials.mqtt_commands, dynsec.COMMANDS_ROLE, dynsec.commands_acls()),
        (ADMIN_USER, credentials.mqtt_admin, dynsec.ADMIN_ROLE, dynsec.admin_acls()),
    )
    return {
        "clients": [
            {"username": user, "roles": [{"rolename": role}], **dynsec.hashed_password(password, salt())}
            for user, password, role, _ in accounts
        ],
        "roles": [{"rolename": role, "acls": acls} for _, _, role, acls in accounts],
        "groups": [],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
    }
