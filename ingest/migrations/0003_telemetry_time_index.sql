-- TimescaleDB's default `time DESC` index on telemetry costs about a third of the COPY's server time
-- per row (docs/performance.md). The unique (device_id, time DESC) index serves every per-device
-- query, and fleet-wide time ranges are pruned to daily chunks before any index is consulted, so the
-- default index does not pay for itself on the write path.
DROP INDEX IF EXISTS telemetry_time_idx;
