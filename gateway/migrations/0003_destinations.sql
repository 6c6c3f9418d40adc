-- Vitalbridge buffer, schema version 3: several destinations at once. A reading leaves the
-- buffer only when every configured destination has it.

-- The destinations this buffer keeps readings for, each with its bit in readings.todo. Bits
-- are given out at open (buffer/open.rs) to the configured destinations; a destination taken
-- out of the configuration gives its bit back after its readings were settled.
CREATE TABLE destinations (
    bit  INTEGER PRIMARY KEY CHECK (bit BETWEEN 0 AND 62),
    name TEXT    NOT NULL UNIQUE
);

-- The destinations that still need the reading, one bit each. Rows of schema 2 were owed to
-- the one destination there was then, which open() gives bit 0.
ALTER TABLE readings ADD COLUMN todo INTEGER NOT NULL DEFAULT 1;

-- The destination that gave up on a 'reading' dead letter (NULL for 'payload' rows, and for
-- rows of schema 2); retry-dead-letters puts it back in the queue for that destination.
ALTER TABLE dead_letters ADD COLUMN destination TEXT;
