-- Users, friends and groups keep the original's shape (with hashed
-- passwords and no stored presence: presence lives in the hub, so a crash
-- cannot leave anyone "online" forever).
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
);

-- Friendship is mutual: both directions are stored, so "my friends" is one
-- index range.
CREATE TABLE friends (
    user_id   INTEGER NOT NULL REFERENCES users(id),
    friend_id INTEGER NOT NULL REFERENCES users(id),
    PRIMARY KEY (user_id, friend_id)
) WITHOUT ROWID;

CREATE TABLE chat_groups (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    description TEXT    NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL
);

CREATE TABLE group_members (
    group_id INTEGER NOT NULL REFERENCES chat_groups(id),
    user_id  INTEGER NOT NULL REFERENCES users(id),
    role     TEXT    NOT NULL CHECK (role IN ('creator', 'normal')),
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
CREATE INDEX group_members_by_user ON group_members(user_id);

-- One row per conversation ('d:LOW:HIGH' or 'g:GROUP'): the last sequence
-- number handed out.
CREATE TABLE conversations (
    conv     TEXT    PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;

-- Every chat message, stored once (a group message is not copied per member).
CREATE TABLE messages (
    conv        TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    sender_id   INTEGER NOT NULL,
    sender_name TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    sent_at     INTEGER NOT NULL,
    PRIMARY KEY (conv, seq)
) WITHOUT ROWID;

-- How far each participant has been delivered in each conversation.
-- Offline messages are simply the messages past this position.
CREATE TABLE cursors (
    user_id       INTEGER NOT NULL,
    conv          TEXT    NOT NULL,
    delivered_seq INTEGER NOT NULL,
    PRIMARY KEY (user_id, conv)
) WITHOUT ROWID;
