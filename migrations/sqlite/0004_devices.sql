-- Many devices per user (docs/protocol.md, "Devices").
--
-- `cursors` keeps one row per conversation a user takes part in: it says
-- that the user is in it (groups: since joining) and where every device of
-- the user starts there (the base). Each device's own position, once it
-- has moved, is in `device_cursors`; a device's position is the greater of
-- the two, so a row left behind by a device of a user who left and joined
-- again can never reach back before the join. The classic device (the
-- original client, and any session that names no device) is device ''.
CREATE TABLE device_cursors (
    user_id       INTEGER NOT NULL,
    device        TEXT    NOT NULL,
    conv          TEXT    NOT NULL,
    delivered_seq INTEGER NOT NULL,
    PRIMARY KEY (user_id, device, conv)
) WITHOUT ROWID;

-- The devices a user has logged in from; a new one starts at the furthest
-- any of the user's devices had got, and past the limit the one unused the
-- longest is forgotten.
CREATE TABLE devices (
    user_id    INTEGER NOT NULL,
    device     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    PRIMARY KEY (user_id, device)
) WITHOUT ROWID;

-- Every existing user has had the classic device: its positions are the
-- base rows as they stand.
INSERT INTO devices (user_id, device, created_at, last_seen)
    SELECT id, '', created_at, created_at FROM users;

-- The device a message came from does not get it back; the sender's other
-- devices do.
ALTER TABLE messages ADD COLUMN sender_device TEXT NOT NULL DEFAULT '';

-- A resume token resumes the device it was made for.
ALTER TABLE resume_tokens ADD COLUMN device TEXT NOT NULL DEFAULT '';
