//! The circuit breaker of one push subscription, as pure state: it counts consecutive failed
//! attempts, opens at the threshold, lets one probe out after the cool-down (half-open), and
//! closes on its success or reopens with a doubled cool-down on its failure. Time is passed
//! in, so the tests below need no clock.

use std::time::Duration;

use tokio::time::Instant;

use crate::subscription::CircuitSettings;

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Breaker {
    /// Attempts go out; `failures` consecutive ones failed, the first at `since`.
    Closed {
        /// The current streak of failures.
        failures: u32,
        /// When the streak began.
        since: Option<Instant>,
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
            Breaker::Closed { failures, since } if !probe => {
                if !failed {
                    *failures = 0;
                    *since = None;
                    return None;
                }
                // A streak older than the window starts again.
                match since {
                    Some(start) if now.duration_since(*start) <= settings.window => *failures += 1,
                    _ => {
                        *failures = 1;
                        *since = Some(now);
                    }
                }
                if *failures < settings.failures {
                    return None;
                }
                *self = Breaker::Open {
                    until: now + settings.cool_down,
                    cool_down: settings.cool_down,
                };
                Some(Change::Opened)
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
}
