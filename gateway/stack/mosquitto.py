"""Mosquitto 2 with the dynamic-security plugin, on a loopback port, persistence under the state folder.

Accounts and ACLs live in the plugin's JSON file, written once before the first start (the plugin keeps
it up to date afterwards, so later starts must not overwrite devices registered at run time).
"""

from __future__ import annotations

import json
import os
import socket
import struct

from gateway.stack import dynsec
from gateway.stack.errors import StackError
from gateway.stack.model import LOOPBACK, SERVICE_USER
from gateway.stack.server import Log, Server

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


def render_config(port: int, plugin: str, dynsec_file: str, data_dir: str) -> str:
    return f"""# written by `fleet stack up` on every start; edit gateway/stack/mosquitto.py instead
per_listener_settings false
allow_anonymous false
listener {port} {LOOPBACK}
plugin {plugin}
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

    def field(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("!H", len(raw)) + raw

    body = field("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 30)
    body += field(client_id) + field(username) + field(password)
    length, encoded = len(body), b""
    while True:
        length, digit = divmod(length, 128)
        encoded += bytes([digit | (0x80 if length else 0)])
        if not length:
            break
    return b"\x10" + encoded + body


def connack_code(port: int, username: str, password: str, timeout_s: float = 2.0) -> int | None:
    """The broker's CONNACK return code for these credentials, or None when nothing answers yet."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout_s) as sock:
            sock.sendall(connect_packet(f"fleet-stack-probe-{os.getpid()}", username, password))
            reply = b""
            while len(reply) < 4:
                chunk = sock.recv(4 - len(reply))
                if not chunk:
                    return None
                reply += chunk
            if reply[0] == 0x20 and reply[3] == 0:
                sock.sendall(b"\xe0\x00")
            return reply[3] if reply[0] == 0x20 else None
    except OSError:
        return None


class Mosquitto(Server):
    name = "mqtt"
    account = "mosquitto"
    nofile = OPEN_FILES
    nofile_needed = OPEN_FILES_NEEDED

    @property
    def folder(self) -> str:
        return "mosquitto"

    @property
    def dynsec_file(self) -> str:
        return str(self.home / "dynamic-security.json")

    def prepare(self, log: Log) -> None:
        self.own_folder(self.home)
        self.own_folder(self.home / "data")
        if not os.path.exists(self.dynsec_file):
            log("writing the broker's accounts (fleet-service, fleet-commands, fleet-admin)")
            config = dynsec.initial_config(self.credentials, lambda: os.urandom(dynsec.SALT_BYTES))
            self.write_private(self.home / "dynamic-security.json", json.dumps(config, indent=1))
        self.write_private(
            self.home / "mosquitto.conf",
            render_config(self.port, str(self.binaries.dynsec_plugin), self.dynsec_file, str(self.home / "data")),
        )

    def command(self) -> list[str]:
        return [str(self.binaries.mosquitto), "-c", str(self.home / "mosquitto.conf")]

    def answers(self) -> bool:
        code = connack_code(self.port, SERVICE_USER, self.credentials.mqtt_service)
        if code not in (None, 0):
            raise StackError(
                f"the broker refuses the fleet-service account (CONNACK {code}); "
                f"{self.dynsec_file} does not match {self.state_dir / 'credentials.json'} — "
                "delete the state folder to start afresh"
            )
        return code == 0
