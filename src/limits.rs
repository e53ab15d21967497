//! What one connection and one source address may take of a node.
//!
//! [`Budget`] is a connection's request and byte allowance: a connection
//! over it waits before its next frame is read (TCP pushes back on the
//! client) and is told once that it is being slowed, so a flooder slows down
//! itself and nobody else. [`ConnsPerAddr`] counts open connections per
//! source address, so that idle sockets from one address cannot fill the
//! node's connection cap and lock everyone else out. [`Gate`] holds both
//! for every listener, and says when the node is under pressure, so that
//! connections that have not logged in are closed early only then.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;
use crate::metrics::{METRICS, inc};

/// The source address as the limits count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrKey(IpAddr);

impl AddrKey {
    /// The key for `ip`: IPv4 as is (also when mapped into IPv6), IPv6 by
    /// its /64.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => AddrKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey(IpAddr::V4(v4)),
                None => {
                    let mask = !0u128 << 64;
                    AddrKey(IpAddr::V6((u128::from(v6) & mask).into()))
                }
            },
        }
    }

    pub fn is_loopback(&self) -> bool {
        self.0.is_loopback()
    }
}

/// A token bucket: `rate` tokens a second, holding at most `burst`; rate 0
/// means no limit. One type for every allowance of the node: a
/// connection's requests and bytes ([`Budget`]), the node's logins
/// (admission), registrations per address (the guard).
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket at `now` (a burst below one token is one).
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        let burst = burst.max(1.0);
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// When it was last taken from.
    pub fn last(&self) -> Instant {
        self.last
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes `n` at `now`, going into debt if need be, and says how long
    /// until the debt is paid (zero within the burst). A single take larger
    /// than the whole burst still passes, after the wait its size earns.
    pub fn take(&mut self, n: f64, now: Instant) -> Duration {
        if self.rate == 0.0 {
            return Duration::ZERO;
        }
        self.refill(now);
        self.tokens -= n;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Takes one token at `now` if there is one; else says how long until
    /// there is, taking nothing.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// One connection's allowance of requests and bytes.
#[derive(Debug, Clone)]
pub struct Budget {
    requests: Bucket,
    bytes: Bucket,
    /// When the client was last told it is being slowed down.
    told: Option<Instant>,
}

/// How often at most a slowed-down client is told so again.
const TELL_EVERY: Duration = Duration::from_secs(10);

impl Budget {
    pub fn new(limits: &Limits) -> Self {
        Self::new_at(limits, Instant::now())
    }

    fn new_at(limits: &Limits, now: Instant) -> Self {
        // A burst never below the rate: a second's worth is always allowed.
        let bucket =
            |rate: u32, burst: u32| Bucket::new(f64::from(rate), f64::from(burst.max(rate)), now);
        Budget {
            requests: bucket(limits.request_rate, limits.request_burst),
            bytes: bucket(limits.byte_rate, limits.byte_burst),
            told: None,
        }
    }

    /// Charges one frame of `len` bytes (and one request, if it counts as
    /// one); returns how long the connection must wait before its next
    /// frame (zero within budget), and whether the client should be told it
    /// is being slowed.
    pub fn charge(&mut self, len: usize, request: bool) -> (Duration, bool) {
        self.charge_at(len, request, Instant::now())
    }

    fn charge_at(&mut self, len: usize, request: bool, now: Instant) -> (Duration, bool) {
        let requests = if request {
            self.requests.take(1.0, now)
        } else {
            Duration::ZERO
        };
        let wait = requests.max(self.bytes.take(len as f64, now));
        let tell = !wait.is_zero()
            && self
                .told
                .is_none_or(|t| now.saturating_duration_since(t) >= TELL_EVERY);
        if tell {
            self.told = Some(now);
        }
        (wait, tell)
    }
}

/// The address to hold to the per-address limits: none for loopback when
/// the limits exempt it (a local nginx, benchmarks, tests).
pub fn counted(limits: &Limits, addr: Option<AddrKey>) -> Option<AddrKey> {
    addr.filter(|a| !(limits.exempt_loopback && a.is_loopback()))
}

/// Open connections per source address.
#[derive(Debug, Default)]
pub struct ConnsPerAddr {
    open: Mutex<HashMap<AddrKey, usize>>,
}

/// One counted connection; uncounted when dropped.
#[derive(Debug)]
pub struct AddrSlot {
    owner: Arc<ConnsPerAddr>,
    addr: AddrKey,
}

impl ConnsPerAddr {
    /// How many are counted for `addr`.
    pub fn count(&self, addr: AddrKey) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&addr).copied().unwrap_or(0)
    }

    /// Counts a connection from `addr`, or refuses it if `addr` already
    /// has `max` open.
    pub fn open(self: &Arc<Self>, addr: AddrKey, max: usize) -> Option<AddrSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(addr).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddrSlot {
            owner: self.clone(),
            addr,
        })
    }
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.addr);
            }
        }
    }
}

/// The node's connection cap and per-address counts, shared by every
/// listener so that no transport can get round them; and the count of
/// connections not logged in per address, which tells when anonymous
/// sockets press on the node.
#[derive(Debug, Clone)]
pub struct Gate {
    slots: Arc<Semaphore>,
    max: usize,
    per_addr: Arc<ConnsPerAddr>,
    anonymous: Arc<ConnsPerAddr>,
}

