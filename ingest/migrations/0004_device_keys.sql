-- An integer key per device id for telemetry's uniqueness rule.
--
-- The unique index is what folds duplicates, and every stored record pays for one insert into it.
-- On (device_id text, time) an entry took about 70 bytes (texts are too wide for PostgreSQL's
-- packed split of "grouping column, rising time" inserts, so leaf pages stayed half full) and
-- about 3 µs of server time per row; on (device_key integer, time), with the rows of a batch
-- copied in key order, about 30 bytes and 1–2 µs (docs/performance.md).
--
-- `device_keys` is separate from `devices` on purpose: a key is given the first time ingest stores
-- a record of an id and is never reused or removed, so deleting a device keeps its history under
-- its key, and re-registering the same id continues it. `telemetry.device_id` stays, so rows
-- read on their own; a query for one device's history looks its key up first:
--     SELECT t.* FROM telemetry t JOIN device_keys k ON k.key = t.device_key
--     WHERE k.id = 'bike-1' AND t.time >= now() - interval '1 hour' ORDER BY t.time DESC;
CREATE TABLE device_keys (
    id   text    PRIMARY KEY,
    key  integer GENERATED ALWAYS AS IDENTITY UNIQUE
);

-- Stored history gets its keys in one rewrite of the table (about 5 s per million rows here; ingest
-- waits meanwhile, its stream buffering). The old index goes first, so the rewrite does not keep it.
INSERT INTO device_keys (id) SELECT DISTINCT device_id FROM telemetry ORDER BY 1;
DROP INDEX telemetry_device_time;

ALTER TABLE telemetry ADD COLUMN device_key integer;
UPDATE telemetry t SET device_key = k.key FROM device_keys k WHERE k.id = t.device_id;
ALTER TABLE telemetry ALTER COLUMN device_key SET NOT NULL;

CREATE UNIQUE INDEX telemetry_device_key_time ON telemetry (device_key, time);
