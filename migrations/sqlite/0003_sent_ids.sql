-- The ids senders gave their messages (the `cmid` of a chat request): a
-- resend with an id found here is answered with the stored message instead
-- of being stored again. Only messages sent with an id have a row.
CREATE TABLE sent_ids (
    sender_id INTEGER NOT NULL,
    client_id TEXT    NOT NULL,
    conv      TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    PRIMARY KEY (sender_id, client_id)
) WITHOUT ROWID;
