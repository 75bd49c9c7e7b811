//! What a receiver answered ([`Reply`]) and the one judgement of it ([`Verdict`]): delivered,
//! worth retrying (with the reason and any pressure the receiver signalled), or refused for
//! good. Metrics, logs and the store's next step all follow from the verdict.

use std::time::{Duration, SystemTime};

use http::StatusCode;
use tower::BoxError;

use super::token_error::TokenError;
use crate::backoff::Pressure;
use crate::subscription::{FinalStatuses, SuccessCodes};

/// Longest `last_error` kept.
const ERROR_LIMIT: usize = 300;

/// What the receiver answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An HTTP response.
    Http {
        /// Response status.
        status: StatusCode,
        /// `Retry-After`, when given in seconds or as a date.
        retry_after: Option<Duration>,
    },
    /// An SMTP server's final reply to the mail (or its first refusal).
    Smtp {
        /// Reply code: 2xx accepted, 4xx try again later, 5xx refused for good.
        code: u16,
        /// The server's text.
        text: String,
    },
}

/// The verdict on one attempt: its reply classified once; metrics, logs and scheduling all
/// follow from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Status matched `success_code`.
    Delivered(StatusCode),
    /// Worth retrying later.
    Retryable {
        /// Metric label: `http_error`, `smtp_error`, `timeout`, `auth_error` or
        /// `connect_error`.
        result: &'static str,
        /// Status, when the receiver answered.
        status: Option<StatusCode>,
        /// Whether the receiver signalled overload (429, timeout).
        pressure: Pressure,
        /// The receiver's `Retry-After`.
        retry_after: Option<Duration>,
        /// Short reason, free of secrets.
        error: String,
    },
    /// Never worth retrying (`410 Gone`, a status in `final_statuses`, an SMTP 5xx).
    Permanent {
        /// Metric label: `http_error` or `smtp_error`.
        result: &'static str,
        /// The status (the SMTP reply code for mail).
        status: StatusCode,
        /// Short reason.
        error: String,
    },
}

impl Verdict {
    /// The `result` label of `hookrelay_delivery_attempts_total`.
    pub fn result_label(&self) -> &'static str {
        match self {
            Verdict::Delivered(_) => "success",
            Verdict::Retryable { result, .. } => result,
            Verdict::Permanent { result, .. } => result,
        }
    }

    /// A sign the receiver cannot take it now: no answer (timeout, connection), 408, 429,
    /// a 5xx, or SMTP's "try later". Any other answer shows a live receiver.
    pub fn is_overload(&self) -> bool {
        match self {
            // The receiver was not reached: its token could not be had.
            Verdict::Retryable {
                result: "auth_error",
                ..
            } => false,
            Verdict::Retryable { status: None, .. } => true,
            Verdict::Retryable {
                result: "smtp_error",
                ..
            } => true,
            Verdict::Retryable {
                status: Some(s), ..
            } => s.is_server_error() || matches!(s.as_u16(), 408 | 429),
            Verdict::Delivered(_) | Verdict::Permanent { .. } => false,
        }
    }

    /// The status the receiver answered, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            Verdict::Delivered(s) | Verdict::Permanent { status: s, .. } => Some(s.as_u16()),
            Verdict::Retryable { status, .. } => status.map(|s| s.as_u16()),
        }
    }
}

