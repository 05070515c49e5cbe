"""The hand-off to the geofence stage: committed entries into `fleet:positions`, bounded, and what the
bound drops counted.

The stream is bounded (about `POSITIONS_MAX_BYTES`) so a geofence stage that stops or falls behind
cannot fill Redis's memory. Before, XADD's own MAXLEN trimmed the oldest entries and nothing said so:
zone events, trips and utilization then lacked data without a trace. Now one Lua script adds the
entries, and when the stream is over its bound it trims the oldest and counts them: the geofence
worker deletes every entry it has acknowledged, so any entry still there when it is trimmed was never
processed (not read yet, or read and not acknowledged). Each entry carries its record count (field
`n`) so the script can count records, not only entries, without decoding them, and its id in
`fleet:ingest` (field `s`), so the geofence worker can take entries in the order ingest read them
although several ingest workers commit in any order (`geofence/handoff_order.py`).

Counted in `fleet:counters` (what /healthz shows and a metrics exporter can read):
`positions_dropped` (records) and `positions_dropped_entries`. Only while the geofence consumer
group exists: a deployment that runs no geofence stage trims the stream as a matter of course, and
that is not a loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from kernel import keys

POSITIONS_STREAM = keys.POSITIONS_STREAM
POSITIONS_MAX_BYTES = 512 * 2**20  # what fleet:positions keeps while no geofence worker reads it
GEOFENCE_GROUP = "geofence"  # geofence.service.GROUP (the stages do not import each other)
COUNT_FIELD = b"n"  # the script writes it, `kernel.wire.FIELD` (b"b") and b"s" literally
SOURCE_FIELD = b"s"  # the entry's id in fleet:ingest: geofence.handoff_order restores ingest's order
DROPPED, DROPPED_ENTRIES = "positions_dropped", "positions_dropped_entries"

# KEYS: stream, counters. ARGV: max entries, group, then (entry, record count, source id) triples.
# Returns {records dropped, entries dropped}.
_ADD = """
for i = 3, #ARGV, 3 do
  redis.call('XADD', KEYS[1], '*', 'b', ARGV[i], 'n', ARGV[i + 1], 's', ARGV[i + 2])
end
local excess = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[1])
if excess <= 0 then return {0, 0} end
local reader = false
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  for j = 1, #g, 2 do
    if g[j] == 'name' and g[j + 1] == ARGV[2] then reader = true end
  end
end
local records = 0
if reader then
  for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', excess)) do
    local f = e[2]
    for j = 1, #f, 2 do
      if f[j] == 'n' then records = records + tonumber(f[j + 1]) end
    end
  end
end
redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[1])
if not reader then return {0, 0} end
redis.call('HINCRBY', KEYS[2], 'positions_dropped', records)
redis.call('HINCRBY', KEYS[2], 'positions_dropped_entries', excess)
return {records, excess}
"""


def positions_maxlen(entry_bytes: int, max_bytes: int = POSITIONS_MAX_BYTES) -> int:
    """The length bound for entries this size, so that the stream holds about `max_bytes` (about 4
    million records by default) whatever the size of its entries. Redis bounds a stream by entries
    only, and an entry holds one gateway batch: a few records at a trickle, up to 10,000 under full
    load, so a fixed count (200,000 entries was the bound) allowed anything from a few MB to tens of
    GB. At least one entry, so a small configured bound still holds."""
    return max(1, max_bytes // max(entry_bytes, 1))


class PositionsHandoff:
    """Adds committed entries to `fleet:positions` (in the caller's pipeline, so the hand-off and the
    acknowledgement of the ingest stream stay one transaction)."""

    def __init__(self, client: redis.Redis, max_bytes: int = POSITIONS_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._add = client.register_script(_ADD)

    def add(self, pipe: redis.client.Pipeline, entries: Sequence[tuple[bytes, int, bytes]]) -> None:
        """Queue the script for `entries` (raw entry, record count, its id in fleet:ingest); its reply
        is (records, entries) dropped by the bound, in the pipeline's results."""
        size = sum(len(e[0]) for e in entries) // len(entries)
        args: list[bytes | int | str] = [positions_maxlen(size, self.max_bytes), GEOFENCE_GROUP]
        for raw, count, source in entries:
            args += [raw, count, source]
        self._add(keys=[POSITIONS_STREAM, keys.COUNTERS], args=args, client=pipe)
