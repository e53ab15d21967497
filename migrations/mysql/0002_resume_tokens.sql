-- Resume tokens (see src/auth/token.rs): only their SHA-256 is kept.
CREATE TABLE resume_tokens (
    token_hash CHAR(64) NOT NULL PRIMARY KEY,
    user_id    BIGINT   NOT NULL,
    expires_at BIGINT   NOT NULL,
    KEY resume_tokens_user (user_id, expires_at),
    CONSTRAINT resume_tokens_user_fk FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_bin;