/// Classifies an attempt's result; the one place that decides success, retry or failure.
/// `finals` are the subscription's `final_statuses` (HTTP only: an SMTP reply is judged by
/// its class).
pub fn classify(
    result: Result<Reply, BoxError>,
    success: &SuccessCodes,
    finals: &FinalStatuses,
    timeout: Duration,
) -> Verdict {
    match result {
        Ok(Reply::Http { status, .. }) if success.contains(status.as_u16()) => {
            Verdict::Delivered(status)
        }
        Ok(Reply::Http { status, .. }) if status == StatusCode::GONE => Verdict::Permanent {
            result: "http_error",
            status,
            error: "HTTP 410 Gone: the receiver asked to stop".to_string(),
        },
        Ok(Reply::Http { status, .. }) if finals.contains(status.as_u16()) => Verdict::Permanent {
            result: "http_error",
            status,
            error: format!("HTTP {status}: a final status (final_statuses), not retried"),
        },
        Ok(Reply::Http {
            status,
            retry_after,
        }) => Verdict::Retryable {
            result: "http_error",
            status: Some(status),
            pressure: if status == StatusCode::TOO_MANY_REQUESTS {
                Pressure::Overloaded
            } else {
                Pressure::Normal
            },
            retry_after,
            error: unexpected(status, success),
        },
        Ok(Reply::Smtp { code, text }) => {
            // SMTP codes are 2xx..5xx, inside StatusCode's 100..=999.
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            let error = clip(format!("SMTP {code}: {text}"));
            match code {
                200..=299 => Verdict::Delivered(status),
                500.. => Verdict::Permanent {
                    result: "smtp_error",
                    status,
                    error,
                },
                _ => Verdict::Retryable {
                    result: "smtp_error",
                    status: Some(status),
                    pressure: Pressure::Normal,
                    retry_after: None,
                    error,
                },
            }
        }
        Err(e) if e.is::<tower::timeout::error::Elapsed>() => Verdict::Retryable {
            result: "timeout",
            status: None,
            pressure: Pressure::Overloaded,
            retry_after: None,
            error: format!("no response within {}", crate::yaml::fmt_duration(timeout)),
        },
        Err(ref e) if let Some(t) = e.downcast_ref::<TokenError>() => Verdict::Retryable {
            result: "auth_error",
            status: None,
            // The token endpoint's overload is worth backing off from like a receiver's.
            pressure: match t.status() {
                Some(s) if s == 429 || s >= 500 => Pressure::Overloaded,
                _ => Pressure::Normal,
            },
            retry_after: t.retry_after(),
            error: clip(t.to_string()),
        },
        Err(e) => {
            let timed_out = e
                .downcast_ref::<reqwest::Error>()
                .is_some_and(reqwest::Error::is_timeout)
                || e.downcast_ref::<lettre::transport::smtp::Error>()
                    .is_some_and(lettre::transport::smtp::Error::is_timeout);
            Verdict::Retryable {
                result: if timed_out {
                    "timeout"
                } else {
                    "connect_error"
                },
                status: None,
                pressure: if timed_out {
                    Pressure::Overloaded
                } else {
                    Pressure::Normal
                },
                retry_after: None,
                error: describe_error(e),
            }
        }
    }
}

/// An attempt that failed in the stack's outer layers, before it could be classified there.
pub fn stack_error(e: BoxError) -> Verdict {
    classify(
        Err(e),
        &SuccessCodes::default(),
        &FinalStatuses::default(),
        Duration::ZERO,
    )
}

/// An error and its causes on one line, without URLs (which may carry tokens in queries);
/// a failed TLS handshake is said in words first, with what to change.
fn describe_error(e: BoxError) -> String {
    if let Some(hint) = tls_hint(e.as_ref()) {
        return clip(hint);
    }
    describe_cause(e)
}

/// [`describe_error`] without the TLS hint, for the OAuth2 token endpoint (its sender has
/// no `tls` settings, so the hint's advice about them would mislead).
pub(super) fn describe_cause(e: BoxError) -> String {
    let e = match e.downcast::<reqwest::Error>() {
        Ok(re) => return chain(&re.without_url()),
        Err(other) => other,
    };
    chain(e.as_ref())
}

/// The rustls error `err` is, or holds inside `io::Error`s (reqwest wraps it in two).
fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = err.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    rustls_error(err.downcast_ref::<std::io::Error>()?.get_ref()?)
}

/// Which side of a TLS handshake refused the other, when a rustls error is in `e`'s chain.
fn tls_hint(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::{AlertDescription as Alert, CertificateError, Error as Tls};
    let mut next = Some(e);
    let found = loop {
        let err = next?;
        if let Some(tls) = rustls_error(err) {
            break tls;
        }
        next = err.source();
    };
    Some(match found {
        // Under TLS 1.3 the client learns of a refused certificate from the first alert.
        Tls::AlertReceived(
            Alert::CertificateRequired
            | Alert::UnknownCA
            | Alert::BadCertificate
            | Alert::CertificateUnknown
            | Alert::CertificateExpired
            | Alert::CertificateRevoked
            | Alert::UnsupportedCertificate
            | Alert::AccessDenied,
        ) => format!("tls: the receiver refused the client certificate ({found})"),
        Tls::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "tls: the receiver's certificate is not for this host ({found}); set tls.server_name"
        ),
        Tls::InvalidCertificate(CertificateError::UnknownIssuer) => {
            format!("tls: the receiver's certificate is not trusted ({found}); set tls.ca")
        }
        Tls::InvalidCertificate(_) => {
            format!("tls: the receiver's certificate is not trusted ({found})")
        }
        other => format!("tls: the handshake failed ({other})"),
    })
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    clip(text)
}

