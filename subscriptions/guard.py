"""Whether a person may unlock a device now: the lockout policy's answer for its subscription.

An operator's unlock of a device whose subscription is lapsed (past its end or unpaid past its due
date, plus grace) would be undone by nothing and would give away the service: the API refuses it
with 409 and this reason. An admin may override; the override is audited (api/routes/commands.py).
A device on no subscription, or exempt, may be unlocked.
"""

from __future__ import annotations

from datetime import datetime

import psycopg

from commands.model import Rules
from subscriptions import lockout_store as ls
from subscriptions.policy import PolicySettings, decide
from subscriptions.store import subscription_of


def unlock_refusal(conn: psycopg.Connection, device_id: str, policy: PolicySettings, now: datetime) -> str | None:
    """Why the device's subscription does not allow an unlock, or None."""
    sid = subscription_of(conn, device_id)
    if sid is None:
        return None
    ctx = ls.load(conn, None, [sid], now, Rules())
    sub = ctx.subscriptions[sid]
    devices = tuple(d for d in ctx.devices.get(sid, ()) if d.device_id == device_id)
    customer = ctx.customers[sub.customer_id]
    out = decide(sub, ctx.plans[sub.plan_id], devices, ctx.notices[sid], customer.channels, policy, now)
    if out.due is None or not devices:
        return None
    device = devices[0]
    if device.exempt_until is not None and now < device.exempt_until:
        return None
    what = "ended" if out.due.cause == "subscription_expired" else "is unpaid since"
    return (f"subscription {sid} of {device_id} {what} {out.due.anchor.isoformat(timespec='seconds')} "
            f"(status {out.status}): renew it or record a payment to unlock")  # fmt: skip
