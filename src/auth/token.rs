//! Resume tokens: a logged-in session's way back in without its password.
//!
//! A token is 32 random bytes from the OS, given to the client as 64 hex
//! digits. The server keeps only its SHA-256: 256 random bits cannot be
//! guessed, so a fast hash is enough (a slow one would bring back the
//! password hash's cost, which resuming exists to skip), and a copy of the
//! database lets nobody resume anyone's session.

use sha2::{Digest, Sha256};

/// Longest token text accepted; anything longer is refused unhashed.
pub const MAX_TOKEN_LEN: usize = 128;

/// A fresh token and its hash, or `None` if the OS has no randomness to give.
pub fn new_token() -> Option<(String, String)> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    let token = hex(&bytes);
    let hash = token_hash(&token);
    Some((token, hash))
}

/// What the store keeps for `token`.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_only_their_hash_matches() {
        let (t1, h1) = new_token().expect("randomness");
        let (t2, h2) = new_token().expect("randomness");
        assert_ne!(t1, t2);
        assert_eq!(t1.len(), 64);
        assert!(t1.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(token_hash(&t1), h1);
        assert_ne!(h1, h2);
        assert_ne!(h1, t1, "the hash is not the token");
        // SHA-256 of "abc", the standard test vector
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
