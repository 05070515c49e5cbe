"""What a decoder hands back: the records it could store and the parts it refused."""

from __future__ import annotations

import msgspec

from kernel.records import Reject, Telemetry


class Decoded(msgspec.Struct, frozen=True):
    """Good records and refused parts of one message; either may be empty."""

    records: tuple[Telemetry, ...] = ()
    rejects: tuple[Reject, ...] = ()
