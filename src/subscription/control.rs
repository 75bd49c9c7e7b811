//! A push subscription's delivery control settings: its circuit breaker (`circuit`), what a
//! `410 Gone` does (`on_gone`) and whether it starts paused (`paused`).

use std::time::Duration;

use serde_yaml::Value;

use crate::yaml::{Issues, Section, describe};

/// Keys of the `circuit` mapping.
const CIRCUIT_KEYS: &[&str] = &[
    "enabled",
    "failures",
    "window",
    "cool_down",
    "max_cool_down",
];

/// Durations the breaker accepts (short ones keep tests quick).
const SHORTEST: Duration = Duration::from_millis(100);
/// The longest `window` and `cool_down`.
const HOUR: Duration = Duration::from_secs(3600);
/// The longest `max_cool_down`.
const DAY: Duration = Duration::from_secs(86_400);

/// A push subscription's circuit breaker: it opens after `failures` consecutive failed
/// attempts within `window`, holds every attempt for `cool_down`, then lets one probe out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitSettings {
    /// Consecutive failed attempts that open it.
    pub failures: u32,
    /// A streak of failures older than this starts again.
    pub window: Duration,
    /// The first pause while open; doubled by each failed probe.
    pub cool_down: Duration,
    /// The longest pause while open.
    pub max_cool_down: Duration,
}

impl Default for CircuitSettings {
    fn default() -> Self {
        CircuitSettings {
            failures: 5,
            window: Duration::from_secs(30),
            cool_down: Duration::from_secs(30),
            max_cool_down: Duration::from_secs(600),
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
                    "expected off or a mapping of failures, window, cool_down, max_cool_down, found {}",
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
    enabled.then_some(CircuitSettings {
        failures,
        window,
        cool_down,
        max_cool_down,
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
