-- How far each user has read each conversation (read receipts and unread
-- counts), per user rather than per device: reading on the phone clears
-- the laptop's unread count. No row: read up to the user's base position
-- in `cursors` (where the conversation began for it).
CREATE TABLE read_marks (
    user_id  INTEGER NOT NULL,
    conv     TEXT    NOT NULL,
    read_seq INTEGER NOT NULL,
    PRIMARY KEY (user_id, conv)
) WITHOUT ROWID;
CREATE INDEX read_marks_by_conv ON read_marks (conv);
