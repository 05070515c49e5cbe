-- Dead letters are bounded: `payload` keeps at most the first KiB of what was refused; `size` is the
-- full length and `sha256` the hash of all of it, so a repeat of the same input is found without
-- storing it again. `count` is how many lines or records of one message the letter stands for: one
-- message leaves at most one dead letter per reason (a 16 KiB NMEA message of 8,000 bad lines is one
-- row of count 8000). Rows from before keep their whole payload; their size and hash are filled in.
-- size and sha256 stay nullable: an ingest worker older than this migration, still running while
-- the new one rolls out, inserts without them, and must not fail on it.
ALTER TABLE dead_letters
    ADD COLUMN count  integer NOT NULL DEFAULT 1 CHECK (count >= 1),
    ADD COLUMN size   integer,
    ADD COLUMN sha256 bytea;
UPDATE dead_letters SET size = octet_length(payload), sha256 = sha256(payload);
CREATE INDEX dead_letters_sha256 ON dead_letters (sha256);
