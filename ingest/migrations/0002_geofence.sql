-- Zones, zone events, trips, device service status and the hourly utilization rollup.

-- One counter for every change to `zones`. The trigger below takes its row lock, which is held to
-- commit, so versions become visible in the order they were given: a worker that has seen version n
-- has seen every change up to n, and finds the rest with `version > n`.
CREATE TABLE zone_catalog (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version    bigint  NOT NULL
);
INSERT INTO zone_catalog (version) VALUES (0);

CREATE TABLE zones (
    id               text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    kind             text NOT NULL CHECK (kind IN ('service_area', 'no_parking', 'slow', 'no_ride')),
    name             text NOT NULL DEFAULT '',
    speed_limit_kmh  double precision CHECK (speed_limit_kmh > 0 AND speed_limit_kmh < 500),
    geometry         jsonb NOT NULL,  -- normalised GeoJSON Polygon or MultiPolygon (RFC 7946)
    version          bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (kind <> 'slow' OR speed_limit_kmh IS NOT NULL)
);
CREATE INDEX zones_version ON zones (version);

-- Deleted zones leave their version here, so a worker can tell "removed" from "never changed".
CREATE TABLE zone_deletions (
    version     bigint PRIMARY KEY,
    zone_id     text NOT NULL,
    deleted_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION zones_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    UPDATE zone_catalog SET version = version + 1 RETURNING version INTO v;
    IF TG_OP = 'DELETE' THEN
        INSERT INTO zone_deletions (version, zone_id) VALUES (v, OLD.id);
        RETURN OLD;
    END IF;
    NEW.version := v;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
CREATE TRIGGER zones_version BEFORE INSERT OR UPDATE OR DELETE ON zones
    FOR EACH ROW EXECUTE FUNCTION zones_bump_version();

-- Enter, exit, cross, dwell and violation events. The unique key makes a replayed batch land once.
CREATE TABLE zone_events (
    time         timestamptz      NOT NULL,
    device_id    text             NOT NULL,
    zone_id      text             NOT NULL,
    kind         text             NOT NULL CHECK (kind IN ('enter', 'exit', 'cross', 'dwell', 'violation')),
    violation    text,
    lon          double precision NOT NULL,
    lat          double precision NOT NULL,
    detail       jsonb            NOT NULL DEFAULT '{}',
    recorded_at  timestamptz      NOT NULL DEFAULT now(),
    CHECK ((kind = 'violation') = (violation IS NOT NULL))
);
SELECT create_hypertable('zone_events', 'time', chunk_time_interval => interval '7 days');
CREATE UNIQUE INDEX zone_events_key ON zone_events (device_id, zone_id, kind, time);
CREATE INDEX zone_events_device_time ON zone_events (device_id, time DESC);
CREATE INDEX zone_events_zone_time ON zone_events (zone_id, time DESC);

-- Rides, unlock to lock. An ongoing trip is stored (ongoing = true) and updated as it grows; its
-- start never moves, so (device_id, start_time) identifies it from the first batch to the last.
CREATE TABLE trips (
    device_id    text             NOT NULL,
    start_time   timestamptz      NOT NULL,
    end_time     timestamptz      NOT NULL,
    start_lon    double precision NOT NULL,
    start_lat    double precision NOT NULL,
    end_lon      double precision NOT NULL,
    end_lat      double precision NOT NULL,
    distance_m   double precision NOT NULL,
    duration_s   double precision NOT NULL,
    points       integer          NOT NULL,
    ongoing      boolean          NOT NULL DEFAULT false,
    updated_at   timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, start_time),
    CHECK (end_time >= start_time)
);
CREATE INDEX trips_start ON trips (start_time DESC);

-- Service status changes: from `time` on the device has `status`. No row before a device's first
-- change means in service from its registration (devices.created_at).
CREATE TABLE device_service (
    device_id    text        NOT NULL,
    time         timestamptz NOT NULL,
    status       text        NOT NULL CHECK (status IN ('in_service', 'maintenance', 'inactive')),
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, time)
);

-- Seconds per device and UTC hour, recomputed by the geofence worker for the hours a batch's trips
-- touch and, on a timer, for the current hour of the whole fleet. Days and fleet totals are sums of
-- these rows (`time_bucket('1 day', bucket)`), which stays fast over any window.
CREATE TABLE utilization_hourly (
    bucket         timestamptz      NOT NULL CHECK (extract(epoch FROM bucket)::bigint % 3600 = 0),
    device_id      text             NOT NULL,
    ride_s         double precision NOT NULL DEFAULT 0,
    idle_s         double precision NOT NULL DEFAULT 0,
    in_service_s   double precision NOT NULL DEFAULT 0,
    maintenance_s  double precision NOT NULL DEFAULT 0,
    updated_at     timestamptz      NOT NULL DEFAULT now()
);
SELECT create_hypertable('utilization_hourly', 'bucket', chunk_time_interval => interval '30 days');
CREATE UNIQUE INDEX utilization_hourly_key ON utilization_hourly (device_id, bucket);
