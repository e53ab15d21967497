-- See migrations/sqlite/0008_consent.sql. `role` is a VARCHAR(8) here,
-- which 'admin' fits.
ALTER TABLE group_members ADD COLUMN joined_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE chat_groups ADD COLUMN private BIGINT NOT NULL DEFAULT 0;

CREATE TABLE friend_requests (
    from_id    BIGINT NOT NULL,
    to_id      BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    state      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (from_id, to_id),
    KEY friend_requests_by_to (to_id)
) ENGINE=InnoDB;

CREATE TABLE group_invites (
    group_id   BIGINT NOT NULL,
    user_id    BIGINT NOT NULL,
    kind       BIGINT NOT NULL,
    by_id      BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (group_id, user_id),
    KEY group_invites_by_user (user_id)
) ENGINE=InnoDB;
