"""msgspec's JSON errors mapped once to reason codes, and the nesting bound, for every JSON-speaking
decoder (JSON v1, OwnTracks, command acks)."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

from kernel.records import DecodeError

T = TypeVar("T")

MAX_DEPTH = 16
"""Deepest nesting of arrays and objects accepted. Protocol v1 needs 4 (batch, records, record,
faults) and OwnTracks 3. msgspec parses (and skips unknown fields) recursively, so about a thousand
levels raise RecursionError: the bound is checked on the bytes before the parser sees them."""

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SHORT = 512  # below this, two counts decide nearly always; above, a batch: go straight to the scan
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"\\')


def check_depth(payload: bytes, max_depth: int = MAX_DEPTH) -> None:
    """Raise `too_deep` if arrays and objects nest deeper than `max_depth`, or might.

    A short message with fewer brackets than the bound (nearly every single record) costs two
    `count`s. Anything else keeps only its brackets, quotes and backslashes (one `translate`); when
    every string is then empty (quotes only in adjacent pairs), the brackets are the structure, with
    no regex over the strings. Everything runs in C: the
    Python loop is per nesting level, never per byte. Unclosed brackets count as nesting (the parser
    recurses into them before it finds the end missing), so junk may read as `too_deep`."""
    if len(payload) < _SHORT and payload.count(b"[") + payload.count(b"{") <= max_depth:
        return
    structure = payload.translate(None, _NOT_STRUCTURE)
    quotes = structure.count(b'"')
    if quotes and (structure.count(b'""') * 2 != quotes or b"\\" in structure):
        # brackets or escapes inside strings: cut the strings out
        brackets = _STRING.sub(b"", payload).translate(_BRACKETS, _NOT_BRACKETS)
    else:
        brackets = structure.translate(_BRACKETS, b'"')  # every string was empty of structure
    if _depth(brackets, max_depth) > max_depth:
        raise DecodeError("too_deep", f"arrays and objects nested deeper than {max_depth}")


def _depth(brackets: bytes, limit: int) -> int:
    """Nesting depth of a string of `[` and `]`, exact up to `limit + 1`: each pass removes the
    innermost pairs, one level."""
    passes = 0
    while brackets and passes <= limit:
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            return passes + brackets.count(b"[")  # unbalanced: count every unclosed one
        brackets = shorter
        passes += 1
    return passes


def decode_struct(decoder: msgspec.json.Decoder[T], payload: bytes) -> T:
    """Decode or raise `DecodeError`. msgspec raises `ValidationError` for a wrong type (and for a
    number too large for a float, i.e. infinite), `DecodeError` for malformed JSON (lone surrogates
    and raw control characters in strings included), and `UnicodeDecodeError` for invalid UTF-8
    inside a string. The nesting bound comes first, so the parser never recurses deep."""
    check_depth(payload)
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise as_decode_error(exc) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecodeError("bad_json", str(exc)) from None


def as_decode_error(exc: msgspec.ValidationError) -> DecodeError:
    text = str(exc)
    return DecodeError("not_finite" if text.startswith("Number out of range") else "bad_schema", text)
