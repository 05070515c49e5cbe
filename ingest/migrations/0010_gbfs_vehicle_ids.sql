-- GBFS vehicle ids (api/mobility.py): the public feed shows a random id per vehicle that changes
-- after every trip, so riders cannot be followed from one trip to the next. `after_trip` is the
-- start of the last trip the id was given after (NULL: none yet); a newer trip of the device gives
-- it a new id. Kept in the database so the ids stay the same across API restarts and instances.
CREATE TABLE gbfs_vehicle_ids (
    device_id   text        PRIMARY KEY,
    public_id   text        NOT NULL UNIQUE,
    after_trip  timestamptz,
    assigned_at timestamptz NOT NULL DEFAULT now()
);

-- Trips per device, newest first: the last trip of every device, and the open ones, in one scan
-- that does not touch closed trips' heap rows twice.
CREATE INDEX trips_ongoing ON trips (device_id) WHERE ongoing;
