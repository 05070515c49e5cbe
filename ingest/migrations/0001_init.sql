-- Devices, raw telemetry and dead letters.
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE devices (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    name        text NOT NULL DEFAULT '',
    model       text NOT NULL DEFAULT 'generic',
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per device report. (device_id, time) identifies a report: redeliveries and resends
-- collapse onto it, and late records slot into their place in time.
CREATE TABLE telemetry (
    time         timestamptz      NOT NULL,
    device_id    text             NOT NULL,
    received_at  timestamptz      NOT NULL,
    source       text             NOT NULL,
    lat          double precision,
    lon          double precision,
    altitude_m   real,
    speed_kmh    real,
    heading_deg  real,
    accuracy_m   real,
    fix          smallint,
    satellites   smallint,
    hdop         real,
    battery_pct  real,
    odometer_m   double precision,
    locked       boolean,
    faults       text[],
    CHECK ((lat IS NULL) = (lon IS NULL))
);
SELECT create_hypertable('telemetry', 'time', chunk_time_interval => interval '1 day');
CREATE UNIQUE INDEX telemetry_device_time ON telemetry (device_id, time DESC);

-- Everything refused, with its raw bytes. (stream_entry, seq) makes a redelivered stream entry
-- land once, exactly like telemetry.
CREATE TABLE dead_letters (
    stream_entry text        NOT NULL,
    seq          integer     NOT NULL,
    received_at  timestamptz NOT NULL,
    topic        text        NOT NULL,
    device_id    text,
    reason       text        NOT NULL,
    detail       text        NOT NULL DEFAULT '',
    payload      bytea       NOT NULL,
    PRIMARY KEY (stream_entry, seq)
);
CREATE INDEX dead_letters_time ON dead_letters (received_at DESC);
CREATE INDEX dead_letters_reason ON dead_letters (reason, received_at DESC);
