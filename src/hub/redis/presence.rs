//! Presence in Redis: which devices of whom are online on which node
//! process. [`Presence`] runs the Lua scripts that claim, renew, release
//! and look up; each is one round trip, whatever the number of users.
//!
//! `P:devices:ID` is a hash from each online device of the user (the
//! classic device is the empty field) to `NODE|INCARNATION|SESSION`;
//! `P:node:NODE` holds the node process's incarnation under a lease. A
//! device is online only while the process named in its field still holds
//! its node's lease; fields of processes that are gone are dropped when the
//! user next logs in.

use redis::Script;

use super::conn::Conn;
use super::{Keys, unavailable};
use crate::hub::HubError;
use crate::model::{Device, UserId};

/// Claims field `ARGV[1]` of `KEYS[1]` for `ARGV[2]` (`NODE|INCARNATION|SESSION`)
/// unless a live process other than ours (incarnation `ARGV[4]`) holds it.
/// `ARGV[3]` is the node-key prefix. (Our own process reserves devices
/// locally before claiming, so a field of ours here is a leftover.)
/// Returns `'1'` when claimed (`'0'` when not), then the holders of the
/// user's other devices that are alive.
const CLAIM: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local node, inc = string.match(cur, '^(.-)|(.-)|')
  if node and inc ~= ARGV[4] and redis.call('GET', ARGV[3] .. node) == inc then
    return {'0'}
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local out = {'1'}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    local node, inc = string.match(all[i + 1], '^(.-)|(.-)|')
    if node and redis.call('GET', ARGV[3] .. node) == inc then
      out[#out + 1] = all[i + 1]
    end
  end
end
return out
";

/// Makes field `ARGV[1]` (the device) of `KEYS[1]` hold `ARGV[2]` whoever
/// held it. Returns the previous holder of that device (empty when none, or
/// when it was this very session), then the holders of the user's other
/// devices that are alive; fields of processes that are gone (`ARGV[3]`:
/// node-key prefix) are dropped on the way.
const TAKEOVER: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local out = {''}
if cur and cur ~= ARGV[2] then out[1] = cur end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    local node, inc = string.match(all[i + 1], '^(.-)|(.-)|')
    if node and redis.call('GET', ARGV[3] .. node) == inc then
      out[#out + 1] = all[i + 1]
    else
      redis.call('HDEL', KEYS[1], all[i])
    end
  end
end
return out
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

/// Deletes field `ARGV[2i-1]` of `KEYS[i]` if it still holds `ARGV[2i]`.
const RELEASE: &str = r"
local n = 0
for i, k in ipairs(KEYS) do
  if redis.call('HGET', k, ARGV[2 * i - 1]) == ARGV[2 * i] then
    n = n + redis.call('HDEL', k, ARGV[2 * i - 1])
  end
end
return n
";

/// For each presence key, 1 when a process holding one of its devices is
/// alive. `ARGV[1]`: node-key prefix.
const ONLINE: &str = r"
local out = {}
for i, k in ipairs(KEYS) do
  out[i] = 0
  for _, cur in ipairs(redis.call('HVALS', k)) do
    local node, inc = string.match(cur, '^(.-)|(.-)|')
    if node and redis.call('GET', ARGV[1] .. node) == inc then
      out[i] = 1
      break
    end
  end
end
return out
";

/// The devices of `KEYS[1]` held by a live process, each followed by its
/// holder. `ARGV[1]`: node-key prefix.
const DEVICES: &str = r"
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local node, inc = string.match(all[i + 1], '^(.-)|(.-)|')
  if node and redis.call('GET', ARGV[1] .. node) == inc then
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  end
end
return out
";

/// What a takeover found.
pub(super) struct TakenOver {
    /// The holder of the same device before (empty when none).
    pub(super) previous: String,
    /// The holders of the user's other devices, alive.
    pub(super) others: Vec<String>,
}

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
    devices: Script,
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
            devices: Script::new(DEVICES),
        }
    }

    /// What this process's presence values start with.
    pub(super) fn holder_prefix(&self) -> String {
        self.keys.holder_prefix()
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

    /// Makes `session` of this process hold `device` of `user`, whoever
    /// held it: what it found.
    pub(super) async fn take_over(
        &self,
        user: UserId,
        device: &Device,
        session_id: u64,
    ) -> Result<TakenOver, HubError> {
        let mut conn = self.conn.clone();
        let mut found: Vec<String> = self
            .takeover
            .key(self.keys.user(user))
            .arg(device.as_str())
            .arg(self.keys.holder(session_id))
            .arg(self.keys.node_prefix())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let previous = if found.is_empty() {
            String::new()
        } else {
            found.remove(0)
        };
        Ok(TakenOver {
            previous,
            others: found,
        })
    }

    /// The devices of `user` online now, each with its holder.
    pub(super) async fn devices(&self, user: UserId) -> Result<Vec<(Device, String)>, HubError> {
        let mut conn = self.conn.clone();
        let flat: Vec<String> = self
            .devices
            .key(self.keys.user(user))
            .arg(self.keys.node_prefix())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(flat
            .chunks(2)
            .filter_map(|p| match p {
                [d, h] => Some((Device::stored(d), h.clone())),
                _ => None,
            })
            .collect())
    }

    /// Claims `device` of `user` for `session` unless a live session
    /// elsewhere holds it: `Ok(Some(others))` if this process now holds it,
    /// with the holders of the user's other live devices.
    pub(super) async fn claim(
        &self,
        user: UserId,
        device: &Device,
        session_id: u64,
    ) -> Result<Option<Vec<String>>, HubError> {
        let mut conn = self.conn.clone();
        let mut found: Vec<String> = self
            .claim
            .key(self.keys.user(user))
            .arg(device.as_str())
            .arg(self.keys.holder(session_id))
            .arg(self.keys.node_prefix())
            .arg(&self.keys.incarnation)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if found.first().map(String::as_str) != Some("1") {
            return Ok(None);
        }
        found.remove(0);
        Ok(Some(found))
    }

    /// Clears the fields of `sessions` that still name them.
    pub(super) async fn release(&self, sessions: &[(UserId, Device, u64)]) {
        if sessions.is_empty() {
            return;
        }
        let mut invocation = self.release.prepare_invoke();
        for (u, _, _) in sessions {
            invocation.key(self.keys.user(*u));
        }
        for (_, d, s) in sessions {
            invocation.arg(d.as_str()).arg(self.keys.holder(*s));
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
