//! Which per-subscription series a subscription can have: derived from its channel alone,
//! so no code path creates a series its kind cannot produce.

use super::{ATTEMPT_RESULTS, FinalOutcome};
use crate::subscription::{Auth, Channel, Subscription};

/// The results an HTTP push attempt can have (no SMTP reply); `connect_error` last.
const HTTP_RESULTS: [&str; 4] = ["success", "http_error", "timeout", "connect_error"];
/// With `auth.oauth2`, also `auth_error`: its token could not be had.
const OAUTH2_RESULTS: [&str; 5] = [
    "success",
    "http_error",
    "timeout",
    "auth_error",
    "connect_error",
];
/// The results an e-mail attempt can have (no HTTP status); `connect_error` last.
const EMAIL_RESULTS: [&str; 4] = ["success", "smtp_error", "timeout", "connect_error"];
/// The outcomes a push delivery can reach under its own label (`cancelled` is counted under
/// the shared label only: a deleted subscription's own series are gone).
const PUSH_OUTCOMES: [FinalOutcome; 3] = [
    FinalOutcome::Delivered,
    FinalOutcome::Failed,
    FinalOutcome::Expired,
];
/// The outcomes a pull notification can reach: consumed or acknowledged, or expired (a
/// pull has no attempts, so it never fails).
const PULL_OUTCOMES: [FinalOutcome; 2] = [FinalOutcome::Delivered, FinalOutcome::Expired];

/// The per-subscription series a subscription can have, by its channel: only these are
/// created at zero, and any other series of its label is removed (its kind changed).
/// `hookrelay_delivery_concurrency_limit` and `hookrelay_subscription_state` come with a
/// push lane, and `hookrelay_oldest_pending_timestamp_seconds` only while one waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesSet {
    /// `hookrelay_delivery_attempts_total{result}`: the results its attempts can have.
    pub attempts: &'static [&'static str],
    /// `hookrelay_deliveries_total{outcome}`: the outcomes its deliveries can reach.
    pub outcomes: &'static [FinalOutcome],
    /// Pushed: `hookrelay_delivery_duration_seconds`, `hookrelay_dead_letters`, and the
    /// push lane's concurrency and state gauges.
    pub pushed: bool,
    /// `hookrelay_rate_limited_total`: pushed with a `rate_limit`.
    pub rate_limited: bool,
    /// `hookrelay_pull_redelivered_total`: a pull queue.
    pub pulled: bool,
    /// `hookrelay_oauth2_token_requests_total`: pushed over HTTP with `auth.oauth2`.
    pub oauth2: bool,
    /// `hookrelay_client_certificate_expiry_timestamp_seconds`: pushed over HTTP with a TLS
    /// client certificate. Not created at zero: set at lane add, to the certificate's expiry.
    pub client_cert: bool,
}

impl SeriesSet {
    /// The shared `_api` label's: API subscriptions of every kind count under it.
    pub const SHARED: SeriesSet = SeriesSet {
        attempts: &ATTEMPT_RESULTS,
        outcomes: &FinalOutcome::ALL,
        pushed: true,
        rate_limited: true,
        pulled: true,
        oauth2: true,
        // Own series only: a certificate's expiry is not summed under a shared label.
        client_cert: false,
    };

    /// None at all: a removed subscription's.
    pub const NONE: SeriesSet = SeriesSet {
        attempts: &[],
        outcomes: &[],
        pushed: false,
        rate_limited: false,
        pulled: false,
        oauth2: false,
        client_cert: false,
    };

    /// The series a subscription of this channel can have.
    pub fn of(channel: &Channel) -> SeriesSet {
        let push = |attempts: &'static [&'static str], rate_limited: bool| SeriesSet {
            attempts,
            outcomes: &PUSH_OUTCOMES,
            pushed: true,
            rate_limited,
            pulled: false,
            oauth2: false,
            client_cert: false,
        };
        match channel {
            Channel::Http { push: p, http } => {
                let oauth2 = matches!(http.auth, Some(Auth::OAuth2(_)));
                let attempts: &'static [&'static str] = if oauth2 {
                    &OAUTH2_RESULTS
                } else {
                    &HTTP_RESULTS
                };
                SeriesSet {
                    oauth2,
                    client_cert: http.tls.as_ref().is_some_and(|t| t.not_after.is_some()),
                    ..push(attempts, p.rate_limit.is_some())
                }
            }
            Channel::Email { push: p, .. } => push(&EMAIL_RESULTS, p.rate_limit.is_some()),
            Channel::Pull(_) => SeriesSet {
                attempts: &[],
                outcomes: &PULL_OUTCOMES,
                pushed: false,
                rate_limited: false,
                pulled: true,
                oauth2: false,
                client_cert: false,
            },
        }
    }

    /// The series of the label `sub` counts under: its own, or the shared label's.
    pub fn of_label(sub: &Subscription) -> SeriesSet {
        if sub.own_metrics {
            SeriesSet::of(&sub.channel)
        } else {
            SeriesSet::SHARED
        }
    }
}
