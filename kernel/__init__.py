"""The bottom layer every stage shares: records, the stream format and readers, Redis keys, settings,
endpoints, the MQTT codec and session, dead letters. Imports nothing of the project above it."""
