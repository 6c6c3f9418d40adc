-- Vitalbridge buffer, schema version 7: reading bodies in format version 2 (binary).
--
-- No table changes. From this schema on the gateway writes new bodies (`readings.body`,
-- `unbound.body`, a reading's dead letter) in body format 2 (gateway/src/buffer/codec/
-- binary.rs); rows already here keep format 1 (JSON) and are still read. The migration is
-- here so a gateway older than schema 7, which cannot read format 2, refuses this buffer at
-- open (an applied migration it does not know) instead of setting aside every reading it
-- cannot decode. The row below says so to someone reading the file with `sqlite3`.
INSERT INTO meta (name, value) VALUES ('body_format', '2');
