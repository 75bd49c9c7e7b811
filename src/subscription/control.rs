//! A push subscription's delivery control settings: its circuit breaker (`circuit`), what a
//! `410 Gone` does (`on_gone`) and whether it starts paused (`paused`).

use std::time::Duration;

use serde_yaml::Value;

use crate::yaml::{Issues, Section, as_float, describe};

/// Keys of the `circuit` mapping.
const CIRCUIT_KEYS: &[&str] = &[
    "enabled",
    "failures",
    "window",
    "cool_down",
    "max_cool_down",
    "failure_ratio",
    "min_attempts",
];

/// Durations the breaker accepts (short ones keep tests quick).
const SHORTEST: Duration = Duration::from_millis(100);
/// The longest `window` and `cool_down`.
const HOUR: Duration = Duration::from_secs(3600);
/// The longest `max_cool_down`.
const DAY: Duration = Duration::from_secs(86_400);

/// Default `min_attempts` of the failure ratio rule.
const MIN_ATTEMPTS: u32 = 20;

/// A push subscription's circuit breaker: it opens after `failures` consecutive failed
/// attempts within `window` (or, with `failure_ratio`, when that share of at least
/// `min_attempts` attempts in a window failed), holds every attempt for `cool_down`, then
/// lets one probe out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitSettings {
    /// Consecutive failed attempts that open it.
    pub failures: u32,
    /// A streak of failures older than this starts again.
    pub window: Duration,
    /// The first pause while open; doubled by each failed probe.
    pub cool_down: Duration,
    /// The longest pause while open.
    pub max_cool_down: Duration,
    /// Share of failed attempts in a window, in (0, 1], that opens it; `None`: rule off.
    pub failure_ratio: Option<f64>,
    /// Attempts in a window before the ratio counts.
    pub min_attempts: u32,
}

impl Default for CircuitSettings {
    fn default() -> Self {
        CircuitSettings {
            failures: 5,
            window: Duration::from_secs(30),
            cool_down: Duration::from_secs(30),
            max_cool_down: Duration::from_secs(600),
            failure_ratio: None,
            min_attempts: MIN_ATTEMPTS,
        }
    }
}

/// What a `410 Gone` answer does (HTTP push).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnGone {
    /// Pauses the subscription (reason `gone`); the delivery stays queued.
    #[default]
    Pause,
    /// Fails the delivery at once, as any final answer.
    Fail,
}

/// Reads `circuit`: a mapping, or `off`; `None` when the breaker is off.
pub(super) fn parse_circuit(s: &Section<'_>, issues: &mut Issues) -> Option<CircuitSettings> {
    let at = s.at("circuit");
    match s.get("circuit") {
        None => return Some(CircuitSettings::default()),
        Some(Value::String(off)) if off == "off" => return None,
        Some(Value::Mapping(_)) => {}
        Some(other) => {
            issues.push(
                &at,
                format!(
                    "expected off or a mapping of failures, window, cool_down, max_cool_down, \
                     failure_ratio, min_attempts, found {}",
                    describe(other)
                ),
            );
            return None;
        }
    }
    let c = s.section("circuit", CIRCUIT_KEYS, issues);
    let d = CircuitSettings::default();
    let enabled = c.boolean("enabled", true, issues);
    let failures = c.integer("failures", 1..=1000, d.failures.into(), issues) as u32;
    let window = c.duration("window", SHORTEST..=HOUR, d.window, issues);
    let cool_down = c.duration("cool_down", SHORTEST..=HOUR, d.cool_down, issues);
    let max_cool_down = c.duration(
        "max_cool_down",
        SHORTEST..=DAY,
        d.max_cool_down.max(cool_down),
        issues,
    );
    if max_cool_down < cool_down {
        issues.push(&c.at("max_cool_down"), "must not be below cool_down");
    }
    let failure_ratio = c.get("failure_ratio").and_then(|v| {
        let at = c.at("failure_ratio");
        match as_float(v, &at, issues)? {
            r if r > 0.0 && r <= 1.0 => Some(r),
            r => {
                issues.push(&at, format!("{r} is out of range: above 0, at most 1"));
                None
            }
        }
    });
    let min_attempts = c.integer("min_attempts", 1..=100_000, MIN_ATTEMPTS.into(), issues) as u32;
    if c.has("min_attempts") && !c.has("failure_ratio") {
        issues.push(&c.at("min_attempts"), "needs failure_ratio");
    }
    enabled.then_some(CircuitSettings {
        failures,
        window,
        cool_down,
        max_cool_down,
        failure_ratio,
        min_attempts,
    })
}

/// Reads `on_gone`: `pause` (default) or `fail`.
pub(super) fn parse_on_gone(s: &Section<'_>, issues: &mut Issues) -> OnGone {
    match s.string("on_gone", issues).as_deref() {
        None | Some("pause") => OnGone::Pause,
        Some("fail") => OnGone::Fail,
        Some(other) => {
            issues.push(&s.at("on_gone"), format!("{other:?} is not pause or fail"));
            OnGone::Pause
        }
    }
}
