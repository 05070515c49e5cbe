"""Device registration: the only way a device gets broker credentials.

Admins register, rotate, disable, enable and delete devices; viewers list them. Registering an id
that exists is a 409: new credentials for a registered device are `POST /{id}/rotate`. Every write is
audited with the device before and after; credentials never enter the audit trail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api import keystore
from api.auth import VIEWER, AdminKey, route_of
from api.keystore import Actor
from provisioning.broker_admin import BrokerAdminError
from provisioning.registry import DeviceExists, DeviceRegistry, DeviceSpec, RegistryError, UnknownDevice

router = APIRouter(prefix="/v1/devices", tags=["devices"])

DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class DeviceCreate(BaseModel):
    id: str = Field(pattern=DEVICE_ID)
    name: str = Field(default="", max_length=200)
    model: str = Field(default="generic", max_length=64)


class DevicePublic(BaseModel):
    id: str
    name: str
    model: str
    status: str


class DeviceCredentials(BaseModel):
    """Returned once at registration and at rotation; the broker keeps only a hash."""

    device_id: str
    mqtt_username: str
    mqtt_password: str


def get_registry(request: Request) -> DeviceRegistry:
    registry = request.app.state.registry
    if registry is None:
        raise HTTPException(503, "device registry is not configured (no broker admin account)")
    return registry


RegistryDep = Annotated[DeviceRegistry, Depends(get_registry)]


async def _call(action: Callable[..., Any], *args: Any) -> Any:
    """Run a registry action, its refusals as 4xx: unknown 404, taken 409, bad or reserved id 422."""
    try:
        return await run_in_threadpool(action, *args)
    except UnknownDevice as exc:
        raise HTTPException(404, str(exc)) from None
    except DeviceExists as exc:
        raise HTTPException(409, str(exc)) from None
    except RegistryError as exc:
        raise HTTPException(422, str(exc)) from None
    except BrokerAdminError as exc:
        raise HTTPException(502, f"the broker refused the change: {exc}") from None


async def _audit(request: Request, actor: Actor, action: str, target: str, before: Any, after: Any) -> None:
    pool = request.app.state.pool

    def write() -> None:
        with pool.connection() as conn:
            keystore.record(conn, actor, action, target, before, after, route_of(request))

    await run_in_threadpool(write)


def _public(device: Any) -> dict[str, Any] | None:
    return asdict(device) if device is not None else None


@router.post("", status_code=201)
async def register_device(
    actor: AdminKey, body: DeviceCreate, registry: RegistryDep, request: Request
) -> DeviceCredentials:
    """Register a new device and return its MQTT credentials (shown once); 409 if the id exists."""
    creds = await _call(registry.create, DeviceSpec(body.id, body.name, body.model))
    after = _public(await run_in_threadpool(registry.get, body.id))
    await _audit(request, actor, "device.create", body.id, None, after)
    return DeviceCredentials(device_id=creds.device_id, mqtt_username=creds.username, mqtt_password=creds.password)


@router.get("", dependencies=[VIEWER])
async def list_devices(registry: RegistryDep) -> list[DevicePublic]:
    devices = await run_in_threadpool(registry.list)
    return [DevicePublic(id=d.id, name=d.name, model=d.model, status=d.status) for d in devices]


@router.post("/{device_id}/rotate")
async def rotate_device(actor: AdminKey, device_id: str, registry: RegistryDep, request: Request) -> DeviceCredentials:
    """New MQTT credentials for a registered device (shown once); the old password stops working."""
    creds = await _call(registry.rotate, device_id)
    await _audit(request, actor, "device.rotate", device_id, {"credentials": "previous"}, {"credentials": "rotated"})
    return DeviceCredentials(device_id=creds.device_id, mqtt_username=creds.username, mqtt_password=creds.password)


async def _change(request: Request, registry: DeviceRegistry, actor: Actor, action: str, device_id: str) -> None:
    before = _public(await _call(registry.get, device_id))
    if before is None:
        raise HTTPException(404, f"no device {device_id!r}")
    await _call(getattr(registry, action), device_id)
    after = None if action == "delete" else _public(await _call(registry.get, device_id))
    await _audit(request, actor, f"device.{action}", device_id, before, after)


@router.post("/{device_id}/disable", status_code=204)
async def disable_device(actor: AdminKey, device_id: str, registry: RegistryDep, request: Request) -> None:
    await _change(request, registry, actor, "disable", device_id)


@router.post("/{device_id}/enable", status_code=204)
async def enable_device(actor: AdminKey, device_id: str, registry: RegistryDep, request: Request) -> None:
    await _change(request, registry, actor, "enable", device_id)


@router.delete("/{device_id}", status_code=204)
async def delete_device(actor: AdminKey, device_id: str, registry: RegistryDep, request: Request) -> None:
    await _change(request, registry, actor, "delete", device_id)
