-- The staging log's mark (src/store/stage.rs): the lsn of the last batch
-- of messages and cursor moves whose rows are committed here, written in
-- the same transaction as those rows. At start the log's records past it
-- are applied again. `db_id` is this database's own random id, written in
-- every record of the log: a database deleted and made afresh beside an old
-- log does not take that log's records.
CREATE TABLE stage_mark (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    lsn INTEGER NOT NULL,
    db_id INTEGER NOT NULL
);
INSERT INTO stage_mark (id, lsn, db_id) VALUES (1, 0, random() & 9223372036854775807);
