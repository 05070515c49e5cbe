"""What each `/v1/live` client is sent (pure): the fan-out's filtering and coalescing.

One Redis subscriber feeds every client (`api.live`). What it reads in one tick is parsed once into
a `Tick`: the newest position of each vehicle that moved (as ready-encoded JSON), the zone events and
the command transitions. Each client's `ClientFeed` takes from a tick what lies in its bounding box
and keeps it until the client's socket is free:

- positions are **coalesced**: one entry per vehicle, the newest wins, so a client that reads slowly
  gets the latest state of each vehicle instead of a growing queue (memory bounded by the fleet);
- a vehicle that leaves the box is sent once more (its position outside), so the client can move or
  drop its marker instead of leaving it at the edge: "left" means its position at the tick before was
  in the box, which numpy tests for every client at once per tick, with no per-client memory of
  what it was sent (the builder remembers each vehicle's last position: memory bounded by the fleet);
- zone events (in the box) and command transitions (for every vehicle: an operator follows a command
  from the vehicle's panel even when the map has moved on) are kept in order in a bounded queue; when
  it overflows the oldest go, and the next message says how many were dropped.

Never imports asyncio or redis: the shell decides when to tick and when a socket is free.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

MAX_EVENTS = 1000  # zone events and command transitions held for one client before the oldest go
MAX_HELD_TICKS = 8  # a client's unsent ticks kept as they are; beyond, folded to one state per vehicle
_NUMBER = (float, int)
_DROP = object()


@dataclass(frozen=True, slots=True)
class Box:
    """A WGS 84 bounding box, west/south/east/north in degrees. `west > east` crosses the antimeridian."""

    west: float
    south: float
    east: float
    north: float

    def __post_init__(self) -> None:
        for name in ("west", "east"):
            if not -180.0 <= getattr(self, name) <= 180.0:
                raise ValueError(f"{name} must be within -180..180")
        for name in ("south", "north"):
            if not -90.0 <= getattr(self, name) <= 90.0:
                raise ValueError(f"{name} must be within -90..90")
        if self.south > self.north:
            raise ValueError("south must not be above north")

    def contains(self, lon: float, lat: float) -> bool:
        if not self.south <= lat <= self.north:
            return False
        if self.west <= self.east:
            return self.west <= lon <= self.east
        return lon >= self.west or lon <= self.east

    def mask(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """`contains` over arrays: one vectorised test per client per tick."""
        inside_lat = (lat >= self.south) & (lat <= self.north)
        if self.west <= self.east:
            return inside_lat & (lon >= self.west) & (lon <= self.east)
        return inside_lat & ((lon >= self.west) | (lon <= self.east))


WORLD = Box(-180.0, -90.0, 180.0, 90.0)


def parse_box(value: object) -> Box:
    """`[west, south, east, north]` from a client message; ValueError on anything else."""
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise ValueError("bbox must be [west, south, east, north]")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) for v in value):
        raise ValueError("bbox values must be finite numbers")
    west, south, east, north = (float(v) for v in value)
    return Box(west, south, east, north)


@dataclass(frozen=True, slots=True)
class Tick:
    """One tick's updates, parsed and encoded once for every client."""

    # numpy object arrays, so a client's share is one fancy index: ids[chosen], encoded[chosen]
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    lon: np.ndarray = field(default_factory=lambda: np.empty(0))
    lat: np.ndarray = field(default_factory=lambda: np.empty(0))
    encoded: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))  # one JSON object per id
    # where each vehicle was at the tick before (NaN: not seen before), to tell who left a box
    prev_lon: np.ndarray = field(default_factory=lambda: np.empty(0))
    prev_lat: np.ndarray = field(default_factory=lambda: np.empty(0))
    events: tuple[tuple[float, float, bytes], ...] = ()  # zone events: lon, lat, JSON object
    commands: tuple[bytes, ...] = ()  # command transitions, JSON objects

    def __len__(self) -> int:
        return len(self.ids) + len(self.events) + len(self.commands)


