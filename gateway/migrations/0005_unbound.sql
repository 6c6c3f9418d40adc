-- Vitalbridge buffer, schema version 5: readings that belong to no patient yet.
-- (Number 4 is left to the migration another change adds; sqlx applies them in order.)
--
-- A reading whose device has no patient binding (or a shared device's reading of a user with
-- none) is never sent as anyone's: the writer holds it here instead of in `readings`, sealed
-- like every other reading (buffer/rows.rs), until `vitalbridge devices bind` releases it to
-- a patient (buffer/unbound.rs). Nothing here is ever leased or delivered.
CREATE TABLE unbound (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Keyed hash (16 bytes) of Reading::identifier() (without a patient): a retransmission is
    -- held once.
    dedup       BLOB    NOT NULL UNIQUE,
    -- DeviceId::key() of the measuring device, and the user index it reported (shared
    -- devices): what a release selects by. Device ids are shown on the status page too; no
    -- patient data is in clear here.
    device_key  TEXT    NOT NULL,
    device_user INTEGER,
    -- Gateway receive time, Unix milliseconds.
    received_ms INTEGER NOT NULL,
    -- The reading (buffer/codec.rs), sealed (buffer/seal.rs) with `dedup` as associated data.
    body        BLOB    NOT NULL
);
CREATE INDEX unbound_device ON unbound (device_key, device_user);
