"""Who may call what: every route declares the role it needs, or that it is public.

A route declares its access with one of the dependencies below, in its decorator
(`dependencies=[VIEWER]`) or as a parameter when it needs to know the caller for the audit trail
(`actor: OperatorKey`); a router may declare one for all its routes. `create_app` refuses to build an
app with a route that declares nothing, and the role-matrix test walks every route with every role.

The key is read from `Authorization: Bearer <key>` or `X-API-Key: <key>` and looked up in the
database on every request, over a small pool of connections (no cache, so a revoked key is refused
at once). A missing, malformed,
unknown or revoked key is a 401; a key whose role is below the route's is a 403. After that the
path, query and body are checked for what the fleet cannot store (`api.inputs`): a 422 then.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

import psycopg
from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import PoolTimeout

from api import keystore
from api.inputs import body_problems, text_problem
from api.keys import Role, key_id_of
from api.keystore import Actor

PUBLIC = "public"

_bearer = HTTPBearer(auto_error=False, scheme_name="bearer", description="Authorization: Bearer flt_…")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey", description="X-API-Key: flt_…")
MAX_REPORTED = 20  # problems named in one 422
_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="fleet"'}


class KeyCheckUnavailable(Exception):
    """The key store does not answer: the caller says so (503, or a WebSocket close), never "unknown key"."""


async def find_actor(pool: Any, token: str) -> Actor | None:
    """The key's holder, or None for a key that is not ours, unknown or revoked. The lookup runs in a
    thread on the API's key pool (one for HTTP routes and `/v1/live` alike)."""
    if key_id_of(token) is None:  # not one of ours: no database round trip for it
        return None

    def lookup() -> Actor | None:
        with pool.connection(timeout=5) as conn:
            return keystore.authenticate(conn, token)

    try:
        return await run_in_threadpool(lookup)
    except (psycopg.OperationalError, PoolTimeout):
        raise KeyCheckUnavailable("cannot check the API key: the database does not answer") from None


class RequireRole:
    """A dependency that admits keys of `role` or above and returns the caller as an `Actor`."""

    def __init__(self, role: Role) -> None:
        self.role = role

    def __repr__(self) -> str:
        return f"RequireRole({self.role.value})"

    async def __call__(
        self,
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        api_key: Annotated[str | None, Depends(_header)],
    ) -> Actor:
        token = _presented(bearer.credentials if bearer else None, api_key)
        if key_id_of(token) is None:  # not one of ours: no database round trip for it
            raise HTTPException(401, "unknown or revoked API key", headers=_UNAUTHORIZED)
        try:
            actor = await find_actor(request.app.state.auth_pool, token)
        except KeyCheckUnavailable as exc:
            raise HTTPException(503, str(exc)) from None
        if actor is None:
            raise HTTPException(401, "unknown or revoked API key", headers=_UNAUTHORIZED)
        assert actor.role is not None
        if not actor.role.allows(self.role):
            raise HTTPException(403, f"this route needs the {self.role.value} role; key {actor.key_id} is {actor.role}")
        await check_inputs(request)
        return actor


def _presented(bearer: str | None, header: str | None) -> str:
    if bearer and header and bearer != header:
        raise HTTPException(401, "two different API keys given (Authorization and X-API-Key)", headers=_UNAUTHORIZED)
    token = bearer or header
    if not token:
        raise HTTPException(
            401, "an API key is required: Authorization: Bearer <key> or X-API-Key: <key>", headers=_UNAUTHORIZED
        )
    return token


async def public(request: Request) -> None:
    """Marks a route as open to anyone (health, public mobility feeds); its input is still checked."""
    await check_inputs(request)


