//! Exponential backoff as a pure value, shared by the Miniserver reconnect loop and the OTLP
//! export retry loop.
//!
//! A [`Backoff`] holds no clock and does no sleeping: callers ask for the next delay and sleep
//! themselves (in paused Tokio time in tests). Jitter comes from a caller-supplied random
//! number so tests stay deterministic.

use std::time::Duration;

/// Why a backoff could not be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BackoffError {
    /// The initial delay was zero.
    #[error("initial backoff must be greater than zero")]
    ZeroInitial,
    /// The maximum is smaller than the initial delay.
    #[error("maximum backoff {max:?} is smaller than the initial backoff {initial:?}")]
    MaxBelowInitial {
        /// Initial delay.
        initial: Duration,
        /// Maximum delay.
        max: Duration,
    },
    /// Jitter outside 0.0..=1.0.
    #[error("jitter must be between 0.0 and 1.0, got {0}")]
    BadJitter(f64),
}

/// Exponential backoff: `initial`, doubling per failure, capped at `max`, with up to
/// `jitter` (a fraction, 0.0..=1.0) of the delay added or removed at random.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
    failures: u32,
}

impl Backoff {
    /// Builds a backoff; rejects a zero initial delay, `max < initial` and jitter outside 0..=1.
    pub fn new(initial: Duration, max: Duration, jitter: f64) -> Result<Self, BackoffError> {
        if initial.is_zero() {
            return Err(BackoffError::ZeroInitial);
        }
        if max < initial {
            return Err(BackoffError::MaxBelowInitial { initial, max });
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(BackoffError::BadJitter(jitter));
        }
        Ok(Backoff {
            initial,
            max,
            jitter,
            failures: 0,
        })
    }

    /// Number of failures recorded since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Delay before the next attempt without jitter: `initial * 2^(failures-1)`, capped.
    /// Zero when no failure has been recorded.
    pub fn base_delay(&self) -> Duration {
        if self.failures == 0 {
            return Duration::ZERO;
        }
        let shift = (self.failures - 1).min(31);
        self.initial
            .checked_mul(1u32 << shift)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// Records one failure and returns the delay to wait, with jitter applied from
    /// `unit_random` (a value in `0.0..1.0`, e.g. `rand::random()`). The result never
    /// exceeds `max`.
    pub fn fail(&mut self, unit_random: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let base = self.base_delay().as_secs_f64();
        let r = unit_random.clamp(0.0, 1.0);
        let factor = 1.0 + self.jitter * (2.0 * r - 1.0);
        Duration::from_secs_f64((base * factor).clamp(0.0, self.max.as_secs_f64()))
    }

    /// Forgets all failures (after a successful session or export).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 0.0).unwrap();
        let delays: Vec<u64> = (0..7).map(|_| b.fail(0.5).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30]);
        b.reset();
        assert_eq!(b.fail(0.5), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let mut b = Backoff::new(Duration::from_secs(4), Duration::from_secs(8), 0.25).unwrap();
        assert_eq!(b.fail(0.0), Duration::from_secs(3));
        b.reset();
        assert_eq!(b.fail(1.0), Duration::from_secs(5));
        b.reset();
        b.fail(0.5);
        // cap holds even with positive jitter
        assert!(b.fail(1.0) <= Duration::from_secs(8));
    }

    #[test]
    fn rejects_bad_parameters() {
        assert_eq!(
            Backoff::new(Duration::ZERO, Duration::from_secs(1), 0.1),
            Err(BackoffError::ZeroInitial)
        );
        assert!(Backoff::new(Duration::from_secs(2), Duration::from_secs(1), 0.1).is_err());
        assert!(Backoff::new(Duration::from_secs(1), Duration::from_secs(2), 1.5).is_err());
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300), 0.0).unwrap();
        for _ in 0..100 {
            b.fail(0.3);
        }
        assert_eq!(b.base_delay(), Duration::from_secs(300));
    }
}
