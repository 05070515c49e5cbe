"""Liveness and pipeline counters, for operators and for the demo's smoke check."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from api.deps import RedisDep
from gateway import keys

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(client: RedisDep) -> dict[str, object]:
    def read() -> dict[str, int]:
        return {k.decode(): int(v) for k, v in client.hgetall(keys.COUNTERS).items()}

    counters = await run_in_threadpool(read)
    return {"status": "ok", "counters": counters}
