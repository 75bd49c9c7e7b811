//! The controller behind `max_in_flight: auto`: additive increase, multiplicative decrease
//! (AIMD) on latency and failures, as TCP's congestion window does. Pure logic: it is fed
//! each attempt's latency and signal and answers the limit; the allowance applies it.
//!
//! - The baseline is the lowest latency of the last [`WINDOW`] answered attempts, so it
//!   follows a receiver that became slower for good, but not the queueing our own
//!   concurrency causes (a decrease brings fast samples back into the window).
//! - A round is as many answered attempts as the limit. At its end, a mean latency beyond
//!   [`TOLERANCE`] × baseline + [`SLACK`] takes the limit down by [`LATENCY_DECREASE`];
//!   otherwise, if the round used the whole limit, it grows: doubling while in slow start
//!   (until the first decrease), then by one per round.
//! - A failure (5xx, 429, a timeout, no connection) takes the limit down by
//!   [`FAILURE_DECREASE`] at once, but at most once per round: attempts that were already in
//!   flight when it shrank do not count again.
//! - The limit stays within 1..=max; it starts at 1.

use std::time::Duration;

/// Answered attempts whose lowest latency is the baseline.
pub const WINDOW: usize = BUCKET * BUCKETS;
const BUCKET: usize = 32;
const BUCKETS: usize = 8;
/// A round's mean latency may reach this multiple of the baseline (plus [`SLACK`]).
pub const TOLERANCE: f64 = 1.5;
/// Absolute slack on the tolerance, so a sub-millisecond receiver's jitter is no signal.
pub const SLACK: Duration = Duration::from_millis(2);
/// The factor a latency rise takes the limit down by.
pub const LATENCY_DECREASE: f64 = 0.8;
/// The factor a failure takes the limit down by.
pub const FAILURE_DECREASE: f64 = 0.5;

/// What one attempt said about the receiver's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The receiver answered (delivered, or refused for its own reasons): its latency counts.
    Answered,
    /// A sign of overload: 5xx, 429, a timeout or no connection.
    Failed,
}

/// The AIMD state of one subscription.
#[derive(Debug)]
pub struct Aimd {
    max: usize,
    limit: f64,
    slow_start: bool,
    baseline: WindowMin,
    round: Round,
    /// Samples still to come from attempts started before the last decrease.
    guard: usize,
}

#[derive(Debug, Default)]
struct Round {
    samples: usize,
    total: Duration,
    /// Most attempts in flight seen at an attempt's end during the round.
    peak: usize,
}

impl Aimd {
    /// A controller with the ceiling `max` (at least 1), starting at one attempt.
    pub fn new(max: usize) -> Aimd {
        Aimd {
            max: max.max(1),
            limit: 1.0,
            slow_start: true,
            baseline: WindowMin::default(),
            round: Round::default(),
            guard: 0,
        }
    }

    /// The attempts allowed at once now.
    pub fn limit(&self) -> usize {
        (self.limit as usize).clamp(1, self.max)
    }

    /// Learns from one ended attempt that took `latency`, with `in_flight` attempts (itself
    /// included) in flight when it ended; returns the new limit.
    pub fn observe(&mut self, latency: Duration, signal: Signal, in_flight: usize) -> usize {
        let guarded = self.guard > 0;
        self.guard = self.guard.saturating_sub(1);
        match signal {
            Signal::Failed => {
                if !guarded {
                    self.decrease(FAILURE_DECREASE, in_flight);
                }
            }
            Signal::Answered => {
                self.baseline.push(latency);
                self.round.samples += 1;
                self.round.total += latency;
                self.round.peak = self.round.peak.max(in_flight);
                if self.round.samples >= self.limit() {
                    self.end_round(guarded, in_flight);
                }
            }
        }
        self.limit()
    }

    fn end_round(&mut self, guarded: bool, in_flight: usize) {
        let round = std::mem::take(&mut self.round);
        let mean = round.total / round.samples as u32;
        let baseline = self.baseline.min().unwrap_or(mean);
        if mean > baseline.mul_f64(TOLERANCE) + SLACK {
            if !guarded {
                self.decrease(LATENCY_DECREASE, in_flight);
            }
        } else if round.peak >= self.limit() {
            // Only a limit the subscription used proves the receiver takes more.
            let step = if self.slow_start { self.limit } else { 1.0 };
            self.limit = (self.limit + step).min(self.max as f64);
        }
    }

    /// Shrinks by `factor`; the other attempts in flight now end under the old limit, so
    /// their samples cannot shrink it again.
    fn decrease(&mut self, factor: f64, in_flight: usize) {
        self.guard = in_flight.saturating_sub(1);
        self.slow_start = false;
        self.limit = (self.limit * factor).max(1.0);
        self.round = Round::default();
    }
}

