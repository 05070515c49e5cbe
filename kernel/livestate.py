"""Last-known state of every device, kept live in Redis for the map.

A device's state is one JSON object in the hash `fleet:vehicles`. Reports are merged field by field
(a battery-only report keeps the last position), and a Lua script applies a report only when it is
at least as new as the state, so a tracker's late buffered batch never moves a vehicle backwards.
Changed states are published on `fleet:live` for live map updates.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import orjson
import redis

from kernel import keys
from kernel.records import Telemetry

VEHICLES_KEY = keys.VEHICLES
ONLINE_KEY = keys.ONLINE
LIVE_CHANNEL = keys.LIVE_CHANNEL

_FIELDS = (
    "lat", "lon", "altitude_m", "speed_kmh", "heading_deg", "accuracy_m", "fix", "satellites",
    "hdop", "battery_pct", "odometer_m", "locked",
)  # fmt: skip

# KEYS[1] vehicles hash, KEYS[2] live channel; ARGV: device, ts, json, device, ts, json, ...
_APPLY = """
local changed = {}
for i = 1, #ARGV, 3 do
  local dev, ts, patch = ARGV[i], tonumber(ARGV[i + 1]), cjson.decode(ARGV[i + 2])
  local old = redis.call('HGET', KEYS[1], dev)
  local state = patch
  if old then
    state = cjson.decode(old)
    if tonumber(state.ts) > ts then state = nil else
      for k, v in pairs(patch) do state[k] = v end
    end
  end
  if state then
    local enc = cjson.encode(state)
    redis.call('HSET', KEYS[1], dev, enc)
    changed[#changed + 1] = enc
  end
end
if #changed > 0 then
  redis.call('PUBLISH', KEYS[2], '[' .. table.concat(changed, ',') .. ']')
end
return #changed
"""


def latest_patches(records: Sequence[Telemetry], received: Sequence[datetime]) -> dict[str, dict[str, object]]:
    """Per device, the newest values of each field within this batch (pure; order-independent).

    Each device's reports are walked newest first (equal times in arrival order, as storage keeps
    the first) until every field is known. A device's reports nearly always arrive in time order,
    and then newest first is simply their reverse: the one pass that groups them also checks that,
    and only a device whose reports came out of order (or twice) is sorted. Sorting every device's
    reports cost about 0.6 µs a record; the batch often needs the walk, since a report without
    faults sends it back through older reports for them."""
    by_device: dict[str, list[int]] = {}
    unordered: set[str] = set()
    for i, record in enumerate(records):
        indexes = by_device.get(record.device_id)
        if indexes is None:
            by_device[record.device_id] = [i]
        else:
            if record.time <= records[indexes[-1]].time:
                unordered.add(record.device_id)
            indexes.append(i)
    patches: dict[str, dict[str, object]] = {}
    for device_id, indexes in by_device.items():
        if device_id in unordered:
            indexes.sort(key=lambda i: records[i].time, reverse=True)  # stable: ties keep arrival order
        else:
            indexes.reverse()
        newest = records[indexes[0]]
        patch: dict[str, object] = {
            "id": device_id,
            "ts": newest.time.timestamp(),
            "seen": received[indexes[0]].timestamp(),
            "source": str(newest.source),
        }
        missing: list[str] = [*_FIELDS, "faults"]
        for i in indexes:
            record = records[i]
            still = []
            for name in missing:
                value = getattr(record, name)
                if value is not None and value != ():
                    patch[name] = list(value) if name == "faults" else value
                else:
                    still.append(name)
            missing = still
            if not missing:
                break
        patch.setdefault("faults", [])
        patches[device_id] = patch
    return patches


class LiveState:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._apply = client.register_script(_APPLY)

    def apply(self, patches: dict[str, dict[str, object]]) -> int:
        if not patches:
            return 0
        args: list[bytes | str | float] = []
        for device_id, patch in patches.items():
            args += [device_id, patch["ts"], orjson.dumps(patch)]  # type: ignore[list-item]
        return int(self._apply(keys=[VEHICLES_KEY, LIVE_CHANNEL], args=args))

    def all(self) -> list[dict[str, object]]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(VEHICLES_KEY)
        pipe.hgetall(ONLINE_KEY)
        states, online = pipe.execute()
        result = []
        for raw in states.values():
            state = orjson.loads(raw)
            state["online"] = online.get(state["id"].encode()) == b"1"
            result.append(state)
        return result

    def get(self, device_id: str) -> dict[str, object] | None:
        raw = self._redis.hget(VEHICLES_KEY, device_id)
        if raw is None:
            return None
        state = orjson.loads(raw)
        state["online"] = self._redis.hget(ONLINE_KEY, device_id) == b"1"
        return state
