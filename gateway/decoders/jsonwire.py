"""msgspec's JSON errors mapped once to reason codes, for every JSON-speaking decoder."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from gateway.records import DecodeError

T = TypeVar("T")


def decode_struct(decoder: msgspec.json.Decoder[T], payload: bytes) -> T:
    """Decode or raise `DecodeError`. msgspec raises `ValidationError` for a wrong type (and for a
    number too large for a float, i.e. infinite), `DecodeError` for malformed JSON, and
    `UnicodeDecodeError` for invalid UTF-8 inside a string."""
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise as_decode_error(exc) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecodeError("bad_json", str(exc)) from None


def as_decode_error(exc: msgspec.ValidationError) -> DecodeError:
    text = str(exc)
    return DecodeError("not_finite" if text.startswith("Number out of range") else "bad_schema", text)
