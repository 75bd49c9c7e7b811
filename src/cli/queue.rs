//! `hookrelay queue stats`: depth, in flight, oldest and dead letters per subscription
//! (`GET /v1/queue`).

use clap::Subcommand;
use serde_json::Value;

use super::client::{API, ApiTarget, CliError, Client};
use super::table::{Table, age, cell};

/// What to show of the queue.
#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// Per subscription: deliveries not finished (depth), those in flight, the oldest one's
    /// acceptance time and age, dead letters and orphans.
    Stats,
}

/// Runs a `queue` command; returns what to print.
pub async fn run(target: &ApiTarget, command: QueueCommand) -> Result<String, CliError> {
    let client = Client::new(target.url.clone(), API)?;
    match command {
        QueueCommand::Stats => {
            let answer = client.get(client.url(&["v1", "queue"], &[])).await?;
            Ok(super::output(target.json, &answer.body, |q| {
                render(q, chrono::Utc::now())
            }))
        }
    }
}

/// One row per subscription.
fn render(queue: &Value, now: chrono::DateTime<chrono::Utc>) -> String {
    let mut table = Table::new(&[
        "SUBSCRIPTION",
        "DEPTH",
        "IN_FLIGHT",
        "OLDEST",
        "AGE",
        "DEAD_LETTERS",
        "ORPHANED",
    ]);
    let subs = queue.get("subscriptions").and_then(Value::as_array);
    for s in subs.into_iter().flatten() {
        table.row(vec![
            cell(s, "subscription"),
            cell(s, "depth"),
            cell(s, "in_flight"),
            cell(s, "oldest_at"),
            age(s.get("oldest_at").unwrap_or(&Value::Null), now),
            cell(s, "dead_letters"),
            cell(s, "orphaned"),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_subscription_is_a_row_with_the_age_of_its_oldest() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-22T21:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let q = json!({"subscriptions": [
            {"subscription": "billing", "depth": 3, "in_flight": 1,
             "oldest_at": "2026-11-22T20:58:50.730Z", "dead_letters": 2, "orphaned": 0},
            {"subscription": "crm", "depth": 0, "in_flight": 0, "oldest_at": null,
             "dead_letters": 0, "orphaned": 0}]});
        assert_eq!(
            render(&q, now),
            "SUBSCRIPTION  DEPTH  IN_FLIGHT  OLDEST                    AGE    DEAD_LETTERS  ORPHANED\n\
             billing       3      1          2026-11-22T20:58:50.730Z  1m 9s  2             0\n\
             crm           0      0          -                         -      0             0\n"
        );
    }
}
