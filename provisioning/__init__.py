"""Device provisioning: the registry of devices and their broker accounts (Mosquitto dynamic security)."""
