"""The device registry: one place that keeps the database, the broker and the gateway in agreement.

Registering a device writes its row, creates its broker account (effective at once, no broker
restart) and adds it to the set the gateway admits. DeviceCredentials are generated here and returned once;
the broker stores only a salted hash.

`create` refuses an id that exists: taking over a registered id would lock the real device out and
let the caller publish as it. Issuing new credentials to a registered device is `rotate`, its own
action. `register` is the bulk path of the simulators and the demo, which re-key their own devices on
every run. Ids of the broker's service accounts (and the `fleet-` prefix the fleet's own clients use)
are refused before anything is written, so a refused id never leaves a row behind.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
import redis

from kernel import keys
from provisioning.broker_admin import BrokerAdmin
from provisioning.credentials import DeviceCredentials
from provisioning.dynsec import check_device_id

BrokerBulk = Callable[[list[DeviceCredentials]], object]
BULK_THRESHOLD = 50  # above this, a bulk writer (if given) beats one broker command per device

DEVICES_KEY = keys.DEVICES
VERSION_KEY = keys.DEVICES_VERSION


class RegistryError(ValueError):
    """A request the registry refuses (bad or reserved id); the API turns it into a 422."""


class DeviceExists(RegistryError):
    """The id is registered already (409): re-keying it is `rotate`."""


class UnknownDevice(RegistryError):
    """No device has this id (404)."""


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    id: str
    name: str = ""
    model: str = "generic"
    password: str | None = None  # None: generate one


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    name: str
    model: str
    status: str


class DeviceRegistry:
    def __init__(
        self, database_url: str, redis_url: str, broker: BrokerAdmin, *, broker_bulk: BrokerBulk | None = None
    ) -> None:
        self._database_url = database_url
        self._redis = redis.Redis.from_url(redis_url)
        self._broker = broker
        # Mosquitto's dynamic security rewrites its file per command (about 50 ms each with thousands of
        # accounts), so the local stack registers large fleets by writing the file once instead.
        self._broker_bulk = broker_bulk

    def close(self) -> None:
        self._redis.close()

    def create(self, spec: DeviceSpec) -> DeviceCredentials:
        """Register one new device; `DeviceExists` if its id is taken. If the broker refuses the
        account, the row is removed again, so a failed registration leaves nothing behind."""
        _check_ids([spec])
        creds = DeviceCredentials(spec.id, spec.password or secrets.token_urlsafe(18))
        with psycopg.connect(self._database_url) as conn:
            inserted = conn.execute(
                "INSERT INTO devices (id, name, model) VALUES (%s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
                (spec.id, spec.name, spec.model),
            ).fetchone()
        if inserted is None:
            raise DeviceExists(f"device {spec.id!r} is registered already (new credentials: rotate)")
        try:
            self._broker.add_devices([creds])
        except BaseException:
            with psycopg.connect(self._database_url) as conn:
                conn.execute("DELETE FROM devices WHERE id = %s", (spec.id,))
            raise
        self._admit([spec.id])
        return creds

    def rotate(self, device_id: str) -> DeviceCredentials:
        """New credentials for a registered device; the old password stops working at once. A
        disabled device stays disabled."""
        _check_ids([DeviceSpec(device_id)])
        if self.get(device_id) is None:
            raise UnknownDevice(f"no device {device_id!r}")
        creds = DeviceCredentials(device_id, secrets.token_urlsafe(18))
        self._broker.set_password(device_id, creds.password)
        return creds

    def get(self, device_id: str) -> Device | None:
        with psycopg.connect(self._database_url) as conn:
            row = conn.execute("SELECT id, name, model, status FROM devices WHERE id = %s", (device_id,)).fetchone()
        return Device(*row) if row else None

    def register(self, specs: Sequence[DeviceSpec]) -> list[DeviceCredentials]:
        """Create or re-key devices in bulk (thousands per call for simulators); idempotent per id."""
        _check_ids(specs)
        creds = [DeviceCredentials(s.id, s.password or secrets.token_urlsafe(18)) for s in specs]
        with psycopg.connect(self._database_url) as conn, conn.cursor() as cur:
            try:
                cur.executemany(
                    "INSERT INTO devices (id, name, model) VALUES (%s, %s, %s)"
                    " ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, model = EXCLUDED.model,"
                    " status = 'active', updated_at = now()",
                    [(s.id, s.name, s.model) for s in specs],
                )
            except psycopg.errors.CheckViolation as exc:
                raise RegistryError(f"invalid device id: {exc.diag.message_primary}") from None
        accounts = creds
        if self._broker_bulk is not None and len(accounts) > BULK_THRESHOLD:
            self._broker_bulk(accounts)
        else:
            self._broker.add_devices(accounts)
        self._admit([c.device_id for c in creds])
        return creds

    def disable(self, device_id: str) -> None:
        self._set_status(device_id, "disabled")
        self._broker.disable_device(device_id)
        self._evict([device_id])

    def enable(self, device_id: str) -> None:
        self._set_status(device_id, "active")
        self._broker.enable_device(device_id)
        self._admit([device_id])

    def delete(self, device_id: str) -> None:
        with psycopg.connect(self._database_url) as conn:
            if conn.execute("DELETE FROM devices WHERE id = %s", (device_id,)).rowcount == 0:
                raise UnknownDevice(f"no device {device_id!r}")
        try:
            check_device_id(device_id)
        except ValueError:
            # A row under a service account's name (left by releases that did not check): removing
            # the row is all there is to do; the broker account is not a device's and stays.
            self._evict([device_id])
            return
        self._broker.delete_device(device_id)
        self._evict([device_id])

    def list(self) -> list[Device]:
        with psycopg.connect(self._database_url) as conn:
            rows = conn.execute("SELECT id, name, model, status FROM devices ORDER BY id").fetchall()
        return [Device(*row) for row in rows]

    def sync_gateway(self) -> int:
        """Rebuild the gateway's admitted set from the database (after a Redis loss)."""
        with psycopg.connect(self._database_url) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM devices WHERE status = 'active'")]
        pipe = self._redis.pipeline()
        pipe.delete(DEVICES_KEY)
        if ids:
            pipe.sadd(DEVICES_KEY, *ids)
        pipe.incr(VERSION_KEY)
        pipe.execute()
        return len(ids)

    def _set_status(self, device_id: str, status: str) -> None:
        with psycopg.connect(self._database_url) as conn:
            updated = conn.execute(
                "UPDATE devices SET status = %s, updated_at = now() WHERE id = %s", (status, device_id)
            ).rowcount
        if updated == 0:
            raise UnknownDevice(f"no device {device_id!r}")

    def _admit(self, ids: Sequence[str]) -> None:
        pipe = self._redis.pipeline()
        for start in range(0, len(ids), 5000):
            pipe.sadd(DEVICES_KEY, *ids[start : start + 5000])
        pipe.incr(VERSION_KEY)
        pipe.execute()

    def _evict(self, ids: Sequence[str]) -> None:
        pipe = self._redis.pipeline()
        pipe.srem(DEVICES_KEY, *ids)
        pipe.incr(VERSION_KEY)
        pipe.execute()


def _check_ids(specs: Sequence[DeviceSpec]) -> None:
    for spec in specs:
        try:
            check_device_id(spec.id)
        except ValueError as exc:
            raise RegistryError(str(exc)) from None
