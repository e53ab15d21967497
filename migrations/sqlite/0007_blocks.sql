-- Blocking (docs/protocol.md, "Blocking"): `user_id` blocks `blocked_id`.
-- Neither messages the other one to one, befriends the other or sees the
-- other's presence; their friendship ended when the block began.
CREATE TABLE blocks (
    user_id    INTEGER NOT NULL,
    blocked_id INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, blocked_id)
) WITHOUT ROWID;
CREATE INDEX blocks_by_blocked ON blocks (blocked_id);

-- A user who takes one-to-one messages from its friends only.
ALTER TABLE users ADD COLUMN only_friends INTEGER NOT NULL DEFAULT 0;
