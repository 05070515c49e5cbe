"""One exception tree for the geofence core, so the API layer can turn any of them into a 4xx.

Every error is a `ValueError`: the core only refuses input (a zone, a batch, stored state); it never
fails on its own account, and a caller that catches `GeofenceError` has caught everything we raise.
"""

from __future__ import annotations


class GeofenceError(ValueError):
    """Base of everything the geofence, trip and utilization core raises."""


class ZoneError(GeofenceError):
    """A zone definition we refuse: wrong GeoJSON type, bad coordinates, invalid geometry, missing
    speed limit. The message says what is wrong and where, because it is shown to the operator who
    drew the zone."""


class BatchError(GeofenceError):
    """A position batch whose arrays disagree in length or hold impossible values."""


class StateError(GeofenceError):
    """Stored per-device state that cannot be decoded (corrupt bytes or an unknown format version)."""
