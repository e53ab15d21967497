//! Presence in Redis: the Lua scripts that claim, renew, release and look up
//! who is online where. Each is one round trip, whatever the number of users.
//!
//! `P:user:ID` holds `NODE|INCARNATION|SESSION`; `P:node:NODE` holds the
//! node process's incarnation under a lease. A user is online only while
//! the process named in its key still holds its node's lease.

/// Claims `KEYS[1]` for `ARGV[1]` (`NODE|INCARNATION|SESSION`) unless a live
/// process other than ours (incarnation `ARGV[3]`) holds it. `ARGV[2]` is the
/// node-key prefix. (Our own process reserves users locally before claiming,
/// so a key of ours here is a leftover.)
pub(super) const CLAIM: &str = r"
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
pub(super) const TAKEOVER: &str = r"
local cur = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
if cur and cur ~= ARGV[1] then return cur end
return ''
";

/// Renews the node's lease `KEYS[1]` (our incarnation `ARGV[2]`) for
/// `ARGV[1]` ms; returns whether it was still ours (if not, Redis lost our
/// presence keys or we were away too long, and they must be claimed again).
pub(super) const RENEW: &str = r"
local cur = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
if cur == ARGV[2] then return 1 end
return 0
";

/// Deletes `KEYS[i]` if it still holds `ARGV[i]`.
pub(super) const RELEASE: &str = r"
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
pub(super) const ONLINE: &str = r"
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

/// Publishes `ARGV[1]` (header and frame) to the channel (`ARGV[2]` .. node) of every node
/// other than ours (`ARGV[3]`) holding one of the receivers, prefixed with
/// those receivers' ids. `KEYS[i]` is the presence key of receiver `ARGV[3+i]`.
pub(super) const ROUTE: &str = r"
local by_node = {}
for i, k in ipairs(KEYS) do
  local cur = redis.call('GET', k)
  if cur then
    local node = string.match(cur, '^(.-)|')
    if node and node ~= ARGV[3] then
      by_node[node] = (by_node[node] or '') .. ARGV[3 + i] .. ','
    end
  end
end
local n = 0
for node, ids in pairs(by_node) do
  redis.call('PUBLISH', ARGV[2] .. node, ids .. '\n' .. ARGV[1])
  n = n + 1
end
return n
";
