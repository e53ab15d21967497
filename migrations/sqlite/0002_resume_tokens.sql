-- Resume tokens (see src/auth/token.rs): only their SHA-256 is kept.
CREATE TABLE resume_tokens (
    token_hash TEXT    NOT NULL PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users(id),
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX resume_tokens_user ON resume_tokens (user_id, expires_at);
