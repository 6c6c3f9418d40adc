-- Vitalbridge buffer, schema version 2: patient data sealed at rest (gateway/src/buffer/seal.rs,
-- rows.rs). Nothing that names a patient or carries a value is stored in clear: reading bodies
-- and dead letters are AEAD-sealed, and the columns SQLite compares hold keyed hashes.
--
-- Rows of schema 1 (plaintext) are kept under *_v1 names by this migration and sealed into the
-- new tables by the gateway at the first open with a key (buffer/open.rs), which then drops the
-- old tables and vacuums the file so no plaintext page survives.

ALTER TABLE readings RENAME TO readings_v1;
ALTER TABLE dead_letters RENAME TO dead_letters_v1;

-- Readings not yet acknowledged by the uplink destination. A row is deleted only after the
-- destination acknowledged it, or after it was moved to dead_letters with a reason.
CREATE TABLE readings (
    -- AUTOINCREMENT: ids never go backwards, even after every row was deleted, so the
    -- uplink's lease cursor never skips a new row.
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Keyed hash (16 bytes) of Reading::identifier(): a retransmission is stored once.
    dedup       BLOB    NOT NULL UNIQUE,
    -- Gateway receive time, Unix milliseconds (queue age).
    received_ms INTEGER NOT NULL,
    -- The reading (buffer/codec.rs), sealed (buffer/seal.rs) with `dedup` as associated data.
    body        BLOB    NOT NULL
);

-- Payloads and readings that will not be delivered without a person looking at them.
CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- When it was first dead-lettered, Unix milliseconds.
    created_ms  INTEGER NOT NULL,
    -- 'payload': a source could not decode it; 'reading': the destination refused it
    -- permanently or it could not be mapped.
    kind        TEXT    NOT NULL CHECK (kind IN ('payload', 'reading')),
    -- The source or uplink that gave up on it, by name only ('mqtt', 'serial:bed-12',
    -- 'uplink:fhir'); the full origin (an MQTT topic may name a patient) is sealed in `body`.
    source      TEXT    NOT NULL,
    -- Keyed hash: of the origin and content for payloads (one row per distinct bad payload),
    -- the reading's `dedup` for readings.
    dedup       BLOB    NOT NULL,
    -- How many times this payload arrived (a broker redelivers until it is acknowledged).
    seen        INTEGER NOT NULL DEFAULT 1,
    -- The sealed envelope: origin, reason, identifier, content (buffer/rows.rs).
    body        BLOB    NOT NULL
);
CREATE UNIQUE INDEX dead_letters_payload ON dead_letters (dedup) WHERE kind = 'payload';

-- This database's own facts: `db_id` (random, also kept in <data_dir>/buffer.state so a
-- replaced or emptied database is noticed) and `key_id` (which key seals the rows).
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
