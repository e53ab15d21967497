-- See migrations/sqlite/0006_changes.sql.
ALTER TABLE messages ADD COLUMN kind BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN ref_seq BIGINT NOT NULL DEFAULT 0;
