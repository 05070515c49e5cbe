"""Simulated devices that speak the real protocol through the real broker."""
