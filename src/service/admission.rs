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

/// A token bucket: `rate` admissions a second, up to `burst` at once.
#[derive(Debug)]
pub struct Admission {
    rate: f64,
    burst: f64,
    /// Tokens left, and when they were counted.
    state: Mutex<(f64, Instant)>,
}

impl Admission {
    /// Admits `rate` a second on average and `burst` at once (both at
    /// least 1).
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Admission {
            rate: f64::from(rate.max(1)),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes one admission, or says how long until one is free.
    pub fn admit(&self) -> Result<(), Duration> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, since) = *state;
        let tokens = (tokens + now.saturating_duration_since(since).as_secs_f64() * self.rate)
            .min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            Ok(())
        } else {
            *state = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let a = Admission::new(10, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(a.admit_at(t0).is_ok());
        }
        let wait = a.admit_at(t0).expect_err("burst used up");
        assert!(
            (wait.as_secs_f64() - 0.1).abs() < 1e-6,
            "one token takes 1/rate: {wait:?}"
        );
        assert!(a.admit_at(t0 + Duration::from_millis(50)).is_err());
        assert!(a.admit_at(t0 + Duration::from_millis(101)).is_ok());
        // idle time refills no more than the burst
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(a.admit_at(later).is_ok());
        }
        assert!(a.admit_at(later).is_err());
    }
}
