"""Operator-facing HTTP API: live fleet as GeoJSON, devices, feeds."""
