"""The API's pure core: keys (made, read back, compared), roles, and the input bounds."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.inputs import EARLIEST, LATEST, body_problems, check_time, recompute_problem, text_problem
from api.keys import Role, digest, key_id_of, matches, new_key


def test_a_new_key_reads_back_and_matches_only_itself() -> None:
    key = new_key()
    assert key.token.startswith(f"flt_{key.id}_") and len(key.token) >= 60
    assert key_id_of(key.token) == key.id
    assert matches(key.token, key.digest)
    assert not matches(key.token[:-1] + ("A" if key.token[-1] != "A" else "B"), key.digest)
    assert key.digest == digest(key.token) and key.token.encode() not in key.digest
    assert len({new_key().id for _ in range(200)}) == 200


@given(st.text(max_size=300))
def test_any_presented_text_is_read_without_error(text: str) -> None:
    found = key_id_of(text)
    assert found is None or (len(found) == 12 and text.startswith(f"flt_{found}_"))


@pytest.mark.parametrize("token", ["", "flt_", "flt_0123456789ab", "flt_0123456789AB_" + "a" * 43,
                                   "flt_0123456789ab_" + "a" * 200, "Bearer flt_0123456789ab_" + "a" * 43])  # fmt: skip
def test_malformed_keys_have_no_id(token: str) -> None:
    assert key_id_of(token) is None


def test_roles_are_ordered() -> None:
    allowed = {(a, b) for a in Role for b in Role if a.allows(b)}
    assert allowed == {
        (Role.VIEWER, Role.VIEWER),
        (Role.OPERATOR, Role.VIEWER), (Role.OPERATOR, Role.OPERATOR),
        (Role.ADMIN, Role.VIEWER), (Role.ADMIN, Role.OPERATOR), (Role.ADMIN, Role.ADMIN),
    }  # fmt: skip


@given(st.text(alphabet=st.characters(codec="utf-8", min_codepoint=32, exclude_characters="\x7f"), max_size=50))
def test_printable_text_passes(text: str) -> None:
    assert text_problem(text) is None


@given(st.text(max_size=20), st.sampled_from([*map(chr, range(32)), "\x7f"]), st.text(max_size=20))
def test_control_characters_are_named(before: str, bad: str, after: str) -> None:
    reason = text_problem(before + bad + after)
    assert reason is not None and "U+" in reason
    if bad in "\t\n\r" and text_problem(before + after, free_text=True) is None:
        assert text_problem(before + bad + after, free_text=True) is None  # free text may break lines


def test_body_problems_find_every_bad_place_and_survive_deep_nesting() -> None:
    body = {"a": ["ok", "x\x00"], "b\x01": 1, "c": {"d": float("nan"), "e": "\ud800"}, "f": "line\nbreak"}
    found = dict(body_problems(body))
    assert set(found) == {("body", "a", 1), ("body",), ("body", "c", "d"), ("body", "c", "e")}
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert list(body_problems(deep)) == []


@given(st.datetimes(timezones=st.one_of(st.none(), st.timezones(), st.builds(
    lambda m: timezone(timedelta(minutes=m)), st.integers(-23 * 60, 23 * 60)))))  # fmt: skip
def test_times_are_bounded_never_overflow(value: datetime) -> None:
    out: datetime | str
    try:
        out = check_time(value)
    except ValueError as exc:
        out = str(exc)
    if isinstance(out, str):
        assert "between 1970-01-01 and 2100-01-01" in out
    else:
        assert out.tzinfo is UTC and EARLIEST <= out < LATEST


def test_recompute_window() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert recompute_problem(now - timedelta(days=31), now) is None
    assert recompute_problem(now + timedelta(days=300), now) is None
    assert "31 days" in (recompute_problem(now - timedelta(days=31, seconds=1), now) or "")
    assert math.isfinite((now - EARLIEST).total_seconds())


@pytest.mark.parametrize("module", ["api.keys", "api.inputs", "api.livefeed"])
def test_core_modules_import_no_io_library(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('asyncio', 'psycopg', 'redis', 'paho', 'aiomqtt', 'fastapi'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""
