//! The circuit breaker of one push subscription, as pure state: it counts consecutive failed
//! attempts, opens at the threshold (or when the share of failed attempts in a window reaches
//! `failure_ratio`), lets one probe out after the cool-down (half-open), and closes on its
//! success or reopens with a doubled cool-down on its failure. Time is passed in, so the
//! tests below need no clock.

use std::time::Duration;

use tokio::time::Instant;

use crate::subscription::CircuitSettings;

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Breaker {
    /// Attempts go out; `failures` consecutive ones failed, the first at `since`; of the
    /// `attempts` since `window_start`, `failed` failed.
    Closed {
        /// The current streak of failures.
        failures: u32,
        /// When the streak began.
        since: Option<Instant>,
        /// Attempts in the ratio's window: a fixed window starting at its first attempt.
        attempts: u32,
        /// Failed attempts in that window.
        failed: u32,
        /// The window's first attempt.
        window_start: Option<Instant>,
    },
    /// No attempt goes out before `until`; `cool_down` is the pause this time.
    Open {
        /// End of the cool-down.
        until: Instant,
        /// This cool-down's length (doubled by a failed probe).
        cool_down: Duration,
    },
    /// The cool-down is over: one probe may go (`sent` once it has).
    HalfOpen {
        /// The cool-down that opened it, doubled if the probe fails.
        cool_down: Duration,
        /// Whether the probe has gone out.
        sent: bool,
    },
}

/// What the breaker says about one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// Send it (`probe`: it is the half-open breaker's one probe).
    Send {
        /// The half-open probe.
        probe: bool,
    },
    /// Keep it queued.
    Hold,
}

/// A change of the breaker's state worth a log line and a gauge update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// Opened by a streak of failures or a failed probe.
    Opened,
    /// Opened by the share of failed attempts in the window (`failure_ratio`).
    OpenedByRatio,
    /// The probe may go.
    HalfOpened,
    /// Closed by a successful probe.
    Closed,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::Closed {
            failures: 0,
            since: None,
            attempts: 0,
            failed: 0,
            window_start: None,
        }
    }
}

impl Breaker {
    /// Whether an attempt may go now; a half-open breaker lets exactly one through.
    pub(super) fn admit(&mut self) -> Admit {
        match self {
            Breaker::Closed { .. } => Admit::Send { probe: false },
            Breaker::HalfOpen { sent, .. } if !*sent => {
                *sent = true;
                Admit::Send { probe: true }
            }
            Breaker::HalfOpen { .. } | Breaker::Open { .. } => Admit::Hold,
        }
    }

    /// When the cool-down ends, if open.
    #[cfg(test)]
    fn open_until(&self) -> Option<Instant> {
        match self {
            Breaker::Open { until, .. } => Some(*until),
            _ => None,
        }
    }

    /// Goes half-open if the cool-down is over at `now`.
    pub(super) fn try_half_open(&mut self, now: Instant) -> Option<Change> {
        match *self {
            Breaker::Open { until, cool_down } if now >= until => {
                *self = Breaker::HalfOpen {
                    cool_down,
                    sent: false,
                };
                Some(Change::HalfOpened)
            }
            _ => None,
        }
    }

    /// Back to open at once when a half-open breaker found nothing to probe with (the
    /// cool-down stays over, so the next due delivery becomes the probe).
    pub(super) fn no_probe(&mut self, now: Instant) {
        if let Breaker::HalfOpen {
            cool_down,
            sent: false,
        } = *self
        {
            *self = Breaker::Open {
                until: now,
                cool_down,
            };
        }
    }

