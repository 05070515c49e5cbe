-- Server-to-device commands: the current state one row per command, every transition appended to
-- command_transitions (the audit log). No foreign key to devices: the log outlives a deleted device.
CREATE TABLE commands (
    id               uuid        PRIMARY KEY,
    device_id        text        NOT NULL,
    action           text        NOT NULL
                     CHECK (action IN ('lock', 'unlock', 'locate', 'alarm', 'set_speed_limit')),
    params           jsonb       NOT NULL DEFAULT '{}',
    reason           text        NOT NULL,
    requested_by     text        NOT NULL,
    force            boolean     NOT NULL DEFAULT false,
    idempotency_key  text,
    state            text        NOT NULL CHECK (state IN ('queued', 'waiting_for_park', 'sent', 'delivered',
                     'confirmed', 'rejected', 'failed', 'expired', 'superseded', 'canceled')),
    detail           text        NOT NULL DEFAULT '',
    attempts         integer     NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    sent_at          timestamptz,
    next_at          timestamptz,
    updated_at       timestamptz NOT NULL,
    version          bigint      NOT NULL DEFAULT 0,
    UNIQUE (device_id, idempotency_key)
);
CREATE INDEX commands_device ON commands (device_id, created_at DESC);
CREATE INDEX commands_created ON commands (created_at DESC);
-- What the service loads on start: everything not finished (delivered waits for confirmation).
CREATE INDEX commands_active ON commands (created_at)
    WHERE state IN ('queued', 'waiting_for_park', 'sent', 'delivered');

CREATE TABLE command_transitions (
    seq         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    command_id  uuid        NOT NULL,
    at          timestamptz NOT NULL,
    from_state  text,
    to_state    text        NOT NULL,
    actor       text        NOT NULL,
    detail      text        NOT NULL DEFAULT ''
);
CREATE INDEX command_transitions_command ON command_transitions (command_id, seq);

-- Append-only: an audit log nobody can edit after the fact (TRUNCATE, for tests, stays possible).
CREATE FUNCTION command_transitions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'command_transitions is append-only';
END
$$;
CREATE TRIGGER command_transitions_append_only BEFORE UPDATE OR DELETE ON command_transitions
    FOR EACH ROW EXECUTE FUNCTION command_transitions_append_only();
