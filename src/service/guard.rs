//! Defences against password guessing and registration floods.
//!
//! Wrong passwords are counted per account and per source address. A few are
//! free (people mistype); after that each further login to that account, or
//! from that address, must wait: 1 s, then 2, 4, ... up to the lockout
//! maximum, answered at once (no hash computed) with errno 60 and
//! `retry_ms`. The right password only clears the account's count, never
//! the address's, so an attacker cannot reset its own count by logging into
//! an account of its own. Registrations are a token bucket per address.
//!
//! Everything is in memory, per node, and bounded: entries are forgotten
//! once quiet, and a table that is still full after a sweep evicts the
//! entries nearest to being forgotten. An IPv6 client is counted by its /64,
//! the block a single subscriber is usually given.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Limits;
use crate::limits::{AddrKey, Bucket};
use crate::model::UserId;

/// Entries one table keeps at most (about 64 bytes each).
const MAX_ENTRIES: usize = 100_000;
/// How long a table entry outlives its last event.
const FORGET_AFTER: Duration = Duration::from_secs(30 * 60);

/// Wrong passwords counted for one key.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    /// No login for this key before this.
    locked_until: Instant,
    last: Instant,
}

/// A bounded map that forgets quiet entries.
#[derive(Debug)]
struct Table<K, V> {
    map: HashMap<K, V>,
    /// Sweep when the map grows past this (doubles with the live size).
    sweep_at: usize,
}

impl<K: Hash + Eq + Copy, V: Copy> Table<K, V> {
    fn new() -> Self {
        Table {
            map: HashMap::new(),
            sweep_at: 1024,
        }
    }

    /// Makes room for one more entry, dropping those last touched before
    /// `now - FORGET_AFTER` (and, if still full, the oldest ones).
    fn make_room(&mut self, now: Instant, last: impl Fn(&V) -> Instant) {
        if self.map.len() < self.sweep_at {
            return;
        }
        self.map
            .retain(|_, v| now.saturating_duration_since(last(v)) < FORGET_AFTER);
        if self.map.len() >= MAX_ENTRIES {
            let mut ages: Vec<Instant> = self.map.values().map(&last).collect();
            let cut = ages.len() / 4;
            ages.select_nth_unstable(cut);
            let oldest_kept = ages[cut];
            self.map.retain(|_, v| last(v) > oldest_kept);
        }
        self.sweep_at = (self.map.len() * 2).clamp(1024, MAX_ENTRIES);
    }
}

/// Login throttling and registration limits of one node.
#[derive(Debug)]
pub struct Guard {
    limits: Limits,
    accounts: Mutex<Table<UserId, Failures>>,
    addrs: Mutex<Table<AddrKey, Failures>>,
    registrations: Mutex<Table<AddrKey, Bucket>>,
    stored: Mutex<DailyBytes>,
}

/// Message bytes stored per user on one UTC day. Counts are kept until the
/// day ends, however long a user pauses; a new day starts every count at
/// zero. Bounded: when full, the quarter with the smallest counts is
/// forgotten, so what an eviction hands back is the least quota possible.
#[derive(Debug, Default)]
struct DailyBytes {
    day: i64,
    used: HashMap<UserId, u64>,
}

