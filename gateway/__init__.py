"""Device-facing edge of the fleet: MQTT intake, payload decoding, the stack manager and the `fleet` CLI."""
