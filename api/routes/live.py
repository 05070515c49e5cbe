"""`GET /v1/live`: a WebSocket of position changes, zone events and command transitions in a box.

Protocol (docs/api.md): the client authenticates with `Authorization: Bearer <key>` or `X-API-Key`
on the upgrade request, or, as a browser must (it cannot set headers on a WebSocket), with its first
message `{"key": "flt_…", "bbox": [w, s, e, n]}`. A key in the URL is not accepted: URLs end up in
access logs. Any role may watch. Afterwards `{"bbox": [w, s, e, n]}` moves the view; each new box is
answered with every vehicle in it, then with changes only. The server sends JSON text messages
`{"type": "update", "vehicles": [...], "events": [...], "dropped": n}` at most every `TICK_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from starlette.websockets import WebSocketState

from api.auth import KeyCheckUnavailable, find_actor
from api.keys import Role
from api.keystore import Actor
from api.live import LiveClient, LiveHub, send_loop
from api.livefeed import WORLD, parse_box, snapshot_tick

router = APIRouter(tags=["live"])

HELLO_TIMEOUT_S = 10.0  # a socket that has not said who it is by then is closed
MAX_MESSAGE = 4096  # a client message is a key and a box: anything larger is refused
# Close codes (4000-4999 are the application's own; RFC 6455 §7.4.2)
UNAUTHORIZED, UNAVAILABLE, BAD_MESSAGE, TIMEOUT = 4401, 4503, 4400, 4408


def hub_of(websocket: WebSocket) -> LiveHub:
    state = websocket.app.state
    hub = getattr(state, "live_hub", None)
    if hub is None:
        hub = state.live_hub = LiveHub(state.config.redis_url)
    return hub


@router.websocket("/v1/live")
async def live(websocket: WebSocket) -> None:
    await websocket.accept()
    header_key = _header_key(websocket)
    try:
        first = await asyncio.wait_for(_receive(websocket), HELLO_TIMEOUT_S) if header_key is None else {}
    except TimeoutError:
        await websocket.close(TIMEOUT, "no key within the time allowed")
        return
    except (ValueError, WebSocketDisconnect) as exc:
        await _close_bad(websocket, exc)
        return
    key = header_key or first.get("key")
    actor = await _authenticate(websocket, key) if isinstance(key, str) else None
    if actor is None:
        if websocket.application_state == WebSocketState.DISCONNECTED:  # closed already: database down
            return
        await websocket.close(UNAUTHORIZED, "an API key is required: unknown or revoked key")
        return
    try:
        box = parse_box(first["bbox"]) if "bbox" in first else WORLD
    except ValueError as exc:
        await _close_bad(websocket, exc)
        return
    hub = hub_of(websocket)
    client = hub.join(box)
    sender = asyncio.create_task(send_loop(client, websocket.send_text), name="live-sender")
    try:
        await _snapshot(websocket, hub, client)
        await _read_boxes(websocket, hub, client, sender)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        await hub.leave(client)


async def _read_boxes(websocket: WebSocket, hub: LiveHub, client: LiveClient, sender: asyncio.Task[None]) -> None:
    """Box changes until the client goes (or its sender fails: a socket that broke mid-send)."""
    while not sender.done():
        try:
            message = await _receive(websocket)
            client.feed.set_box(parse_box(message.get("bbox")))
        except WebSocketDisconnect:
            return
        except ValueError as exc:
            await websocket.send_text(orjson.dumps({"type": "error", "detail": str(exc)}).decode())
            continue
        await _snapshot(websocket, hub, client)


async def _snapshot(websocket: WebSocket, hub: LiveHub, client: LiveClient) -> None:
    states = await run_in_threadpool(websocket.app.state.live.all)
    hub.offer(client, snapshot_tick(states))


async def _receive(websocket: WebSocket) -> dict[str, Any]:
    text = await websocket.receive_text()
    if len(text) > MAX_MESSAGE:
        raise ValueError(f"a message is at most {MAX_MESSAGE} characters")
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValueError("a message is a JSON object") from None
    if not isinstance(value, dict):
        raise ValueError("a message is a JSON object")
    return value


def _header_key(websocket: WebSocket) -> str | None:
    bearer = websocket.headers.get("authorization", "")
    if bearer.lower().startswith("bearer "):
        return bearer[7:].strip() or None
    return websocket.headers.get("x-api-key") or None


async def _authenticate(websocket: WebSocket, token: str) -> Actor | None:
    try:
        actor = await find_actor(websocket.app.state.auth_pool, token)
    except KeyCheckUnavailable as exc:
        await websocket.close(UNAVAILABLE, str(exc))
        return None
    if actor is None or actor.role is None or not actor.role.allows(Role.VIEWER):
        return None
    return actor


async def _close_bad(websocket: WebSocket, exc: Exception) -> None:
    if isinstance(exc, WebSocketDisconnect):
        return
    await websocket.close(BAD_MESSAGE, str(exc)[:120])
