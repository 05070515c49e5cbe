"""Vectorized geofence, trip and utilization core: pure functions over numpy arrays."""
