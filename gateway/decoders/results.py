"""What a decoder hands back: the records it could store and the parts it refused."""

from __future__ import annotations

import msgspec

from gateway.records import DecodeError, Telemetry


class Reject(msgspec.Struct, frozen=True):
    """One refused part of an otherwise readable message (an NMEA line or epoch, one record of a
    JSON batch), with its own raw bytes so the dead letter shows exactly what was refused."""

    reason: str
    detail: str
    raw: bytes

    @classmethod
    def of(cls, exc: DecodeError, raw: bytes) -> Reject:
        return cls(exc.reason, exc.detail, raw)


class Decoded(msgspec.Struct, frozen=True):
    """Good records and refused parts of one message; either may be empty."""

    records: tuple[Telemetry, ...] = ()
    rejects: tuple[Reject, ...] = ()
