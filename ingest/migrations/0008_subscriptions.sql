-- Subscriptions drive the fleet (customers, plans, subscriptions, device assignments, exemptions),
-- the lockout engine's decisions, and the outbox every customer message goes through.
-- Times are timestamptz (UTC); money is in minor units (cents) with its currency.

CREATE TABLE customers (
    id           uuid        PRIMARY KEY,
    external_ref text        UNIQUE,                -- the shop's or importer's customer id
    name         text        NOT NULL,
    email        text,
    phone        text,                              -- E.164
    locale       text        NOT NULL DEFAULT 'en',  -- BCP 47 (en, de-DE, ...): dates in reminders
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);

CREATE TABLE plans (
    id            text        PRIMARY KEY,          -- 'courier-monthly', 'tracker-2y', ...
    name          text        NOT NULL,
    period_months integer     NOT NULL CHECK (period_months IN (1, 12, 24, 36)),
    price_cents   bigint      NOT NULL CHECK (price_cents >= 0),
    currency      text        NOT NULL DEFAULT 'EUR',
    grace_days    integer     NOT NULL DEFAULT 0 CHECK (grace_days BETWEEN 0 AND 90),
    created_at    timestamptz NOT NULL
);

-- One row per subscription; `version` grows by one on every change, so a decision or a reminder can
-- name the state it was made on, and an older webhook never rolls a newer state back
-- (`source_event_at`: the time of the newest outside event applied).
CREATE TABLE subscriptions (
    id              uuid        PRIMARY KEY,
    external_ref    text        UNIQUE,
    customer_id     uuid        NOT NULL REFERENCES customers (id),
    plan_id         text        NOT NULL REFERENCES plans (id),
    status          text        NOT NULL CHECK (status IN ('trialing', 'active', 'past_due', 'grace',
                                                           'expired', 'canceled')),
    payment_state   text        NOT NULL DEFAULT 'paid' CHECK (payment_state IN ('paid', 'due', 'failed')),
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL CHECK (period_end > period_start),
    payment_due     timestamptz,                    -- when the open invoice falls due (payment_state due/failed)
    canceled_at     timestamptz,
    source_event_at timestamptz,
    version         bigint      NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX subscriptions_customer ON subscriptions (customer_id);
CREATE INDEX subscriptions_period_end ON subscriptions (period_end);

-- Which device rides on which subscription, with history: an open row has released_at NULL, and a
-- device has at most one open row.
CREATE TABLE subscription_devices (
    subscription_id uuid        NOT NULL REFERENCES subscriptions (id),
    device_id       text        NOT NULL,
    assigned_at     timestamptz NOT NULL,
    released_at     timestamptz,
    PRIMARY KEY (subscription_id, device_id, assigned_at)
);
CREATE UNIQUE INDEX subscription_devices_open ON subscription_devices (device_id) WHERE released_at IS NULL;

-- A device the lockout engine leaves alone until `until`.
CREATE TABLE exemptions (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id  text        NOT NULL,
    until      timestamptz NOT NULL,
    reason     text        NOT NULL,
    created_by text        NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX exemptions_device ON exemptions (device_id, until DESC);

-- Every decision of the lockout policy, once per (subscription, device, transition): the unique key
-- is what makes the engine idempotent across restarts and with two engines running.
CREATE TABLE lockout_decisions (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id uuid        NOT NULL,
    device_id       text        NOT NULL,
    transition      text        NOT NULL,           -- e.g. 'lock:expired:2027-01-31T00:00:00Z', 'unlock:v7'
    desired         text        NOT NULL CHECK (desired IN ('lock', 'unlock', 'none')),
    reason          text        NOT NULL,
    decided_at      timestamptz NOT NULL,
    due_at          timestamptz,                    -- when the transition came due (latency = decided - due)
    command_id      uuid,
    actor           text        NOT NULL DEFAULT 'lockout',
    UNIQUE (subscription_id, device_id, transition)
);
CREATE INDEX lockout_decisions_device ON lockout_decisions (device_id, decided_at DESC);
CREATE INDEX lockout_decisions_decided ON lockout_decisions (decided_at DESC);

-- Outside events (shop orders, payments), deduplicated by the sender's event id.
CREATE TABLE webhook_events (
    event_id    text        PRIMARY KEY,
    source      text        NOT NULL,               -- 'orders', 'payments'
    kind        text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    payload     jsonb       NOT NULL,
    outcome     text        NOT NULL DEFAULT ''
);

-- Every message to a customer or to staff: one row per (customer, message) and channel. The sender
-- moves rows pending → sent or failed (with retries); `idempotency_key` is unique, so a message
-- queued twice is stored once.
CREATE TABLE outbox (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key text        NOT NULL UNIQUE,
    kind            text        NOT NULL CHECK (kind IN ('reminder', 'overdue', 'welcome', 'digest')),
    channel         text        NOT NULL CHECK (channel IN ('email', 'sms')),
    customer_id     uuid,                           -- NULL for staff messages
    recipient       text        NOT NULL,
    subject         text        NOT NULL DEFAULT '',
    body_text       text        NOT NULL,
    body_html       text,
    state           text        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'skipped')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_at         timestamptz NOT NULL,
    last_error      text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL,
    sent_at         timestamptz
);
CREATE INDEX outbox_due ON outbox (next_at) WHERE state IN ('pending', 'sending');

-- What each reminder message covered: one row per (subscription, period end, offset, channel), unique,
-- so no reminder is ever queued twice, and the lockout policy can see which notices went out when.
CREATE TABLE reminder_items (
    subscription_id uuid        NOT NULL,
    period_end      timestamptz NOT NULL,
    offset_days     integer     NOT NULL,
    channel         text        NOT NULL CHECK (channel IN ('email', 'sms')),
    customer_id     uuid        NOT NULL,
    outbox_id       bigint      NOT NULL REFERENCES outbox (id),
    PRIMARY KEY (subscription_id, period_end, offset_days, channel)
);
CREATE INDEX reminder_items_outbox ON reminder_items (outbox_id);
