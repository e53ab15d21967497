//! Presence in Redis: who is online on which node process. [`Presence`]
//! runs the Lua scripts that claim, renew, release and look up; each is one
//! round trip, whatever the number of users.
//!
//! `P:user:ID` holds `NODE|INCARNATION|SESSION`; `P:node:NODE` holds the
//! node process's incarnation under a lease. A user is online only while
//! the process named in its key still holds its node's lease.

use redis::Script;

use super::conn::Conn;
use super::{Keys, unavailable};
use crate::hub::HubError;
use crate::model::UserId;

/// Claims `KEYS[1]` for `ARGV[1]` (`NODE|INCARNATION|SESSION`) unless a live
/// process other than ours (incarnation `ARGV[3]`) holds it. `ARGV[2]` is the
/// node-key prefix. (Our own process reserves users locally before claiming,
/// so a key of ours here is a leftover.)
const CLAIM: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local node, inc = string.match(cur, '^(.-)|(.-)|')
  if node and inc ~= ARGV[3] and redis.call('GET', ARGV[2] .. node) == inc then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
";

/// Makes `KEYS[1]` hold `ARGV[1]` whoever held it, and returns the previous
/// holder (empty when none, or when it was this very session): a login
/// takes over from an older session of the same user, which its node is
/// then told to close.
const TAKEOVER: &str = r"
local cur = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
if cur and cur ~= ARGV[1] then return cur end
return ''
";

/// Renews the node's lease `KEYS[1]` (our incarnation `ARGV[2]`) for
/// `ARGV[1]` ms; returns whether it was still ours (if not, Redis lost our
/// presence keys or we were away too long, and they must be claimed again).
const RENEW: &str = r"
local cur = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
if cur == ARGV[2] then return 1 end
return 0
";

/// Deletes `KEYS[i]` if it still holds `ARGV[i]`.
const RELEASE: &str = r"
local n = 0
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[i] then
    n = n + redis.call('DEL', k)
  end
end
return n
";

/// For each presence key, 1 when the process holding it is alive.
/// `ARGV[1]`: node-key prefix.
const ONLINE: &str = r"
local out = {}
for i, k in ipairs(KEYS) do
  out[i] = 0
  local cur = redis.call('GET', k)
  if cur then
    local node, inc = string.match(cur, '^(.-)|(.-)|')
    if node and redis.call('GET', ARGV[1] .. node) == inc then out[i] = 1 end
  end
end
return out
";

/// This node process's presence: its lease and its users' keys.
pub(super) struct Presence {
    conn: Conn,
    keys: Keys,
    /// How long the lease lasts without renewal.
    ttl: std::time::Duration,
    renew: Script,
    claim: Script,
    takeover: Script,
    release: Script,
    online: Script,
}

impl Presence {
    pub(super) fn new(conn: Conn, keys: Keys, ttl: std::time::Duration) -> Self {
        Presence {
            conn,
            keys,
            ttl,
            renew: Script::new(RENEW),
            claim: Script::new(CLAIM),
            takeover: Script::new(TAKEOVER),
            release: Script::new(RELEASE),
            online: Script::new(ONLINE),
        }
    }

    /// Renews the node's lease; `Ok(false)` when it had lapsed.
    pub(super) async fn renew_lease(&self) -> Result<bool, HubError> {
        let mut conn = self.conn.clone();
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let existed: i64 = self
            .renew
            .key(self.keys.lease())
            .arg(ttl)
            .arg(&self.keys.incarnation)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(existed == 1)
    }

    /// Whether Redis answers and still holds this process's lease.
    pub(super) async fn lease_held(&self) -> Result<bool, HubError> {
        let mut conn = self.conn.clone();
        let held: Option<String> = redis::cmd("GET")
            .arg(self.keys.lease())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(held.as_deref() == Some(self.keys.incarnation.as_str()))
    }

    /// Gives up the node's lease (graceful shutdown): its users are offline
    /// at once rather than when the lease runs out.
    pub(super) async fn drop_lease(&self) {
        let mut conn = self.conn.clone();
        let gone: Result<i64, _> = redis::AsyncCommands::del(&mut conn, self.keys.lease()).await;
        if let Err(e) = gone {
            tracing::warn!(error = %e, "could not remove the node's lease; it expires by itself");
        }
    }

    /// Makes `session` of this process hold `user`, whoever held it, and
    /// returns the previous holder (empty when none).
    pub(super) async fn take_over(
        &self,
        user: UserId,
        session_id: u64,
    ) -> Result<String, HubError> {
        let mut conn = self.conn.clone();
        self.takeover
            .key(self.keys.user(user))
            .arg(self.keys.holder(session_id))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    /// Claims `user` for `session` unless a live session elsewhere holds it:
    /// `Ok(true)` if this process now holds the user.
    pub(super) async fn claim(&self, user: UserId, session_id: u64) -> Result<bool, HubError> {
        let mut conn = self.conn.clone();
        let claimed: i64 = self
            .claim
            .key(self.keys.user(user))
            .arg(self.keys.holder(session_id))
            .arg(self.keys.node_prefix())
            .arg(&self.keys.incarnation)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(claimed == 1)
    }

    /// Clears the keys of `sessions` that still name them.
    pub(super) async fn release(&self, sessions: &[(UserId, u64)]) {
        if sessions.is_empty() {
            return;
        }
        let mut invocation = self.release.prepare_invoke();
        for (u, _) in sessions {
            invocation.key(self.keys.user(*u));
        }
        for (_, s) in sessions {
            invocation.arg(self.keys.holder(*s));
        }
        let mut conn = self.conn.clone();
        let released: Result<i64, _> = invocation.invoke_async(&mut conn).await;
        if let Err(e) = released {
            // The node's lease still bounds how long they look online.
            tracing::warn!(error = %e, "could not clear presence");
        }
    }

    /// Whether each of `users` is online anywhere.
    pub(super) async fn online(&self, users: &[UserId]) -> Result<Vec<bool>, HubError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.online.prepare_invoke();
        for u in users {
            invocation.key(self.keys.user(*u));
        }
        invocation.arg(self.keys.node_prefix());
        let mut conn = self.conn.clone();
        let flags: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(flags.into_iter().map(|f| f == 1).collect())
    }
}
