-- The staging log's mark (src/store/stage.rs): the lsn of the last batch
-- of messages and cursor moves whose rows are committed here, written in
-- the same transaction as those rows. At start the log's records past it
-- are applied again.
CREATE TABLE stage_mark (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    lsn INTEGER NOT NULL
);
INSERT INTO stage_mark (id, lsn) VALUES (1, 0);