impl DailyBytes {
    fn add(&mut self, user: UserId, bytes: u64, day: i64, max: u64) -> bool {
        if day != self.day {
            self.day = day;
            self.used.clear();
        }
        if self.used.len() >= MAX_ENTRIES && !self.used.contains_key(&user) {
            // Exactly a quarter, whatever the ties.
            let mut counts: Vec<(u64, UserId)> = self.used.iter().map(|(u, v)| (*v, *u)).collect();
            let cut = counts.len() / 4;
            counts.select_nth_unstable(cut);
            for (_, u) in &counts[..cut] {
                self.used.remove(u);
            }
        }
        let used = self.used.get(&user).copied().unwrap_or(0);
        let after = used.saturating_add(bytes);
        if after > max {
            return false;
        }
        self.used.insert(user, after);
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update is a single insert or remove: poison cannot leave a
    // table inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Guard {
    pub fn new(limits: &Limits) -> Self {
        Guard {
            limits: limits.clone(),
            accounts: Mutex::new(Table::new()),
            addrs: Mutex::new(Table::new()),
            registrations: Mutex::new(Table::new()),
            stored: Mutex::new(DailyBytes::default()),
        }
    }

    /// Whether `addr` is held to the per-address limits.
    pub fn limits_addr(&self, addr: Option<AddrKey>) -> Option<AddrKey> {
        crate::limits::counted(&self.limits, addr)
    }

    /// Whether a login to `account` from `addr` may be tried now, or how
    /// long it must wait.
    pub fn may_login(&self, account: UserId, addr: Option<AddrKey>) -> Result<(), Duration> {
        self.may_login_at(account, addr, Instant::now())
    }

    fn may_login_at(
        &self,
        account: UserId,
        addr: Option<AddrKey>,
        now: Instant,
    ) -> Result<(), Duration> {
        let wait = |f: Option<&Failures>| {
            f.map_or(Duration::ZERO, |f| {
                f.locked_until.saturating_duration_since(now)
            })
        };
        let mut longest = wait(lock(&self.accounts).map.get(&account));
        if let Some(a) = self.limits_addr(addr) {
            longest = longest.max(wait(lock(&self.addrs).map.get(&a)));
        }
        if longest.is_zero() {
            Ok(())
        } else {
            Err(longest)
        }
    }

    /// Counts a wrong password: against the account if it exists, and
    /// against the address.
    pub fn login_failed(&self, account: Option<UserId>, addr: Option<AddrKey>) {
        self.login_failed_at(account, addr, Instant::now());
    }

    fn login_failed_at(&self, account: Option<UserId>, addr: Option<AddrKey>, now: Instant) {
        let max = self.limits.lockout_max;
        if let Some(account) = account {
            fail(
                &mut lock(&self.accounts),
                account,
                self.limits.account_free_failures,
                max,
                now,
            );
        }
        if let Some(a) = self.limits_addr(addr) {
            fail(
                &mut lock(&self.addrs),
                a,
                self.limits.addr_free_failures,
                max,
                now,
            );
        }
    }

    /// The right password: the account's count starts again.
    pub fn login_succeeded(&self, account: UserId) {
        lock(&self.accounts).map.remove(&account);
    }

    /// Counts `bytes` more stored by `user` today (UTC), or refuses them if
    /// that would pass the daily quota. Per node: in a cluster a user's
    /// sessions are on one node at a time, so this is the user's count
    /// unless it moved nodes during the day.
    pub fn may_store(&self, user: UserId, bytes: usize) -> bool {
        let day = crate::store::now_ms().div_euclid(86_400_000);
        lock(&self.stored).add(user, bytes as u64, day, self.limits.bytes_per_user_day)
    }

    /// Takes one registration for `addr`, or says how long until one is
    /// free.
    pub fn may_register(&self, addr: Option<AddrKey>) -> Result<(), Duration> {
        self.may_register_at(addr, Instant::now())
    }

    fn may_register_at(&self, addr: Option<AddrKey>, now: Instant) -> Result<(), Duration> {
        let Some(a) = self.limits_addr(addr) else {
            return Ok(());
        };
        let interval = self.limits.register_interval.as_secs_f64();
        if interval <= 0.0 {
            return Ok(());
        }
        let mut t = lock(&self.registrations);
        if !t.map.contains_key(&a) {
            t.make_room(now, Bucket::last);
        }
        let burst = f64::from(self.limits.register_burst);
        t.map
            .entry(a)
            .or_insert_with(|| Bucket::new(1.0 / interval, burst, now))
            .try_take(now)
    }
}

/// Counts one failure for `key`; past `free` ones, locks it for 1 s doubling
/// with each further failure, up to `max`.
fn fail<K: Hash + Eq + Copy>(
    t: &mut Table<K, Failures>,
    key: K,
    free: u32,
    max: Duration,
    now: Instant,
) {
    let f = match t.map.get(&key) {
        Some(f) => *f,
        None => {
            t.make_room(now, |f| f.last);
            Failures {
                count: 0,
                locked_until: now,
                last: now,
            }
        }
    };
    let count = f.count.saturating_add(1);
    let locked_until = match count.checked_sub(free) {
        Some(over) if over > 0 => {
            let secs = 1u64 << (over - 1).min(30);
            now + Duration::from_secs(secs).min(max)
        }
        _ => f.locked_until,
    };
    t.map.insert(
        key,
        Failures {
            count,
            locked_until,
            last: now,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            account_free_failures: 3,
            addr_free_failures: 5,
            lockout_max: Duration::from_secs(60),
            register_burst: 2,
            register_interval: Duration::from_secs(10),
            exempt_loopback: true,
            ..Limits::default()
        }
    }

    fn addr(s: &str) -> Option<AddrKey> {
        Some(AddrKey::of(s.parse().expect("ip")))
    }

    #[test]
    fn wrong_passwords_lock_an_account_for_growing_times() {
        let g = Guard::new(&limits());
        let t0 = Instant::now();
        let from = addr("203.0.113.1");
        for _ in 0..3 {
            assert!(g.may_login_at(UserId(7), from, t0).is_ok());
            g.login_failed_at(Some(UserId(7)), from, t0);
        }
        assert!(
            g.may_login_at(UserId(7), from, t0).is_ok(),
            "three are free"
        );
        g.login_failed_at(Some(UserId(7)), from, t0);
        assert_eq!(
            g.may_login_at(UserId(7), from, t0),
            Err(Duration::from_secs(1))
        );
        // another address is held back too: the account is locked
        assert!(g.may_login_at(UserId(7), addr("198.51.100.9"), t0).is_err());
        // other accounts from another address are not
        assert!(g.may_login_at(UserId(8), addr("198.51.100.9"), t0).is_ok());
        let t1 = t0 + Duration::from_secs(1);
        assert!(g.may_login_at(UserId(7), from, t1).is_ok());
        g.login_failed_at(Some(UserId(7)), from, t1);
        assert_eq!(
            g.may_login_at(UserId(7), from, t1),
            Err(Duration::from_secs(2))
        );
        // the doubling stops at the maximum
        for _ in 0..20 {
            g.login_failed_at(Some(UserId(7)), addr("198.51.100.9"), t1);
        }
        assert_eq!(
            g.may_login_at(UserId(7), addr("192.0.2.1"), t1),
            Err(Duration::from_secs(60))
        );
        g.login_succeeded(UserId(7));
        assert!(g.may_login_at(UserId(7), addr("192.0.2.1"), t1).is_ok());
    }

    #[test]
    fn an_address_guessing_many_accounts_is_locked() {
        let g = Guard::new(&limits());
        let t0 = Instant::now();
        let from = addr("2001:db8:1:2:aaaa::1");
        for account in 0..6 {
            g.login_failed_at(Some(UserId(account)), from, t0);
        }
        // the same /64, another host in it
        assert!(
            g.may_login_at(UserId(100), addr("2001:db8:1:2:bbbb::7"), t0)
                .is_err()
        );
        assert!(
            g.may_login_at(UserId(100), addr("2001:db8:1:3::7"), t0)
                .is_ok()
        );
        // a success on an account of its own does not clear the address
        g.login_succeeded(UserId(100));
        assert!(g.may_login_at(UserId(100), from, t0).is_err());
    }

    #[test]
    fn loopback_is_exempt_from_address_limits_but_not_accounts() {
        let g = Guard::new(&limits());
        let t0 = Instant::now();
        let lo = addr("127.0.0.1");
        for account in 0..10 {
            g.login_failed_at(Some(UserId(account)), lo, t0);
        }
        assert!(g.may_login_at(UserId(100), lo, t0).is_ok());
        for _ in 0..4 {
            g.login_failed_at(Some(UserId(5)), lo, t0);
        }
        assert!(g.may_login_at(UserId(5), lo, t0).is_err());
        assert!(g.may_register_at(lo, t0).is_ok());
    }

    #[test]
    fn registrations_are_a_bucket_per_address() {
        let g = Guard::new(&limits());
        let t0 = Instant::now();
        let a = addr("203.0.113.5");
        assert!(g.may_register_at(a, t0).is_ok());
        assert!(g.may_register_at(a, t0).is_ok());
        let wait = g.may_register_at(a, t0).expect_err("burst used");
        assert!((wait.as_secs_f64() - 10.0).abs() < 1e-6, "{wait:?}");
        assert!(g.may_register_at(addr("203.0.113.6"), t0).is_ok());
        assert!(g.may_register_at(a, t0 + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn daily_bytes_last_the_day_and_stay_bounded() {
        let mut d = DailyBytes::default();
        assert!(d.add(UserId(1), 600, 10, 1000));
        assert!(!d.add(UserId(1), 600, 10, 1000), "over the day's quota");
        // However many others store meanwhile (past the table's size),
        // the heavy user's count stays: the light ones are forgotten first.
        for u in 2..(MAX_ENTRIES as i64 + 10) {
            assert!(d.add(UserId(u), 1, 10, 1000));
        }
        assert!(d.used.len() <= MAX_ENTRIES);
        assert!(!d.add(UserId(1), 600, 10, 1000), "still counted");
        assert!(d.add(UserId(1), 600, 11, 1000), "a new day");
        assert_eq!(d.used.len(), 1);
    }

    #[test]
    fn tables_stay_bounded() {
        let g = Guard::new(&limits());
        let t0 = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 5000) {
            let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            g.login_failed_at(None, Some(AddrKey::of(ip)), t0);
        }
        assert!(lock(&g.addrs).map.len() <= MAX_ENTRIES);
    }
}
