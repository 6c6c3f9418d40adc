-- Vitalbridge buffer, schema version 4: a memory of delivered readings.
--
-- A reading's row is deleted when every destination acknowledged it; a source that sends the
-- same reading again afterwards (an HL7 v2 sender that lost its ACK and resends, a broker
-- redelivering after a reconnect) would then store it a second time and the destination would
-- get it twice. The keyed hash of every acknowledged reading is kept here for a while
-- (buffer/writer.rs, DELIVERED_MEMORY, and at most buffer.capacity of them), and a reading
-- whose hash is here is not stored again.
-- Like `readings.dedup`, the hash names no patient.
CREATE TABLE delivered (
    dedup  BLOB    PRIMARY KEY,
    -- When the destination acknowledged it, Unix milliseconds (for forgetting it).
    at_ms  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX delivered_at ON delivered (at_ms);
