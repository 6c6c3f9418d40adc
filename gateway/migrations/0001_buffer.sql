-- Vitalbridge buffer, schema version 1. See gateway/src/buffer/mod.rs for the guarantees.

-- Readings not yet acknowledged by the uplink destination. A row is deleted only after the
-- destination acknowledged it, or after it was moved to dead_letters with a reason.
CREATE TABLE readings (
    -- AUTOINCREMENT: ids never go backwards, even after every row was deleted, so the
    -- uplink's lease cursor never skips a new row.
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Reading::identifier(): the FHIR identifier value; a retransmission is stored once.
    identifier  TEXT    NOT NULL UNIQUE,
    -- DeviceId::key() of the measuring device.
    device_key  TEXT    NOT NULL,
    -- Gateway receive time, Unix milliseconds (queue age).
    received_ms INTEGER NOT NULL,
    -- The reading, encoded as in buffer/codec.rs.
    body        BLOB    NOT NULL
);

-- Payloads and readings that will not be delivered without a person looking at them.
CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- When it was dead-lettered, Unix milliseconds.
    created_ms  INTEGER NOT NULL,
    -- 'payload': a source could not decode it (body = raw bytes);
    -- 'reading': the destination refused it permanently or it could not be mapped (body = codec body).
    kind        TEXT    NOT NULL CHECK (kind IN ('payload', 'reading')),
    -- Source or uplink that gave up on it, e.g. 'mqtt:vitalbridge/readings/x' or 'uplink:fhir'.
    origin      TEXT    NOT NULL,
    -- Why (an OperationOutcome text, a decode error); never used in logs.
    reason      TEXT    NOT NULL,
    -- identifier for 'reading' rows.
    identifier  TEXT,
    body        BLOB    NOT NULL
);

-- Per-device state that must outlive delivery: the highest sequence number ever stored.
CREATE TABLE device_state (
    device_key    TEXT PRIMARY KEY,
    last_sequence INTEGER NOT NULL
);