/// One connection counted as not logged in; uncounted when dropped (at
/// login, or when the connection ends).
#[derive(Debug)]
pub struct Anonymous(#[allow(dead_code)] Option<AddrSlot>);

impl Gate {
    /// A gate admitting at most `max_connections` at once.
    pub fn new(max_connections: usize) -> Gate {
        Gate {
            slots: Arc::new(Semaphore::new(max_connections)),
            max: max_connections,
            per_addr: Arc::new(ConnsPerAddr::default()),
            anonymous: Arc::new(ConnsPerAddr::default()),
        }
    }

    /// The per-address counts of open connections.
    pub fn per_addr(&self) -> &Arc<ConnsPerAddr> {
        &self.per_addr
    }

    /// A place under the node's cap, or why not.
    pub fn slot(&self) -> Result<OwnedSemaphorePermit, String> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            tracing::warn!("connection limit reached, refusing a client");
            inc(&METRICS.connections_refused);
            "server is at its connection limit, try again later".to_owned()
        })
    }

    /// A place under the node's cap and one under `ip`'s, or why not.
    pub fn places(
        &self,
        limits: &Limits,
        ip: std::net::IpAddr,
    ) -> Result<(OwnedSemaphorePermit, Option<AddrSlot>), String> {
        let slot = self.slot()?;
        Ok((slot, addr_slot(&self.per_addr, limits, ip)?))
    }

    /// Counts a connection from `addr` as not logged in (loopback only
    /// if the limits do not exempt it).
    pub fn anonymous(&self, limits: &Limits, addr: Option<AddrKey>) -> Anonymous {
        Anonymous(counted(limits, addr).and_then(|a| self.anonymous.open(a, usize::MAX)))
    }

    /// Why connections that have not logged in should make room now, if
    /// they should: the node is near its connection cap (nine tenths of
    /// it in use), or `addr` holds more anonymous connections than
    /// `limits.anonymous_per_addr`.
    pub fn pressure(&self, limits: &Limits, addr: Option<AddrKey>) -> Option<&'static str> {
        let in_use = self.max.saturating_sub(self.slots.available_permits());
        if self.max >= 10 && in_use >= self.max - self.max / 10 {
            return Some("the server is near its connection limit");
        }
        let addr = counted(limits, addr)?;
        (self.anonymous.count(addr) > limits.anonymous_per_addr)
            .then_some("your address holds many connections that have not logged in")
    }
}

/// Counts a connection from `ip` against its address's cap, or says why
/// not. Loopback is exempt unless the limits say otherwise.
pub fn addr_slot(
    per_addr: &Arc<ConnsPerAddr>,
    limits: &Limits,
    ip: std::net::IpAddr,
) -> Result<Option<AddrSlot>, String> {
    let Some(addr) = counted(limits, Some(AddrKey::of(ip))) else {
        return Ok(None);
    };
    match per_addr.open(addr, limits.conns_per_addr) {
        Some(s) => Ok(Some(s)),
        None => {
            tracing::debug!(%ip, "per-address connection limit reached");
            inc(&METRICS.connections_refused);
            inc(&METRICS.limited);
            Err(format!(
                "too many connections from your address (at most {})",
                limits.conns_per_addr
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_over_its_request_budget_waits_and_is_told_once() {
        let limits = Limits {
            request_rate: 10,
            request_burst: 20,
            byte_rate: 0,
            ..Limits::default()
        };
        let t0 = Instant::now();
        let mut b = Budget::new_at(&limits, t0);
        for _ in 0..20 {
            assert_eq!(b.charge_at(10, true, t0), (Duration::ZERO, false));
        }
        let (wait, tell) = b.charge_at(10, true, t0);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert!(tell);
        let (wait, tell) = b.charge_at(10, true, t0);
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-9, "{wait:?}");
        assert!(!tell, "told once");
        // after paying the debt, within budget again
        assert_eq!(
            b.charge_at(10, true, t0 + Duration::from_millis(300)),
            (Duration::ZERO, false)
        );
    }

    #[test]
    fn bytes_are_budgeted_too_and_zero_means_unlimited() {
        let limits = Limits {
            request_rate: 0,
            byte_rate: 1000,
            byte_burst: 1000,
            ..Limits::default()
        };
        let t0 = Instant::now();
        let mut b = Budget::new_at(&limits, t0);
        assert_eq!(b.charge_at(1000, true, t0).0, Duration::ZERO);
        let (wait, _) = b.charge_at(500, true, t0);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        let limits = Limits {
            request_rate: 0,
            byte_rate: 0,
            ..Limits::default()
        };
        let mut b = Budget::new(&limits);
        for _ in 0..10_000 {
            assert_eq!(b.charge_at(1 << 20, true, t0).0, Duration::ZERO);
        }
    }

    #[test]
    fn connections_per_address_are_counted_until_closed() {
        let c = Arc::new(ConnsPerAddr::default());
        let a = AddrKey::of("203.0.113.1".parse().expect("ip"));
        let b = AddrKey::of("203.0.113.2".parse().expect("ip"));
        let s1 = c.open(a, 2).expect("first");
        let _s2 = c.open(a, 2).expect("second");
        assert!(c.open(a, 2).is_none(), "third from one address");
        assert!(c.open(b, 2).is_some(), "another address");
        drop(s1);
        assert!(c.open(a, 2).is_some(), "a slot freed");
    }
}
