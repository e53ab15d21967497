-- The same model as the SQLite schema (see migrations/sqlite), in MySQL /
-- MariaDB terms. Names compare byte for byte (utf8mb4_bin) so that both
-- backends agree on what "name taken" means.
CREATE TABLE users (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name          VARCHAR(50)  NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    created_at    BIGINT       NOT NULL,
    UNIQUE KEY users_name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE friends (
    user_id   BIGINT NOT NULL,
    friend_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, friend_id)
) ENGINE=InnoDB;

CREATE TABLE chat_groups (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name        VARCHAR(50)  NOT NULL,
    description VARCHAR(200) NOT NULL DEFAULT '',
    created_at  BIGINT       NOT NULL,
    UNIQUE KEY chat_groups_name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE group_members (
    group_id BIGINT     NOT NULL,
    user_id  BIGINT     NOT NULL,
    role     VARCHAR(8) NOT NULL,
    PRIMARY KEY (group_id, user_id),
    KEY group_members_by_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=ascii;

-- Several nodes append to the same conversation: the row lock taken when
-- last_seq is bumped orders them, so sequence numbers have no gaps or twins.
CREATE TABLE conversations (
    conv     VARCHAR(48) NOT NULL PRIMARY KEY,
    last_seq BIGINT      NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=ascii;

CREATE TABLE messages (
    conv        VARCHAR(48) CHARACTER SET ascii NOT NULL,
    seq         BIGINT      NOT NULL,
    sender_id   BIGINT      NOT NULL,
    sender_name VARCHAR(50) NOT NULL,
    body        MEDIUMTEXT  NOT NULL,
    sent_at     BIGINT      NOT NULL,
    PRIMARY KEY (conv, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE cursors (
    user_id       BIGINT      NOT NULL,
    conv          VARCHAR(48) NOT NULL,
    delivered_seq BIGINT      NOT NULL,
    PRIMARY KEY (user_id, conv)
) ENGINE=InnoDB DEFAULT CHARSET=ascii;
