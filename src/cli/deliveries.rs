//! `hookrelay deliveries list|retry` and `hookrelay release`: dead letters and the deliveries
//! of a state (`GET /v1/deliveries`, `POST /v1/deliveries/{id}/retry`,
//! `POST /v1/deliveries/release`).

use clap::Subcommand;
use serde_json::{Value, json};

use super::client::{API, ApiTarget, CliError, Client};
use super::table::{Table, cell};

/// What to do with deliveries.
#[derive(Subcommand, Debug)]
pub enum DeliveriesCommand {
    /// List deliveries in one state, oldest first, following every page.
    List {
        /// Only deliveries in this state: pending, in_flight, delivered, failed, expired,
        /// orphaned, cancelled or waiting.
        #[arg(long, default_value = "failed")]
        state: String,
        /// Only this subscription's (id or name).
        #[arg(long, value_name = "SUBSCRIPTION")]
        subscription: Option<String>,
        /// Stop after this many deliveries (default: all).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// Deliveries asked for per request.
        #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=1000))]
        page_size: u16,
    },
    /// Put one failed or expired delivery back to pending, with a fresh retry budget.
    Retry {
        /// The delivery id.
        id: String,
    },
}

/// Runs a `deliveries` command; returns what to print.
pub async fn run(target: &ApiTarget, command: DeliveriesCommand) -> Result<String, CliError> {
    let client = Client::new(target.url.clone(), API)?;
    match command {
        DeliveriesCommand::List {
            state,
            subscription,
            limit,
            page_size,
        } => {
            let all = list(&client, &state, subscription.as_deref(), limit, page_size).await?;
            Ok(super::output(target.json, &Value::Array(all), render_list))
        }
        DeliveriesCommand::Retry { id } => {
            let url = client.url(&["v1", "deliveries", &id, "retry"], &[]);
            let answer = client.post(url, None).await?;
            Ok(super::output(target.json, &answer, |a| {
                format!("delivery {}: {}\n", cell(a, "id"), cell(a, "state"))
            }))
        }
    }
}

/// `hookrelay release`: puts dead letters back to pending.
pub async fn release(target: &ApiTarget, subscription: Option<String>) -> Result<String, CliError> {
    let client = Client::new(target.url.clone(), API)?;
    let url = client.url(&["v1", "deliveries", "release"], &[]);
    let body = subscription.map(|s| json!({ "subscription": s }));
    let answer = client.post(url, body).await?;
    Ok(super::output(target.json, &answer, |a| {
        format!("released {} deliveries\n", cell(a, "released"))
    }))
}

/// Every page of the listing (up to `limit` deliveries), following `next_after`.
async fn list(
    client: &Client,
    state: &str,
    subscription: Option<&str>,
    limit: Option<u64>,
    page_size: u16,
) -> Result<Vec<Value>, CliError> {
    let mut all: Vec<Value> = Vec::new();
    let mut after: Option<i64> = None;
    loop {
        let want = limit.map_or(page_size as u64, |l| {
            (l - all.len() as u64).min(page_size as u64)
        });
        let mut query = vec![("state", state.to_string()), ("limit", want.to_string())];
        if let Some(s) = subscription {
            query.push(("subscription", s.to_string()));
        }
        if let Some(a) = after {
            query.push(("after", a.to_string()));
        }
        let pairs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let url = client.url(&["v1", "deliveries"], &pairs);
        let page = client.get(url.clone()).await?.body;
        let Some(deliveries) = page.get("deliveries").and_then(Value::as_array) else {
            return Err(CliError::Response {
                url: url.to_string(),
                reason: "no deliveries array".into(),
            });
        };
        all.extend(deliveries.iter().cloned());
        let next = page.get("next_after").and_then(Value::as_i64);
        if limit.is_some_and(|l| all.len() as u64 >= l) {
            return Ok(all);
        }
        match next {
            None => return Ok(all),
            // Ids only grow; anything else would page forever.
            Some(n) if after.is_some_and(|a| n <= a) => {
                return Err(CliError::Response {
                    url: url.to_string(),
                    reason: format!("next_after {n} does not move past {}", after.unwrap_or(0)),
                });
            }
            Some(n) => after = Some(n),
        }
    }
}

/// One row per delivery.
fn render_list(all: &Value) -> String {
    let mut table = Table::new(&[
        "ID",
        "EVENT",
        "TYPE",
        "SUBSCRIPTION",
        "STATE",
        "ATTEMPTS",
        "LAST_STATUS",
        "RECEIVED",
        "NEXT_ATTEMPT",
        "LAST_ERROR",
    ]);
    for d in all.as_array().into_iter().flatten() {
        table.row(
            [
                "id",
                "event_id",
                "type",
                "subscription",
                "state",
                "attempts",
                "last_status",
                "received_at",
                "next_attempt_at",
                "last_error",
            ]
            .map(|k| cell(d, k))
            .into(),
        );
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_one_row() {
        let all = json!([{"id": 7, "event_id": "inv-42-paid", "type": "invoice.paid",
            "subscription": "billing", "state": "failed", "attempts": 5, "budget_used": 5,
            "last_status": 500, "last_error": "HTTP 500 Internal Server Error (after 5 attempts)",
            "next_attempt_at": null, "delivered_at": null, "received_at": "2026-11-22T20:58:50.730Z"}]);
        let text = render_list(&all);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("ID  EVENT        TYPE          SUBSCRIPTION"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("7   inv-42-paid  invoice.paid  billing       failed  5")
                && lines[1]
                    .ends_with("-             HTTP 500 Internal Server Error (after 5 attempts)"),
            "{text}"
        );
    }
}
