"""What a customer, a plan, a subscription, an assignment and an exemption are (pure types).

These mirror migration 0008 row for row, so the stores read rows straight into them and the pure
cores (the lockout policy, the reminder schedule) take them as input without any I/O. Times are
aware UTC datetimes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID


class Status(StrEnum):
    """Stripe's subscription states, narrowed to what a fleet acts on."""

    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"  # a payment failed or is late; within the retries
    GRACE = "grace"  # past the end (or unpaid past due), within the plan's grace days
    EXPIRED = "expired"
    CANCELED = "canceled"


class PaymentState(StrEnum):
    PAID = "paid"
    DUE = "due"  # an invoice is open, not yet due or not yet failed
    FAILED = "failed"  # the last try failed


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"


PERIOD_MONTHS = frozenset({1, 12, 24, 36})
"""A plan runs for one month or for 1, 2 or 3 years."""


@dataclass(frozen=True, slots=True)
class Customer:
    id: UUID
    name: str
    email: str | None
    phone: str | None
    locale: str = "en"
    external_ref: str | None = None

    @property
    def channels(self) -> frozenset[Channel]:
        """The channels this customer can be reached on."""
        found = set()
        if self.email:
            found.add(Channel.EMAIL)
        if self.phone:
            found.add(Channel.SMS)
        return frozenset(found)


@dataclass(frozen=True, slots=True)
class Plan:
    id: str
    name: str
    period_months: int
    price_cents: int
    currency: str = "EUR"
    grace_days: int = 0


@dataclass(frozen=True, slots=True)
class Subscription:
    id: UUID
    customer_id: UUID
    plan_id: str
    status: Status
    payment_state: PaymentState
    period_start: datetime
    period_end: datetime
    payment_due: datetime | None = None
    canceled_at: datetime | None = None
    version: int = 1
    external_ref: str | None = None


@dataclass(frozen=True, slots=True)
class Assignment:
    subscription_id: UUID
    device_id: str
    assigned_at: datetime
    released_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Exemption:
    device_id: str
    until: datetime
    reason: str
    created_by: str