def vehicle_message(state: Mapping[str, Any]) -> bytes | None:
    """The map's view of one live state (what a marker needs), or None without a position. Values are
    passed as stored (the subscriber encodes every update of the fleet: this is its hot path)."""
    lat, lon, device_id = state.get("lat"), state.get("lon"), state.get("id")
    if type(lat) not in _NUMBER or type(lon) not in _NUMBER or type(device_id) is not str:
        return None
    faults = state.get("faults")
    get = state.get
    return orjson.dumps(
        {"id": device_id, "lon": lon, "lat": lat, "ts": get("ts"), "speed_kmh": get("speed_kmh"),
         "heading_deg": get("heading_deg"), "battery_pct": get("battery_pct"), "locked": get("locked"),
         "faults": faults if type(faults) is list else []}  # Lua's cjson turns [] into {}
    )  # fmt: skip


def choose(boxes: Sequence[Box], tick: Tick) -> list[np.ndarray]:
    """Each box's share of a tick (indexes into it): the vehicles in the box now, and those that were
    in it at the tick before and are gone. One broadcast test of every box against every vehicle."""
    if not boxes:
        return []
    west, south, east, north = (np.array([getattr(b, side) for b in boxes])[:, None]
                                for side in ("west", "south", "east", "north"))  # fmt: skip
    plain = west <= east

    def inside(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        lon_in = np.where(plain, (lon >= west) & (lon <= east), (lon >= west) | (lon <= east))
        return lon_in & (lat >= south) & (lat <= north)

    hits = inside(tick.lon, tick.lat) | inside(tick.prev_lon, tick.prev_lat)
    return [np.flatnonzero(row) for row in hits]


class TickBuilder:
    """Collects what the subscriber reads between two ticks; a vehicle reported twice keeps its newest."""

    def __init__(self) -> None:
        self._vehicles: dict[str, tuple[float, float, bytes]] = {}
        self._events: list[tuple[float, float, bytes]] = []
        self._commands: list[bytes] = []
        self._last: dict[str, tuple[float, float]] = {}  # every vehicle's position at the last tick
        self.malformed = 0  # messages that were not what their channel carries (counted, skipped)

    def add_states(self, payload: bytes) -> None:
        """A `fleet:live` message: a JSON array of live states (ingest publishes one per batch)."""
        states = self._load(payload)
        if not isinstance(states, list):
            self.malformed += states is not _DROP
            return
        for state in states:
            encoded = vehicle_message(state) if isinstance(state, dict) else None
            if encoded is None:
                continue
            self._vehicles.pop(state["id"], None)  # re-inserted last: the dict keeps arrival order
            self._vehicles[state["id"]] = (float(state["lon"]), float(state["lat"]), encoded)

    def add_event(self, payload: bytes) -> None:
        """A `fleet:events` message: one zone event (or theft suspicion) as a JSON object."""
        event = self._load(payload)
        lon, lat = (event.get("lon"), event.get("lat")) if isinstance(event, dict) else (None, None)
        if not isinstance(lon, int | float) or not isinstance(lat, int | float):
            self.malformed += 1
            return
        self._events.append((float(lon), float(lat), orjson.dumps({**event, "type": "zone_event"})))

    def add_commands(self, payload: bytes) -> None:
        """A `fleet:commands` message: a JSON array of command transitions."""
        body = self._load(payload)
        if not isinstance(body, list):
            self.malformed += 1
            return
        self._commands.extend(orjson.dumps({**t, "type": "command"}) for t in body if isinstance(t, dict))

    def _load(self, payload: bytes) -> Any:
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.malformed += 1
            return _DROP

    def take(self) -> Tick:
        vehicles, last, n = self._vehicles, self._last, len(self._vehicles)
        unseen = (np.nan, np.nan)
        prev = [last.get(device, unseen) for device in vehicles]
        ids, encoded = np.empty(n, dtype=object), np.empty(n, dtype=object)
        ids[:] = list(vehicles)
        encoded[:] = [v[2] for v in vehicles.values()]
        tick = Tick(
            ids=ids,
            lon=np.fromiter((v[0] for v in vehicles.values()), float, n),
            lat=np.fromiter((v[1] for v in vehicles.values()), float, n),
            encoded=encoded,
            prev_lon=np.fromiter((p[0] for p in prev), float, n),
            prev_lat=np.fromiter((p[1] for p in prev), float, n),
            events=tuple(self._events),
            commands=tuple(self._commands),
        )
        last.update((device, (v[0], v[1])) for device, v in vehicles.items())
        self._vehicles, self._events, self._commands = {}, [], []
        return tick


class ClientFeed:
    """One client's pending updates: coalesced positions, bounded events; `take` empties it."""

    def __init__(self, box: Box = WORLD, max_events: int = MAX_EVENTS) -> None:
        self.box = box
        self._held: list[tuple[Tick, np.ndarray]] = []  # ticks not yet sent, with this client's share
        self._pending: dict[str, bytes] = {}  # held ticks folded: the newest state per vehicle
        self._events: deque[bytes] = deque(maxlen=max_events)
        self.dropped = 0  # events lost to overflow since the last take
        self.due = False  # send at the next take even when empty (the answer to a new box)

    def set_box(self, box: Box) -> None:
        """A new view: from the next tick on, what is in it (the shell sends a snapshot of it first)."""
        self.box = box

    def offer(self, tick: Tick, chosen: np.ndarray | None = None) -> None:
        """Take this client's share of a tick: `chosen` (from `choose`, for every client at once) or
        what its box selects. A fast client's share is sent as it is; a slow one's held ticks are
        folded into the newest state per vehicle once there are `MAX_HELD_TICKS`."""
        if len(tick.ids):
            if chosen is None:
                chosen = choose([self.box], tick)[0]
            if len(chosen):
                self._held.append((tick, chosen))
                if len(self._held) > MAX_HELD_TICKS:
                    self._fold()
        for lon, lat, event in tick.events:
            if self.box.contains(lon, lat):
                self._push(event)
        for command in tick.commands:
            self._push(command)

    def _push(self, item: bytes) -> None:
        if len(self._events) == self._events.maxlen:
            self.dropped += 1
        self._events.append(item)

    def _fold(self) -> None:
        for tick, chosen in self._held:
            self._pending.update(zip(tick.ids[chosen].tolist(), tick.encoded[chosen].tolist(), strict=True))
        self._held.clear()

    def __len__(self) -> int:
        """Vehicles and events pending (folding held ticks first, so each vehicle counts once)."""
        self._fold()
        return len(self._pending) + len(self._events)

    def take(self) -> bytes | None:
        """One message with everything pending (None when there is nothing), and the feed emptied."""
        if not self._held and not self._pending and not self._events and not self.dropped and not self.due:
            return None
        if len(self._held) == 1 and not self._pending:  # the usual case: one tick, each vehicle once in it
            tick, chosen = self._held.pop()
            vehicles = b",".join(tick.encoded[chosen].tolist())
        else:
            self._fold()
            vehicles = b",".join(self._pending.values())
        message = b"".join(
            (b'{"type":"update","vehicles":[', vehicles, b'],"events":[',
             b",".join(self._events), b'],"dropped":', str(self.dropped).encode(), b"}")
        )  # fmt: skip
        self._pending = {}
        self._events.clear()
        self.dropped = 0
        self.due = False
        return message


def snapshot_tick(states: Iterable[Mapping[str, Any]]) -> Tick:
    """The whole live fleet as one tick: offered to a client when it (re)sets its box, so it starts
    from every vehicle in view rather than waiting for each to move."""
    builder = TickBuilder()
    builder.add_states(orjson.dumps([dict(s) for s in states]))
    return builder.take()
