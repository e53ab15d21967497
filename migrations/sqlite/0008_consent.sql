-- Consent (docs/protocol.md, "Friend requests" and "Groups: private groups
-- and roles").
--
-- Members gain the role 'admin' and the position they joined at: a private
-- group shows a member nothing from before it (existing members joined at
-- 0, so they keep seeing what they saw). SQLite cannot change a CHECK in
-- place, so the table is rebuilt.
CREATE TABLE group_members_new (
    group_id   INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    role       TEXT    NOT NULL CHECK (role IN ('creator', 'admin', 'normal')),
    joined_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
INSERT INTO group_members_new (group_id, user_id, role)
    SELECT group_id, user_id, role FROM group_members;
DROP TABLE group_members;
ALTER TABLE group_members_new RENAME TO group_members;
CREATE INDEX group_members_by_user ON group_members(user_id);

-- A private group is joined only by invitation or an approved request.
ALTER TABLE chat_groups ADD COLUMN private INTEGER NOT NULL DEFAULT 0;

-- `from_id` asked `to_id` to be friends. `state` 0: pending; 1: declined
-- (the asker is not told, and asking again changes nothing, until it
-- withdraws the request); 2: withdrawn less than a day ago (it still
-- counts in the asker's requests of the day).
CREATE TABLE friend_requests (
    from_id    INTEGER NOT NULL,
    to_id      INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    state      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (from_id, to_id)
) WITHOUT ROWID;
CREATE INDEX friend_requests_by_to ON friend_requests (to_id);

-- A pending way into a group: kind 0, `user_id` is invited (by `by_id`)
-- and accepts; kind 1, `user_id` asked and an admin approves.
CREATE TABLE group_invites (
    group_id   INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    kind       INTEGER NOT NULL,
    by_id      INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
CREATE INDEX group_invites_by_user ON group_invites (user_id);