async def check_inputs(request: Request) -> None:
    errors: list[dict[str, Any]] = []
    for name, value in request.path_params.items():
        if isinstance(value, str) and (reason := text_problem(value)):
            errors.append(_error(("path", name), reason, value))
    for name, value in request.query_params.multi_items():
        if reason := text_problem(name) or text_problem(value):
            errors.append(_error(("query", name), reason, value))
    if request.method in ("POST", "PUT", "PATCH") and "json" in request.headers.get("content-type", ""):
        try:
            body = json.loads(await request.body())
        except Exception:  # FastAPI answers an unreadable body itself, with a 4xx
            body = None
        problems = itertools.islice(body_problems(body), MAX_REPORTED)
        errors.extend(_error(where, reason, None) for where, reason in problems)
    if errors:
        raise RequestValidationError(errors[:MAX_REPORTED])


def _error(loc: tuple[str | int, ...], reason: str, value: str | None) -> dict[str, Any]:
    return {"type": "value_error", "loc": loc, "msg": reason, "input": value}


VIEWER_KEY = RequireRole(Role.VIEWER)
OPERATOR_KEY = RequireRole(Role.OPERATOR)
ADMIN_KEY = RequireRole(Role.ADMIN)

# In a decorator: `@router.get("", dependencies=[VIEWER])`.
VIEWER = Depends(VIEWER_KEY)
OPERATOR = Depends(OPERATOR_KEY)
ADMIN = Depends(ADMIN_KEY)
PUBLIC_ROUTE = Depends(public)

# As a parameter, when the route needs the caller (for the audit trail).
ViewerKey = Annotated[Actor, Depends(VIEWER_KEY)]
OperatorKey = Annotated[Actor, Depends(OPERATOR_KEY)]
AdminKey = Annotated[Actor, Depends(ADMIN_KEY)]


def api_routes(routes: Sequence[Any]) -> Iterator[Any]:
    """Every operation route of an app, however deeply its routers are included: each has `path`,
    `methods` and `dependant`. (FastAPI 0.13x and later keep included routers nested.)"""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI copies every route into app.routes
        yield from (r for r in routes if isinstance(r, APIRoute))
        return
    for context in iter_route_contexts(routes):
        if isinstance(context.original_route, APIRoute):
            yield context


def route_access(route: Any) -> Role | str | None:
    """The role a route needs (the highest it declares), `PUBLIC`, or None when it declares nothing."""
    found: list[Role | str] = []
    stack = [route.dependant]
    while stack:
        dependant = stack.pop()
        call = dependant.call
        if isinstance(call, RequireRole):
            found.append(call.role)
        elif call is public:
            found.append(PUBLIC)
        stack.extend(dependant.dependencies)
    roles = [r for r in found if isinstance(r, Role)]
    if roles:
        return max(roles, key=lambda r: r.rank)
    return PUBLIC if found else None


def check_declared(routes: Sequence[Any]) -> None:
    """Refuse to serve a route that declares neither a role nor `public`."""
    missing = [f"{sorted(r.methods)} {r.path}" for r in api_routes(routes) if route_access(r) is None]
    if missing:
        raise RuntimeError(f"routes without a declared role (add VIEWER, OPERATOR, ADMIN or PUBLIC_ROUTE): {missing}")


_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no API key, or an unknown or revoked one"},
    403: {"description": "the key's role is below the route's"},
    503: {"description": "the database does not answer, so the key cannot be checked"},
}


def document_refusals(routes: Sequence[Any]) -> None:
    """Name the answers every keyed route may give before it runs (401, 403, 503), and the 404 of
    every route with an id in its path, in the OpenAPI document, so clients and schema tests know them."""
    for route in api_routes(routes):
        if route_access(route) not in (None, PUBLIC):
            for status, answer in _REFUSALS.items():  # in place: a nested route's answers are its context's
                route.responses.setdefault(status, answer)
        if "{" in route.path:
            route.responses.setdefault(404, {"description": "nothing known by that id"})


def route_of(request: Request) -> str:
    """`PUT /v1/zones/{zone_id}`: the route template a request matched, for the audit trail."""
    route = request.scope.get("route")
    return f"{request.method} {getattr(route, 'path', request.url.path)}"
