-- One row per write batch, written in the batch's own transaction, when the
-- node writes through one of several database hosts (a Galera cluster). A
-- batch whose connection died around COMMIT may or may not have committed;
-- the retry on the next host looks for its mark first and, when found,
-- answers with the outcome recorded here instead of storing the messages
-- again (under new sequence numbers). Old marks are pruned by the writer.
CREATE TABLE batch_marks (
    token   CHAR(32)   NOT NULL PRIMARY KEY,
    outcome MEDIUMTEXT NOT NULL,
    at      BIGINT     NOT NULL,
    KEY batch_marks_at (at)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_bin;
