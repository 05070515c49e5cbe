"""Server-to-device commands (lock, unlock, locate, alarm) and subscription-driven lockout."""
