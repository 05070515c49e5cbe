"""Dead letters, for operators tracing what the pipeline refused: a paged list and counts by reason.

Newest first, by the time the gateway received them. The cursor is opaque (the last row's time and
key); rows added meanwhile do not shift the pages. Payloads are the stored first KiB, base64.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Query

from api.auth import VIEWER
from api.db import DbDep, fetch
from api.inputs import FleetTime
from api.schemas import DeadLetter, DeadLetterCounts, DeadLetterPage, ReasonCount
from geofence import store

router = APIRouter(prefix="/v1/dead-letters", tags=["dead letters"], dependencies=[VIEWER])

Reason = Annotated[str | None, Query(max_length=64, description="e.g. bad_json, unknown_device, db_refused")]
Device = Annotated[str | None, Query(max_length=64)]


def _where(reason: str | None, device_id: str | None, since: datetime | None, until: datetime | None
           ) -> tuple[list[str], dict[str, Any]]:  # fmt: skip
    where, params = ["true"], {}
    if reason is not None:
        where.append("reason = %(reason)s")
        params["reason"] = reason
    if device_id is not None:
        where.append("device_id = %(device)s")
        params["device"] = device_id
    if since is not None:
        where.append("received_at >= %(since)s")
        params["since"] = store.utc(since)
    if until is not None:
        where.append("received_at < %(until)s")
        params["until"] = store.utc(until)
    return where, params


def _cursor(row: tuple[Any, ...]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([store.iso(row[2]), row[0], row[1]])).decode()


def _after(cursor: str) -> tuple[datetime, str, int]:
    try:
        at, entry, seq = orjson.loads(base64.urlsafe_b64decode(cursor))
        return datetime.fromisoformat(at), str(entry), int(seq)
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError):
        raise HTTPException(422, "cursor: not a cursor this API gave out") from None


@router.get("", response_model=DeadLetterPage)
async def list_dead_letters(
    db: DbDep,
    reason: Reason = None,
    device_id: Device = None,
    since: FleetTime | None = None,
    until: FleetTime | None = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    where, params = _where(reason, device_id, since, until)
    if cursor is not None:
        params["at"], params["entry"], params["seq"] = _after(cursor)
        where.append("(received_at, stream_entry, seq) < (%(at)s, %(entry)s, %(seq)s)")
    params["limit"] = limit + 1
    rows = await fetch(
        db,
        "SELECT stream_entry, seq, received_at, topic, device_id, reason, detail, count, size, sha256, payload"
        f" FROM dead_letters WHERE {' AND '.join(where)}"
        " ORDER BY received_at DESC, stream_entry DESC, seq DESC LIMIT %(limit)s",
        params,
    )
    more, rows = len(rows) > limit, rows[:limit]
    items = [
        DeadLetter(stream_entry=e, seq=q, received_at=at, topic=t, device_id=d, reason=r, detail=dt, count=n,
                   size=size, sha256=digest.hex() if digest is not None else None,
                   payload_base64=base64.b64encode(payload).decode())
        for e, q, at, t, d, r, dt, n, size, digest, payload in rows
    ]  # fmt: skip
    return {"items": items, "next_cursor": _cursor(rows[-1]) if more else None}


@router.get("/counts", response_model=DeadLetterCounts)
async def count_dead_letters(
    db: DbDep,
    device_id: Device = None,
    since: FleetTime | None = None,
    until: FleetTime | None = None,
) -> dict[str, Any]:
    """Letters and the messages they stand for, per reason, most first."""
    where, params = _where(None, device_id, since, until)
    rows = await fetch(
        db,
        f"SELECT reason, count(*), sum(count) FROM dead_letters WHERE {' AND '.join(where)}"
        " GROUP BY reason ORDER BY count(*) DESC, reason",
        params,
    )
    reasons = [ReasonCount(reason=r, letters=n, messages=int(m)) for r, n, m in rows]
    return {"since": since, "until": until, "reasons": reasons}
