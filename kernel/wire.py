"""The gateway → ingest hand-off format carried in the Redis stream.

One stream entry holds everything one gateway flush accepted (often hundreds of messages), so the
per-entry costs of Redis and of acknowledgement are paid per batch, not per record. msgpack via
msgspec keeps encode+decode around 1.5 µs a record.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from kernel.records import DeadLetter, Telemetry

FIELD = b"b"  # the single field of each stream entry
FORMAT = 2
"""1: records as maps; 2: records as arrays (`Telemetry` is `array_like`). A reader refuses any other
format as a corrupt entry, which ingest dead-letters with its bytes: drain the stream before an
upgrade that changes the format."""
RECORD_BYTES = 120
"""About what one full record weighs in format 2 (252 in format 1): lets a reader size a batch of
entries from their lengths without decoding them."""


class StreamEntry(msgspec.Struct, array_like=True, frozen=True):
    """`received_at[i]` is the gateway's clock for `records[i]` (parallel lists keep it compact)."""

    format: Literal[2]
    records: list[Telemetry]
    received_at: list[datetime]
    dead: list[DeadLetter]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(StreamEntry)


def encode_entry(entry: StreamEntry) -> bytes:
    return _encoder.encode(entry)


def decode_entry(data: bytes) -> StreamEntry:
    """Raises `msgspec.ValidationError`/`DecodeError` on a corrupt entry; ingest dead-letters it."""
    return _decoder.decode(data)
