//! `hookrelay events get ID`: where an event's deliveries stand (`GET /v1/events/{id}` on the
//! app listener, which serves event status).

use clap::Subcommand;
use serde_json::Value;

use super::client::{APP, AppTarget, CliError, Client};
use super::table::{Table, cell};

/// What to do with events.
#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Show an event and each of its deliveries.
    Get {
        /// The event id.
        id: String,
    },
}

/// Runs an `events` command; returns what to print.
pub async fn run(target: &AppTarget, command: EventsCommand) -> Result<String, CliError> {
    let client = Client::new(target.url.clone(), APP)?;
    match command {
        EventsCommand::Get { id } => {
            let answer = client.get(client.url(&["v1", "events", &id], &[])).await?;
            Ok(super::output(target.json, &answer.body, render))
        }
    }
}

/// An event's line, then a table of its deliveries.
fn render(event: &Value) -> String {
    let mut head = format!(
        "event {}  type {}  received {}",
        cell(event, "id"),
        cell(event, "type"),
        cell(event, "received_at")
    );
    if let Some(ct) = event.get("content_type").and_then(Value::as_str) {
        head.push_str(&format!("  content-type {ct}"));
    }
    let mut table = Table::new(&[
        "DELIVERY",
        "SUBSCRIPTION",
        "STATE",
        "ATTEMPTS",
        "LAST_STATUS",
        "NEXT_ATTEMPT",
        "DELIVERED",
        "LAST_ERROR",
    ]);
    let none = Vec::new();
    let deliveries = event
        .get("deliveries")
        .and_then(Value::as_array)
        .unwrap_or(&none);
    for d in deliveries {
        table.row(
            [
                "id",
                "subscription",
                "state",
                "attempts",
                "last_status",
                "next_attempt_at",
                "delivered_at",
                "last_error",
            ]
            .map(|k| cell(d, k))
            .into(),
        );
    }
    format!("{head}\n{}", table.render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_shows_its_deliveries() {
        let event = json!({"id": "inv-1", "type": "invoice.paid", "received_at": "2026-11-22T20:58:50.730Z",
            "deliveries": [{"id": 1, "subscription": "billing", "state": "delivered", "attempts": 2,
                "budget_used": 2, "last_status": 204, "last_error": null, "next_attempt_at": null,
                "delivered_at": "2026-11-22T20:59:02.337Z"}]});
        assert_eq!(
            render(&event),
            "event inv-1  type invoice.paid  received 2026-11-22T20:58:50.730Z\n\
             DELIVERY  SUBSCRIPTION  STATE      ATTEMPTS  LAST_STATUS  NEXT_ATTEMPT  DELIVERED                 LAST_ERROR\n\
             1         billing       delivered  2         204          -             2026-11-22T20:59:02.337Z  -\n"
        );
    }
}