    /// Records an attempt's result. Only attempts sent while closed, and the probe, count:
    /// one that was in flight when the breaker opened says nothing new.
    pub(super) fn record(
        &mut self,
        settings: &CircuitSettings,
        now: Instant,
        probe: bool,
        failed: bool,
    ) -> Option<Change> {
        match self {
            Breaker::Closed {
                failures,
                since,
                attempts,
                failed: failed_in_window,
                window_start,
            } if !probe => {
                // The ratio's window is fixed: it starts at its first attempt and, once
                // over, the next attempt starts a new one.
                match window_start {
                    Some(start) if now.duration_since(*start) <= settings.window => {}
                    _ => {
                        *attempts = 0;
                        *failed_in_window = 0;
                        *window_start = Some(now);
                    }
                }
                *attempts += 1;
                *failed_in_window += u32::from(failed);
                if !failed {
                    *failures = 0;
                    *since = None;
                } else {
                    // A streak older than the window starts again.
                    match since {
                        Some(start) if now.duration_since(*start) <= settings.window => {
                            *failures += 1
                        }
                        _ => {
                            *failures = 1;
                            *since = Some(now);
                        }
                    }
                }
                let change = if failed && *failures >= settings.failures {
                    Change::Opened
                } else if failed
                    && settings.failure_ratio.is_some_and(|ratio| {
                        *attempts >= settings.min_attempts
                            && f64::from(*failed_in_window) / f64::from(*attempts) >= ratio
                    })
                {
                    Change::OpenedByRatio
                } else {
                    return None;
                };
                *self = Breaker::Open {
                    until: now + settings.cool_down,
                    cool_down: settings.cool_down,
                };
                Some(change)
            }
            Breaker::HalfOpen { cool_down, .. } if probe => {
                if failed {
                    let next = (*cool_down * 2).min(settings.max_cool_down);
                    *self = Breaker::Open {
                        until: now + next,
                        cool_down: next,
                    };
                    Some(Change::Opened)
                } else {
                    *self = Breaker::default();
                    Some(Change::Closed)
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CircuitSettings {
        CircuitSettings {
            failures: 3,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(1),
            max_cool_down: Duration::from_secs(3),
            failure_ratio: None,
            min_attempts: 20,
        }
    }

    /// The ratio rule at 0.5 over at least 6 attempts, beside a streak of 5.
    fn ratio() -> CircuitSettings {
        CircuitSettings {
            failures: 5,
            failure_ratio: Some(0.5),
            min_attempts: 6,
            ..settings()
        }
    }

    fn fail(b: &mut Breaker, now: Instant) -> Option<Change> {
        b.record(&settings(), now, false, true)
    }

    #[test]
    fn opens_after_the_threshold_and_a_success_resets() {
        let (mut b, t) = (Breaker::default(), Instant::now());
        assert_eq!(fail(&mut b, t), None);
        assert_eq!(b.record(&settings(), t, false, false), None);
        assert_eq!(fail(&mut b, t), None);
        assert_eq!(fail(&mut b, t), None);
        assert_eq!(fail(&mut b, t), Some(Change::Opened));
        assert_eq!(b.admit(), Admit::Hold);
        assert_eq!(b.open_until(), Some(t + Duration::from_secs(1)));
    }

    #[test]
    fn a_streak_older_than_the_window_starts_again() {
        let (mut b, t) = (Breaker::default(), Instant::now());
        fail(&mut b, t);
        fail(&mut b, t);
        assert_eq!(fail(&mut b, t + Duration::from_secs(11)), None);
        assert!(matches!(b, Breaker::Closed { failures: 1, .. }));
    }

    #[test]
    fn one_probe_after_the_cool_down_then_close_or_reopen_longer() {
        let (mut b, t) = (Breaker::default(), Instant::now());
        for _ in 0..3 {
            fail(&mut b, t);
        }
        assert_eq!(b.try_half_open(t), None);
        let later = t + Duration::from_secs(1);
        assert_eq!(b.try_half_open(later), Some(Change::HalfOpened));
        assert_eq!(b.admit(), Admit::Send { probe: true });
        assert_eq!(b.admit(), Admit::Hold);
        // A straggler sent before the breaker opened changes nothing.
        assert_eq!(b.record(&settings(), later, false, false), None);
        assert_eq!(
            b.record(&settings(), later, true, true),
            Some(Change::Opened)
        );
        assert_eq!(b.open_until(), Some(later + Duration::from_secs(2)));
        // Doubling stops at max_cool_down.
        let again = later + Duration::from_secs(2);
        b.try_half_open(again);
        b.admit();
        b.record(&settings(), again, true, true);
        assert_eq!(b.open_until(), Some(again + Duration::from_secs(3)));
        let last = again + Duration::from_secs(3);
        b.try_half_open(last);
        assert_eq!(b.admit(), Admit::Send { probe: true });
        assert_eq!(
            b.record(&settings(), last, true, false),
            Some(Change::Closed)
        );
        assert_eq!(b.admit(), Admit::Send { probe: false });
    }

    #[test]
    fn no_probe_found_keeps_it_open_and_due() {
        let (mut b, t) = (Breaker::default(), Instant::now());
        for _ in 0..3 {
            fail(&mut b, t);
        }
        let later = t + Duration::from_secs(5);
        b.try_half_open(later);
        b.no_probe(later);
        assert_eq!(b.open_until(), Some(later));
        assert_eq!(b.try_half_open(later), Some(Change::HalfOpened));
    }

    #[test]
    fn alternating_failures_open_by_ratio_after_min_attempts() {
        let (mut b, t) = (Breaker::default(), Instant::now());
        for i in 0..5 {
            assert_eq!(b.record(&ratio(), t, false, i % 2 == 1), None, "{i}");
        }
        // The sixth attempt: 3 of 6 failed, never two in a row.
        assert_eq!(
            b.record(&ratio(), t, false, true),
            Some(Change::OpenedByRatio)
        );
        assert_eq!(b.open_until(), Some(t + Duration::from_secs(1)));
        // A successful probe closes it with the counts reset.
        let later = t + Duration::from_secs(1);
        b.try_half_open(later);
        b.admit();
        assert_eq!(b.record(&ratio(), later, true, false), Some(Change::Closed));
        assert_eq!(b, Breaker::default());
    }

    #[test]
    fn a_success_never_opens_it() {
        let (mut b, t) = (Breaker::default(), Instant::now());
        // Fail, fail, succeed, fail, fail: 4 of 5, never `failures` in a row.
        for failed in [true, true, false, true, true] {
            assert_eq!(b.record(&ratio(), t, false, failed), None);
        }
        // The sixth reaches min_attempts with the ratio met, but it succeeded.
        assert_eq!(b.record(&ratio(), t, false, false), None);
        assert_eq!(
            b.record(&ratio(), t, false, true),
            Some(Change::OpenedByRatio)
        );
    }

    #[test]
    fn below_the_ratio_it_stays_closed() {
        let (mut b, t) = (Breaker::default(), Instant::now());
        // One in three fails, 100 times over.
        for i in 0..300 {
            assert_eq!(b.record(&ratio(), t, false, i % 3 == 0), None, "{i}");
        }
        // Without `failure_ratio`, even all but the streak's last failing stays closed.
        let (mut b, plain) = (Breaker::default(), settings());
        for i in 0..100 {
            assert_eq!(b.record(&plain, t, false, i % 3 != 2), None, "{i}");
        }
    }

    #[test]
    fn a_window_rollover_resets_the_counts() {
        let (mut b, t) = (Breaker::default(), Instant::now());
        for i in 0..5 {
            b.record(&ratio(), t, false, i % 2 == 0);
        }
        // 3 of 5 failed; a sixth attempt would reach min_attempts at 0.5, but it comes
        // after the 10s window: a new window starts with it.
        let next = t + Duration::from_secs(11);
        assert_eq!(b.record(&ratio(), next, false, false), None);
        assert!(matches!(
            b,
            Breaker::Closed {
                attempts: 1,
                failed: 0,
                ..
            }
        ));
        for i in 0..4 {
            assert_eq!(b.record(&ratio(), next, false, i % 2 == 0), None, "{i}");
        }
        assert_eq!(
            b.record(&ratio(), next, false, true),
            Some(Change::OpenedByRatio)
        );
    }

    #[test]
    fn the_streak_still_opens_alongside_the_ratio() {
        let settings = CircuitSettings {
            failures: 3,
            failure_ratio: Some(0.9),
            min_attempts: 100,
            ..settings()
        };
        let (mut b, t) = (Breaker::default(), Instant::now());
        b.record(&settings, t, false, false);
        b.record(&settings, t, false, true);
        b.record(&settings, t, false, true);
        assert_eq!(b.record(&settings, t, false, true), Some(Change::Opened));
    }
}