/// The lowest of the last [`WINDOW`] samples, kept as the minima of [`BUCKETS`] buckets.
#[derive(Debug, Default)]
struct WindowMin {
    /// Minima of full buckets, the oldest first.
    full: std::collections::VecDeque<Duration>,
    current: Option<Duration>,
    in_current: usize,
}

impl WindowMin {
    fn push(&mut self, sample: Duration) {
        self.current = Some(self.current.map_or(sample, |c| c.min(sample)));
        self.in_current += 1;
        if self.in_current == BUCKET {
            if self.full.len() == BUCKETS - 1 {
                self.full.pop_front();
            }
            self.full.extend(self.current.take());
            self.in_current = 0;
        }
    }

    fn min(&self) -> Option<Duration> {
        self.full.iter().copied().chain(self.current).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds rounds from a receiver whose latency is `latency(limit)` at the given limit,
    /// using the whole limit; returns the limits seen after each sample.
    fn run(a: &mut Aimd, samples: usize, latency: impl Fn(usize) -> Duration) -> Vec<usize> {
        (0..samples)
            .map(|_| {
                let l = a.limit();
                a.observe(latency(l), Signal::Answered, l)
            })
            .collect()
    }

    #[test]
    fn grows_to_max_while_latency_holds() {
        let mut a = Aimd::new(32);
        assert_eq!(a.limit(), 1);
        let seen = run(&mut a, 200, |_| 10 * MS);
        assert_eq!(a.limit(), 32, "never above max");
        assert_eq!(&seen[..4], &[2, 2, 4, 4], "slow start doubles per round");
    }

    #[test]
    fn an_idle_subscription_does_not_grow() {
        let mut a = Aimd::new(32);
        // 1 + 2 + 4 samples: three full rounds, at 8 now.
        run(&mut a, 7, |_| 10 * MS);
        let before = a.limit();
        assert_eq!(before, 8);
        for _ in 0..100 {
            a.observe(10 * MS, Signal::Answered, 1);
        }
        assert_eq!(a.limit(), before, "one attempt at a time proves nothing");
    }

    #[test]
    fn settles_where_latency_starts_to_rise() {
        // Fast up to 6 at once, then 20 ms more per extra attempt.
        let receiver = |n: usize| 10 * MS + 20 * MS * n.saturating_sub(6) as u32;
        let mut a = Aimd::new(64);
        let seen = run(&mut a, 2000, receiver);
        let tail = &seen[1000..];
        assert!(
            tail.iter().all(|l| (4..=8).contains(l)),
            "limit oscillates around the knee: {tail:?}"
        );
        assert!(
            seen.iter().all(|l| *l <= 12),
            "slow start overshoots little"
        );
    }

    #[test]
    fn failures_halve_once_per_round_down_to_one() {
        let mut a = Aimd::new(64);
        run(&mut a, 200, |_| 5 * MS);
        assert_eq!(a.limit(), 64);
        assert_eq!(a.observe(5 * MS, Signal::Failed, 64), 32);
        for _ in 0..63 {
            // The rest of the round that was in flight: no further decrease.
            assert_eq!(a.observe(10 * MS, Signal::Failed, 64), 32);
        }
        assert_eq!(a.observe(5 * MS, Signal::Failed, 32), 16);
        for _ in 0..200 {
            a.observe(5 * MS, Signal::Failed, 1);
        }
        assert_eq!(a.limit(), 1, "at least one attempt stays");
        // After failures it grows back additively, one per round.
        let seen = run(&mut a, 10, |_| 5 * MS);
        assert_eq!(seen.last(), Some(&5), "{seen:?}");
    }

    #[test]
    fn a_receiver_that_got_slower_for_good_gets_a_new_baseline() {
        let mut a = Aimd::new(16);
        run(&mut a, 300, |_| MS);
        assert_eq!(a.limit(), 16);
        // Ten times slower at any concurrency: it shrinks, then once the window holds only
        // slow samples, the new latency is the baseline and it grows again.
        let seen = run(&mut a, 3000, |_| 10 * MS);
        assert!(seen[..40].iter().any(|l| *l < 16), "{:?}", &seen[..40]);
        assert_eq!(a.limit(), 16);
    }

    #[test]
    fn the_baseline_window_forgets_old_samples() {
        let mut w = WindowMin::default();
        assert_eq!(w.min(), None);
        w.push(MS);
        for _ in 0..WINDOW {
            w.push(5 * MS);
        }
        assert_eq!(w.min(), Some(5 * MS));
        w.push(3 * MS);
        assert_eq!(w.min(), Some(3 * MS));
    }
}
