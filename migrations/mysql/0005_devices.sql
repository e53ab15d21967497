-- Many devices per user: see migrations/sqlite/0004_devices.sql.
CREATE TABLE device_cursors (
    user_id       BIGINT      NOT NULL,
    device        VARCHAR(64) NOT NULL,
    conv          VARCHAR(48) NOT NULL,
    delivered_seq BIGINT      NOT NULL,
    PRIMARY KEY (user_id, device, conv)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_bin;

CREATE TABLE devices (
    user_id    BIGINT      NOT NULL,
    device     VARCHAR(64) NOT NULL,
    created_at BIGINT      NOT NULL,
    last_seen  BIGINT      NOT NULL,
    PRIMARY KEY (user_id, device)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_bin;

INSERT INTO devices (user_id, device, created_at, last_seen)
    SELECT id, '', created_at, created_at FROM users;

ALTER TABLE messages ADD COLUMN sender_device VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '';

ALTER TABLE resume_tokens ADD COLUMN device VARCHAR(64) NOT NULL DEFAULT '';
