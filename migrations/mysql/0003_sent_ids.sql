-- The ids senders gave their messages (see migrations/sqlite). The primary
-- key also settles a resend racing its original on another node: the later
-- insert waits for the earlier one's commit, fails, and its batch is retried.
CREATE TABLE sent_ids (
    sender_id BIGINT      NOT NULL,
    client_id VARCHAR(64) NOT NULL,
    conv      VARCHAR(48) NOT NULL,
    seq       BIGINT      NOT NULL,
    PRIMARY KEY (sender_id, client_id)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_bin;
