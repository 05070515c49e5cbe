"""Redis ACL users of the local stack: each service may run only its own commands on its own keys.

Pure: builds the `user ...` lines of redis.conf from the key names in `kernel.keys` and the kept
passwords. Passwords go into the file as SHA-256 digests (`#<hex>`), so redis.conf holds no secret
that would let anyone log in. The commands and keys per service are read off the code that uses
them (docs/stack.md has the table); a service reaching for anything else gets a NOPERM error, which
is the point. A new key or command in a service needs its line here.

`default` stays the administrator (every command and key, with its own password): migrations and
tests that empty the database use it; no service does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from kernel import keys
from kernel.services import redis_user

# Besides AUTH and HELLO, which every user may run: the health-check PING. (redis-py also sends
# CLIENT SETINFO, which Redis 7.0 does not know and an ACL rule may not name; redis-py ignores its
# refusal.)
_HANDSHAKE = ("+ping",)
# A consumer-group reader (kernel.streams.GroupReader): create the group, read, claim, ack, delete.
# XINFO GROUPS: the stage's own lag, for its metrics.
_GROUP_READER = ("+xgroup|create", "+xreadgroup", "+xautoclaim", "+xack", "+xdel", "+xpending", "+xclaim", "+xrange",
                 "+xadd", "+xinfo|groups")  # fmt: skip
# and what it cannot process after a few deliveries goes to the quarantine stream
_QUARANTINE = (f"~{keys.QUARANTINE_STREAM}",)
_TRANSACTION = ("+multi", "+exec", "+discard")

# service → (key patterns, channels, commands). `~k` read and write, `%R~k` read only.
SERVICE_RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "gateway": (
        (f"~{keys.INGEST_STREAM}", f"~{keys.CMD_ACKS_STREAM}", f"~{keys.ONLINE}", f"~{keys.COUNTERS}",
         f"%R~{keys.DEVICES}", f"%R~{keys.DEVICES_VERSION}"),
        (),
        ("+xadd", "+hset", "+hincrby", "+get", "+smembers", "+smismember"),
    ),
    "ingest": (
        # live state is merged by a Lua script (HGET, HSET, PUBLISH inside it, checked like any command),
        # which is handed the live channel's name among its KEYS: that name needs a key pattern too
        (f"~{keys.INGEST_STREAM}", f"~{keys.POSITIONS_STREAM}", f"~{keys.VEHICLES}", f"~{keys.COUNTERS}",
         f"~{keys.LIVE_CHANNEL}", *_QUARANTINE),
        (keys.LIVE_CHANNEL,),
        (*_GROUP_READER, *_TRANSACTION, "+xadd", "+hincrby", "+evalsha", "+script|load",
         "+hget", "+hset", "+publish", "+xlen", "+xtrim", "+xinfo|groups", "+script|exists"),
    ),
    "geofence": (
        # reads the ingest group's pending summary (XPENDING) to take positions in ingest's order
        (f"~{keys.POSITIONS_STREAM}", f"~{keys.GEOFENCE_STATE}", f"~{keys.GEOFENCE_TRIPS}", f"~{keys.COUNTERS}",
         f"%R~{keys.INGEST_STREAM}", *_QUARANTINE),
        (keys.EVENTS_CHANNEL,),
        (*_GROUP_READER, *_TRANSACTION, "+hmget", "+hset", "+hincrby", "+publish", "+evalsha", "+script|load",
         "+script|exists"),
    ),
    "commands": (
        # `fleet commands send|cancel` issue through the same code as the API (HMGET of live state,
        # a MULTI'd wake-up); theft suspicions go out on the geofence's events channel
        (f"~{keys.CMD_ACKS_STREAM}", f"%R~{keys.VEHICLES}", f"%R~{keys.ONLINE}", f"~{keys.COUNTERS}", *_QUARANTINE),
        (keys.LIVE_CHANNEL, keys.CMD_WAKE_CHANNEL, keys.COMMANDS_CHANNEL, keys.EVENTS_CHANNEL),
        (*_GROUP_READER, *_TRANSACTION, "+hvals", "+hgetall", "+hmget", "+hget", "+subscribe", "+unsubscribe",
         "+publish", "+hincrby"),
    ),
    "lockout": (
        # issues locks and unlocks through commands/issue.py: HMGET of live state (the park rule, and
        # whether a vehicle moves) and the command service's wake-up; subscription changes reach it
        # by PostgreSQL NOTIFY, not Redis
        (f"%R~{keys.VEHICLES}",),
        (keys.CMD_WAKE_CHANNEL,),
        ("+hmget", "+publish"),
    ),
    "api": (
        # live map and health read; the device registry admits and evicts devices for the gateway;
        # /readyz and the metrics read each stage's stream lag (XINFO GROUPS); the live-fleet
        # snapshot follows fleet:live; /v1/live subscribes to vehicle states, zone events and command
        # transitions
        (f"%R~{keys.VEHICLES}", f"%R~{keys.ONLINE}", f"%R~{keys.COUNTERS}", f"~{keys.DEVICES}",
         f"~{keys.DEVICES_VERSION}", f"%R~{keys.INGEST_STREAM}", f"%R~{keys.POSITIONS_STREAM}",
         f"%R~{keys.CMD_ACKS_STREAM}"),
        (keys.CMD_WAKE_CHANNEL, keys.LIVE_CHANNEL, keys.EVENTS_CHANNEL, keys.COMMANDS_CHANNEL),
        (*_TRANSACTION, "+hgetall", "+hget", "+hmget", "+sadd", "+srem", "+del", "+incrby", "+publish",
         "+xinfo|groups", "+xlen", "+subscribe", "+unsubscribe"),
    ),
}  # fmt: skip


def password_digest(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def user_line(name: str, password: str, key_patterns: tuple[str, ...], channels: tuple[str, ...],
              commands: tuple[str, ...]) -> str:  # fmt: skip
    """One `user` directive: reset first, so nothing is inherited from Redis's defaults."""
    parts = ["user", name, "reset", "on", f"#{password_digest(password)}", *key_patterns]
    parts += [f"&{c}" for c in channels] or ["resetchannels"]
    parts += ["-@all", *_HANDSHAKE, *commands]
    return " ".join(parts)


def service_users(service_passwords: Mapping[str, str]) -> list[list[str]]:
    """Per service: its user name and rules, as `ACL SETUSER` takes them."""
    users = []
    for service, password in sorted(service_passwords.items()):
        patterns, channels, commands = SERVICE_RULES[service]
        users.append(user_line(redis_user(service), password, patterns, channels, commands).split()[1:])
    return users


def acl_config(admin_password: str, service_passwords: Mapping[str, str]) -> str:
    """The `user` lines for redis.conf: the administrator (`default`) and one user per service."""
    lines = [f"user default reset on #{password_digest(admin_password)} ~* &* +@all"]
    lines += [" ".join(["user", *user]) for user in service_users(service_passwords)]
    return "\n".join(lines) + "\n"