/// `text` cut to the longest `last_error` kept, without NUL (a peer's reply can hold one,
/// and PostgreSQL's text cannot).
pub(super) fn clip(mut text: String) -> String {
    if text.contains('\0') {
        text = text.replace('\0', "\u{fffd}");
    }
    if text.len() > ERROR_LIMIT {
        let mut cut = ERROR_LIMIT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The error of a status that is not a success code: with configured `success_code`s it
/// says what was expected, since a 2xx retried is otherwise a puzzle ("HTTP 204, expected 200").
fn unexpected(status: StatusCode, success: &SuccessCodes) -> String {
    if *success == SuccessCodes::default_2xx() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}, expected {success}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16) -> Result<Reply, BoxError> {
        Ok(Reply::Http {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after: None,
        })
    }

    #[test]
    fn a_token_failure_is_a_retryable_auth_error_that_is_no_overload() {
        let judge = |e: TokenError| {
            classify(
                Err(e.into()),
                &SuccessCodes::default(),
                &FinalStatuses::default(),
                Duration::from_secs(1),
            )
        };
        let refused = TokenError::Refused {
            status: 400,
            error: "invalid_client".into(),
            description: None,
            retry_after: None,
        };
        let v = judge(refused);
        assert_eq!(
            v,
            Verdict::Retryable {
                result: "auth_error",
                status: None,
                pressure: Pressure::Normal,
                retry_after: None,
                error: "oauth2: token endpoint answered 400 invalid_client".into(),
            }
        );
        assert!(!v.is_overload());
        let busy = judge(TokenError::Status {
            status: 503,
            retry_after: Some(Duration::from_secs(7)),
        });
        assert!(
            matches!(busy, Verdict::Retryable { pressure: Pressure::Overloaded,
            retry_after: Some(d), .. } if d == Duration::from_secs(7))
        );
        // Through the attempt's stack a token error arrives boxed once more.
        let boxed: BoxError = Box::new(TokenError::Unreachable("refused".into()));
        assert_eq!(stack_error(boxed).result_label(), "auth_error");
    }

    #[test]
    fn an_error_text_is_bounded_and_holds_no_nul() {
        assert_eq!(clip("550 no\0such".into()), "550 no\u{fffd}such");
        assert!(clip("é".repeat(ERROR_LIMIT)).len() <= ERROR_LIMIT);
    }

    #[test]
    fn tls_failures_say_which_side_refused_and_what_to_set() {
        use rustls::{AlertDescription, CertificateError, Error as Tls};
        // reqwest's shape: the rustls error inside an io::Error inside another.
        let wrapped = |e: Tls| -> Result<Reply, BoxError> {
            let inner = std::io::Error::other(e);
            Err(Box::new(std::io::Error::other(inner)))
        };
        let error = |r| match stack_error(match r {
            Err(e) => e,
            Ok(_) => unreachable!(),
        }) {
            Verdict::Retryable { result, error, .. } => (result, error),
            other => panic!("{other:?}"),
        };
        let (result, text) = error(wrapped(Tls::AlertReceived(AlertDescription::UnknownCA)));
        assert_eq!(result, "connect_error");
        assert_eq!(
            text,
            "tls: the receiver refused the client certificate (received fatal alert: UnknownCA)"
        );
        let (_, text) = error(wrapped(Tls::InvalidCertificate(
            CertificateError::UnknownIssuer,
        )));
        assert!(text.ends_with("; set tls.ca"), "{text}");
        let (_, text) = error(wrapped(Tls::InvalidCertificate(
            CertificateError::NotValidForName,
        )));
        assert!(text.ends_with("; set tls.server_name"), "{text}");
        // Not TLS: the chain as before.
        let (_, text) = error(Err("refused".into()));
        assert_eq!(text, "refused");
    }

    fn smtp(code: u16) -> Result<Reply, BoxError> {
        Ok(Reply::Smtp {
            code,
            text: "text".into(),
        })
    }

    #[test]
    fn smtp_classification() {
        let ok = SuccessCodes::default_2xx();
        let none = FinalStatuses::default();
        let t = Duration::from_secs(1);
        assert_eq!(
            classify(smtp(250), &ok, &none, t),
            Verdict::Delivered(StatusCode::from_u16(250).unwrap())
        );
        let retry = classify(smtp(451), &ok, &none, t);
        assert!(
            matches!(&retry, Verdict::Retryable { status: Some(s), error, .. }
                if s.as_u16() == 451 && error == "SMTP 451: text"),
            "{retry:?}"
        );
        assert_eq!(retry.result_label(), "smtp_error");
        let refused = classify(smtp(550), &ok, &none, t);
        assert!(matches!(refused, Verdict::Permanent { .. }), "{refused:?}");
        assert_eq!(refused.result_label(), "smtp_error");
        assert_eq!(refused.status(), Some(550));
    }

    #[test]
    fn classification() {
        let ok = SuccessCodes::default_2xx();
        let none = FinalStatuses::default();
        let t = Duration::from_secs(1);
        assert_eq!(
            classify(reply(204), &ok, &none, t),
            Verdict::Delivered(StatusCode::NO_CONTENT)
        );
        assert_eq!(
            classify(reply(302), &ok, &none, t).result_label(),
            "http_error"
        );
        assert!(matches!(
            classify(reply(410), &ok, &none, t),
            Verdict::Permanent { .. }
        ));
        assert!(matches!(
            classify(reply(429), &ok, &none, t),
            Verdict::Retryable {
                pressure: Pressure::Overloaded,
                ..
            }
        ));
        assert!(matches!(
            classify(reply(500), &ok, &none, t),
            Verdict::Retryable {
                pressure: Pressure::Normal,
                status: Some(_),
                ..
            }
        ));
        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        let a = classify(Err(elapsed), &ok, &none, t);
        assert_eq!(a.result_label(), "timeout");
        let other: BoxError = "connection refused".into();
        assert_eq!(
            classify(Err(other), &ok, &none, t).result_label(),
            "connect_error"
        );
        assert!(
            matches!(
                classify(reply(422), &ok, &none, t),
                Verdict::Retryable { .. }
            ),
            "without final_statuses a 4xx is retried, as before"
        );
    }

    #[test]
    fn a_status_outside_configured_success_codes_says_what_was_expected() {
        let none = FinalStatuses::default();
        let t = Duration::from_secs(1);
        let error = |v: Verdict| match v {
            Verdict::Retryable { error, .. } => error,
            other => panic!("{other:?}"),
        };
        let only_200 = crate::subscription::tests::success_codes("200");
        assert_eq!(
            error(classify(reply(204), &only_200, &none, t)),
            "HTTP 204 No Content, expected 200"
        );
        let list = crate::subscription::tests::success_codes("[200, '3xx']");
        assert_eq!(
            error(classify(reply(500), &list, &none, t)),
            "HTTP 500 Internal Server Error, expected 200 or 3xx"
        );
        // The default (any 2xx) needs no reminder.
        assert_eq!(
            error(classify(reply(500), &SuccessCodes::default_2xx(), &none, t)),
            "HTTP 500 Internal Server Error"
        );
    }

    #[test]
    fn final_statuses_fail_at_once_but_a_class_leaves_408_and_429() {
        let ok = SuccessCodes::default_2xx();
        let t = Duration::from_secs(1);
        let finals = crate::subscription::tests::final_statuses("[\"4xx\", 503]");
        for code in [400, 404, 422, 451, 503] {
            let v = classify(reply(code), &ok, &finals, t);
            assert!(
                matches!(&v, Verdict::Permanent { status, error, .. }
                    if status.as_u16() == code && error.contains("final_statuses")),
                "{code}: {v:?}"
            );
            assert_eq!(v.result_label(), "http_error");
        }
        for code in [408, 429, 500, 502] {
            let v = classify(reply(code), &ok, &finals, t);
            assert!(matches!(v, Verdict::Retryable { .. }), "{code}: {v:?}");
        }
        let named = crate::subscription::tests::final_statuses("[\"4xx\", 429]");
        assert!(matches!(
            classify(reply(429), &ok, &named, t),
            Verdict::Permanent { .. }
        ));
        assert!(matches!(
            classify(smtp(550), &ok, &finals, t),
            Verdict::Permanent { .. }
        ));
        assert!(matches!(
            classify(smtp(451), &ok, &finals, t),
            Verdict::Retryable { .. }
        ));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
