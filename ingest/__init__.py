"""Durable path from the Redis stream into TimescaleDB, plus the live last-known state in Redis."""
