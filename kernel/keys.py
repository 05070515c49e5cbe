"""Every Redis key and channel name the services use, in one place.

The services share one Redis, and the local stack gives each of them an ACL user that may touch only
its own keys (localstack/redis_acl.py builds those rules from the names here), so a key used
anywhere must be named here first.
"""

from __future__ import annotations

INGEST_STREAM = "fleet:ingest"  # gateway → ingest (msgpack batches); the default of FLEET_STREAM_KEY
POSITIONS_STREAM = "fleet:positions"  # ingest → geofence: each committed stream entry
CMD_ACKS_STREAM = "fleet:cmd-acks"  # gateway → commands: devices' command acknowledgements
QUARANTINE_STREAM = "fleet:quarantine"  # stream entries a consumer failed on too often, kept whole

VEHICLES = "fleet:vehicles"  # hash: device id → last-known state (JSON)
ONLINE = "fleet:online"  # hash: device id → "1"/"0" from the status topic
COUNTERS = "fleet:counters"  # hash: pipeline counters for /healthz
DEVICES = "fleet:devices"  # set: device ids the gateway admits
DEVICES_VERSION = "fleet:devices:version"  # counter bumped on every change of DEVICES
GEOFENCE_STATE = "fleet:geofence:state"  # hash: device id → zone state
GEOFENCE_TRIPS = "fleet:geofence:trips"  # hash: device id → open-trip cursor

LIVE_CHANNEL = "fleet:live"  # every change of a vehicle's live state
EVENTS_CHANNEL = "fleet:events"  # every zone event

# The command service (next milestone): the API wakes it after creating or cancelling a command,
# and it announces every stored command transition for live views.
CMD_WAKE_CHANNEL = "fleet:cmd-wake"
COMMANDS_CHANNEL = "fleet:commands"
