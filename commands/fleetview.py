"""What the command service knows of each vehicle, folded from the live state ingest publishes (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from commands.lifecycle import still_since
from commands.model import Rules, Vehicle


def observe(previous: Vehicle, state: dict[str, Any], rules: Rules) -> Vehicle:
    """Fold one live-state object (`fleet:live`, `fleet:vehicles`) into what is known. A state no
    newer than the last one seen changes nothing, so a replayed or reordered message cannot reset
    the park clock. Junk values are read as unknown, never raised."""
    seen_raw = state.get("seen")
    if not isinstance(seen_raw, int | float) or isinstance(seen_raw, bool):
        return previous
    seen = datetime.fromtimestamp(seen_raw, UTC)
    if previous.seen is not None and seen <= previous.seen:
        return previous
    speed_kmh = _float(state.get("speed_kmh"))
    locked = state.get("locked")
    lon, lat = _float(state.get("lon")), _float(state.get("lat"))
    fix = lon is not None and lat is not None
    return Vehicle(  # every field but `online` is new: cheaper than dataclasses.replace
        online=previous.online,
        locked=locked if isinstance(locked, bool) else previous.locked,
        seen=seen,
        speed_kmh=speed_kmh,
        still_since=still_since(previous, speed_kmh, seen, rules),
        lon=lon if fix else previous.lon,
        lat=lat if fix else previous.lat,
    )


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
