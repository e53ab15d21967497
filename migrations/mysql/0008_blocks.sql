-- See migrations/sqlite/0007_blocks.sql.
CREATE TABLE blocks (
    user_id    BIGINT NOT NULL,
    blocked_id BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, blocked_id),
    KEY blocks_by_blocked (blocked_id)
) ENGINE=InnoDB;

ALTER TABLE users ADD COLUMN only_friends BIGINT NOT NULL DEFAULT 0;
