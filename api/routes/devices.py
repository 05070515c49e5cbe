"""Device registration: the only way a device gets broker credentials."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from gateway.registry import DeviceRegistry, DeviceSpec, RegistryError

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
    """Returned once at registration; the broker keeps only a hash."""

    device_id: str
    mqtt_username: str
    mqtt_password: str


def get_registry(request: Request) -> DeviceRegistry:
    registry = request.app.state.registry
    if registry is None:
        raise HTTPException(503, "device registry is not configured (no broker admin account)")
    return registry


RegistryDep = Annotated[DeviceRegistry, Depends(get_registry)]


@router.post("", status_code=201)
async def register_device(body: DeviceCreate, registry: RegistryDep) -> DeviceCredentials:
    try:
        (creds,) = await run_in_threadpool(registry.register, [DeviceSpec(body.id, body.name, body.model)])
    except RegistryError as exc:
        raise HTTPException(422, str(exc)) from None
    return DeviceCredentials(device_id=creds.device_id, mqtt_username=creds.username, mqtt_password=creds.password)


@router.get("")
async def list_devices(registry: RegistryDep) -> list[DevicePublic]:
    devices = await run_in_threadpool(registry.list)
    return [DevicePublic(id=d.id, name=d.name, model=d.model, status=d.status) for d in devices]


async def _act(action: object, device_id: str) -> None:
    try:
        await run_in_threadpool(action, device_id)  # type: ignore[arg-type]
    except RegistryError as exc:
        raise HTTPException(404, str(exc)) from None


@router.post("/{device_id}/disable", status_code=204)
async def disable_device(device_id: str, registry: RegistryDep) -> None:
    await _act(registry.disable, device_id)


@router.post("/{device_id}/enable", status_code=204)
async def enable_device(device_id: str, registry: RegistryDep) -> None:
    await _act(registry.enable, device_id)


@router.delete("/{device_id}", status_code=204)
async def delete_device(device_id: str, registry: RegistryDep) -> None:
    await _act(registry.delete, device_id)
