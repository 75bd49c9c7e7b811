//! Counts every request a listener answers, by status (`hookrelay_http_requests_total`): a
//! response mapping outside all of the listener's layers, so refusals by load shedding,
//! timeouts, tokens and body limits are counted as the client saw them.

use std::sync::{Arc, OnceLock};

use axum::http::StatusCode;
use axum::response::Response;
use prometheus::{IntCounter, IntCounterVec};
use tower::util::MapResponseLayer;

/// The statuses the relay answers itself, each its own label, in ascending order.
const KNOWN: [(u16, &str); 17] = [
    (200, "200"),
    (201, "201"),
    (202, "202"),
    (204, "204"),
    (400, "400"),
    (401, "401"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (409, "409"),
    (413, "413"),
    (415, "415"),
    (422, "422"),
    (429, "429"),
    (500, "500"),
    (503, "503"),
    (508, "508"),
];
/// Labels of any other code: its class (600 and up count as `5xx`).
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One listener's request counters. Each is created at its status's first answer (no zero
/// series for statuses a listener never gives), then reused without a label lookup.
#[derive(Clone)]
pub struct RequestCounters(Arc<Counters>);

/// The counters behind [`RequestCounters`].
struct Counters {
    family: IntCounterVec,
    listener: &'static str,
    known: [OnceLock<IntCounter>; KNOWN.len()],
    classes: [OnceLock<IntCounter>; CLASSES.len()],
}

impl RequestCounters {
    /// The counters of `listener` in `family` (labels `listener`, `status`).
    pub fn new(family: IntCounterVec, listener: &'static str) -> Self {
        RequestCounters(Arc::new(Counters {
            family,
            listener,
            known: Default::default(),
            classes: Default::default(),
        }))
    }

    /// Counts one answer with `status`.
    pub fn count(&self, status: StatusCode) {
        let code = status.as_u16();
        let (slot, label) = match KNOWN.binary_search_by_key(&code, |(c, _)| *c) {
            Ok(i) => (&self.0.known[i], KNOWN[i].1),
            Err(_) => {
                let class = usize::from(code / 100).clamp(1, CLASSES.len()) - 1;
                (&self.0.classes[class], CLASSES[class])
            }
        };
        slot.get_or_init(|| self.0.family.with_label_values(&[self.0.listener, label]))
            .inc();
    }

    /// The layer that counts each response of the service it wraps.
    pub fn layer(&self) -> MapResponseLayer<impl Fn(Response) -> Response + Clone + use<>> {
        let counters = self.clone();
        MapResponseLayer::new(move |response: Response| {
            counters.count(response.status());
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use prometheus::core::Collector;

    use super::*;

    #[test]
    fn known_codes_count_as_themselves_and_others_by_class() {
        let family = IntCounterVec::new(
            prometheus::Opts::new("requests_total", "test"),
            &["listener", "status"],
        )
        .unwrap();
        let counters = RequestCounters::new(family.clone(), "app");
        for code in [202, 202, 422, 418, 302, 503] {
            counters.count(StatusCode::from_u16(code).unwrap());
        }
        let got = |status: &str| family.with_label_values(&["app", status]).get();
        assert_eq!(
            [got("202"), got("422"), got("4xx"), got("3xx"), got("503")],
            [2, 1, 1, 1, 1]
        );
        // No series for what was never answered.
        assert_eq!(family.collect()[0].get_metric().len(), 5);
    }

    #[test]
    fn the_known_codes_are_sorted_for_the_search() {
        assert!(KNOWN.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(KNOWN.iter().all(|(c, l)| c.to_string() == *l));
    }
}
