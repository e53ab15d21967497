//! How fast a node lets sessions in.
//!
//! When a node dies, all of its users come back at once through the
//! survivors. Resumes skip the password hash, so without a limit a
//! survivor would spend everything on them while its own users' chat
//! waits. A token bucket admits a steady rate with some burst; a login or
//! resume beyond it is answered at once with errno 56 and how long to wait
//! (a client should wait that long plus some jitter), rather than queued.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::limits::Bucket;

/// A token bucket: `rate` admissions a second, up to `burst` at once.
#[derive(Debug)]
pub struct Admission(Mutex<Bucket>);

impl Admission {
    /// Admits `rate` a second on average and `burst` at once (both at
    /// least 1).
    pub fn new(rate: u32, burst: u32) -> Self {
        Self::new_at(rate, burst, Instant::now())
    }

    fn new_at(rate: u32, burst: u32, now: Instant) -> Self {
        Admission(Mutex::new(Bucket::new(
            f64::from(rate.max(1)),
            f64::from(burst),
            now,
        )))
    }

    /// Takes one admission, or says how long until one is free.
    pub fn take(&self) -> Result<(), Duration> {
        self.take_at(Instant::now())
    }

    fn take_at(&self, now: Instant) -> Result<(), Duration> {
        let mut bucket = self.0.lock().unwrap_or_else(|p| p.into_inner());
        bucket.try_take(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let t0 = Instant::now();
        let a = Admission::new_at(10, 3, t0);
        for _ in 0..3 {
            assert!(a.take_at(t0).is_ok());
        }
        let wait = a.take_at(t0).expect_err("burst used up");
        assert!(
            (wait.as_secs_f64() - 0.1).abs() < 1e-6,
            "one token takes 1/rate: {wait:?}"
        );
        assert!(a.take_at(t0 + Duration::from_millis(50)).is_err());
        assert!(a.take_at(t0 + Duration::from_millis(101)).is_ok());
        // idle time refills no more than the burst
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(a.take_at(later).is_ok());
        }
        assert!(a.take_at(later).is_err());
    }
}
