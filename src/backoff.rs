//! Retry delays: an exponential curve or an explicit schedule, with jitter, an overload floor
//! and a bounded `Retry-After`. Pure logic; the store keeps the resulting `next_attempt_at`.

use std::time::Duration;

/// The peers' default schedule (about a day in all).
pub const DEFAULT_SCHEDULE: [Duration; 6] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
];

/// Share of a delay added or removed at random, so retries of many deliveries spread out.
const JITTER: f64 = 0.2;

/// How a subscription spaces its retries.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// The base curve.
    pub curve: Curve,
    /// Minimum delay after a `429` or a timeout (the receiver is overloaded).
    pub overload_floor: Duration,
}

/// The base delay before retry number n.
#[derive(Debug, Clone, PartialEq)]
pub enum Curve {
    /// `initial * multiplier^(n-1)`, capped at `max`.
    Exponential {
        /// Delay before the first retry.
        initial: Duration,
        /// Largest delay.
        max: Duration,
        /// Growth per retry.
        multiplier: f64,
    },
    /// Explicit delays; the last one repeats.
    Schedule(Vec<Duration>),
}

/// Why the previous attempt failed, as far as the delay is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    /// An ordinary failure.
    Normal,
    /// `429` or a timeout: wait at least the overload floor.
    Overloaded,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            curve: Curve::Schedule(DEFAULT_SCHEDULE.to_vec()),
            overload_floor: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before retry `retry` (1-based), before jitter.
    pub fn base_delay(&self, retry: u32) -> Duration {
        let n = retry.max(1);
        match &self.curve {
            Curve::Schedule(delays) => {
                let i = (n as usize - 1).min(delays.len().saturating_sub(1));
                delays.get(i).copied().unwrap_or_default()
            }
            Curve::Exponential {
                initial,
                max,
                multiplier,
            } => {
                let factor = multiplier.powi(i32::try_from(n - 1).unwrap_or(i32::MAX));
                let secs = initial.as_secs_f64() * factor;
                if !secs.is_finite() || secs >= max.as_secs_f64() {
                    *max
                } else {
                    Duration::from_secs_f64(secs)
                }
            }
        }
    }

    /// The delay before retry `retry`: jittered by `unit` (a random draw in 0..1), raised to the
    /// overload floor under pressure, and moved toward `retry_after` within [delay, 2 x delay].
    pub fn delay(
        &self,
        retry: u32,
        pressure: Pressure,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> Duration {
        let base = self.base_delay(retry).as_secs_f64();
        let jittered = base * (1.0 - JITTER + 2.0 * JITTER * unit.clamp(0.0, 1.0));
        let mut delay = Duration::from_secs_f64(jittered);
        if pressure == Pressure::Overloaded {
            delay = delay.max(self.overload_floor);
        }
        match retry_after {
            // A receiver may ask for more time, but cannot pin the relay for days.
            Some(asked) => asked.clamp(delay, delay.saturating_mul(2)),
            None => delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn default_schedule_spans_about_a_day_and_repeats_its_last_step() {
        let b = Backoff::default();
        let total: Duration = (1..=6).map(|n| b.base_delay(n)).sum();
        assert!(
            total > secs(17 * 3600) && total < secs(18 * 3600),
            "{total:?}"
        );
        assert_eq!(b.base_delay(1), secs(5));
        assert_eq!(b.base_delay(9), secs(10 * 3600));
    }

    #[test]
    fn exponential_grows_and_caps() {
        let b = Backoff {
            curve: Curve::Exponential {
                initial: secs(5),
                max: secs(3600),
                multiplier: 4.0,
            },
            overload_floor: secs(60),
        };
        assert_eq!(b.base_delay(1), secs(5));
        assert_eq!(b.base_delay(2), secs(20));
        assert_eq!(b.base_delay(3), secs(80));
        assert_eq!(b.base_delay(6), secs(3600));
        assert_eq!(b.base_delay(500), secs(3600));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let b = Backoff::default();
        assert_eq!(b.delay(1, Pressure::Normal, None, 0.0), secs(4));
        assert_eq!(b.delay(1, Pressure::Normal, None, 1.0), secs(6));
        assert_eq!(b.delay(1, Pressure::Normal, None, 0.5), secs(5));
    }

    #[test]
    fn overload_raises_to_the_floor() {
        let b = Backoff::default();
        assert_eq!(b.delay(1, Pressure::Overloaded, None, 0.5), secs(60));
        assert_eq!(b.delay(2, Pressure::Overloaded, None, 0.5), secs(300));
        let no_floor = Backoff {
            overload_floor: Duration::ZERO,
            ..Backoff::default()
        };
        assert_eq!(no_floor.delay(1, Pressure::Overloaded, None, 0.5), secs(5));
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let b = Backoff::default();
        assert_eq!(b.delay(1, Pressure::Normal, Some(secs(8)), 0.5), secs(8));
        assert_eq!(b.delay(1, Pressure::Normal, Some(secs(1)), 0.5), secs(5));
        assert_eq!(
            b.delay(1, Pressure::Normal, Some(secs(86400 * 3)), 0.5),
            secs(10)
        );
    }
}
