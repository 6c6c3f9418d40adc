-- Vitalbridge buffer, schema version 6: reading keys that begin with the reading's time.
--
-- A reading's key (`readings.dedup`, `unbound.dedup`, what `delivered` remembers) is now its
-- identity time in whole seconds (6 bytes, big-endian) followed by the keyed hash of its
-- identifier (buffer/rows.rs): keys made at about the same time sort together, so a commit
-- writes a few neighbouring index pages instead of one random page per reading.
--
-- Rows of `readings` and `unbound` are given their new key by the gateway at the first open
-- (buffer/open.rs: it opens each body to learn its time), which then deletes this marker:
INSERT INTO meta (name, value) VALUES ('rekey', 'schema 6');

-- The memory of delivered readings cannot be re-keyed: it holds hashes only. Its rows move to `delivered_v5`, which the writer still
-- consults until they are forgotten (at most a day, DELIVERED_MEMORY), then drops.
ALTER TABLE delivered RENAME TO delivered_v5;

CREATE TABLE delivered (
    -- The reading's key, as in `readings.dedup`.
    dedup  BLOB    PRIMARY KEY,
    -- When the destination acknowledged it, Unix milliseconds (for forgetting it).
    at_ms  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX delivered_at_ms ON delivered (at_ms);
