"""Subscriptions drive the fleet: the lockout policy and engine, reminders, imports and shop orders."""
