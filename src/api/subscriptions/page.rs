//! Pages of `GET /v1/subscriptions`: `limit` and an `after` cursor (a subscription's name or
//! id), with the next page's address for a `Link` header.

use std::collections::HashMap;
use std::ops::Range;

use crate::inbound::error::HttpError;

/// Subscriptions on a page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// The most `limit` may ask for.
pub const MAX_LIMIT: usize = 1000;

/// What a query asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct PageQuery {
    /// Subscriptions on the page at most.
    pub limit: usize,
    /// Start after this subscription (name or id).
    pub after: Option<String>,
}

impl PageQuery {
    /// Reads `limit` and `after`; a bad `limit` is a field of `error`.
    pub fn parse(q: &HashMap<String, String>, error: HttpError) -> (PageQuery, HttpError) {
        let (limit, error) = match q.get("limit").map(|l| l.parse::<usize>()) {
            None => (DEFAULT_LIMIT, error),
            Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => (n, error),
            Some(_) => (
                DEFAULT_LIMIT,
                error.field("limit", format!("must be 1..={MAX_LIMIT}")),
            ),
        };
        let after = q.get("after").cloned();
        (PageQuery { limit, after }, error)
    }

    /// The part of `keys` (each subscription's name and id, in listing order) on this page,
    /// and whether more follow; `None` when `after` names none of them.
    pub fn window(&self, keys: &[(&str, &str)]) -> Option<(Range<usize>, bool)> {
        let start = match &self.after {
            None => 0,
            Some(after) => keys.iter().position(|(n, i)| n == after || i == after)? + 1,
        };
        let end = (start + self.limit).min(keys.len());
        Some((start..end, end < keys.len()))
    }
}

/// The address of the page after `last`, keeping `event` and `limit`.
pub fn next_link(event: Option<&str>, limit: usize, last: &str) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(e) = event {
        query.append_pair("event", e);
    }
    query.append_pair("limit", &limit.to_string());
    query.append_pair("after", last);
    format!("</v1/subscriptions?{}>; rel=\"next\"", query.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> (PageQuery, bool) {
        let q = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let base = HttpError::new(http::StatusCode::UNPROCESSABLE_ENTITY, "invalid_query", "x");
        let (page, error) = PageQuery::parse(&q, base);
        (page, error.has_fields())
    }

    #[test]
    fn limit_defaults_to_100_and_stays_within_1_to_1000() {
        assert_eq!(query(&[]).0.limit, 100);
        assert_eq!(
            query(&[("limit", "1000")]),
            (
                PageQuery {
                    limit: 1000,
                    after: None
                },
                false
            )
        );
        for bad in ["0", "1001", "x", "-1"] {
            assert!(query(&[("limit", bad)]).1, "{bad}");
        }
    }

    #[test]
    fn pages_follow_the_cursor_by_name_or_id() {
        let keys = [("a", "id-a"), ("b", "id-b"), ("c", "id-c")];
        let page = |after: Option<&str>| PageQuery {
            limit: 2,
            after: after.map(str::to_string),
        };
        assert_eq!(page(None).window(&keys), Some((0..2, true)));
        assert_eq!(page(Some("b")).window(&keys), Some((2..3, false)));
        assert_eq!(page(Some("id-a")).window(&keys), Some((1..3, false)));
        assert_eq!(page(Some("c")).window(&keys), Some((3..3, false)));
        assert_eq!(page(Some("gone")).window(&keys), None);
    }

    #[test]
    fn the_next_link_keeps_the_query_and_escapes_it() {
        assert_eq!(
            next_link(Some("invoice paid&x"), 2, "b"),
            "</v1/subscriptions?event=invoice+paid%26x&limit=2&after=b>; rel=\"next\""
        );
    }
}
