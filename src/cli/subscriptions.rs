//! `hookrelay subscriptions list|get|pause|resume` (`GET /v1/subscriptions`, which pages with
//! a `Link` header, `GET /v1/subscriptions/{id}` and its `pause` and `resume`).

use clap::Subcommand;
use serde_json::Value;

use super::client::{API, ApiTarget, CliError, Client};
use super::table::{Table, cell, text};

/// What to do with subscriptions.
#[derive(Subcommand, Debug)]
pub enum SubscriptionsCommand {
    /// List every subscription (the config's, then the API's), following every page.
    List {
        /// Only subscriptions whose `events` select this event type.
        #[arg(long, value_name = "TYPE")]
        event: Option<String>,
        /// Subscriptions asked for per request.
        #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
        page_size: u16,
    },
    /// Show one subscription (secrets are never shown).
    Get {
        /// Its id or name.
        subscription: String,
    },
    /// Pause a push or e-mail subscription: nothing is sent until it is resumed.
    Pause {
        /// Its id or name.
        subscription: String,
    },
    /// Resume a paused subscription.
    Resume {
        /// Its id or name.
        subscription: String,
    },
}

/// Runs a `subscriptions` command; returns what to print.
pub async fn run(target: &ApiTarget, command: SubscriptionsCommand) -> Result<String, CliError> {
    let client = Client::new(target.url.clone(), API)?;
    let one = |key: &str, action: Option<&str>| {
        let mut segments = vec!["v1", "subscriptions", key];
        segments.extend(action);
        client.url(&segments, &[])
    };
    match command {
        SubscriptionsCommand::List { event, page_size } => {
            let size = page_size.to_string();
            let mut query = vec![("limit", size.as_str())];
            query.extend(event.as_deref().map(|e| ("event", e)));
            let all = list(&client, client.url(&["v1", "subscriptions"], &query)).await?;
            Ok(super::output(target.json, &Value::Array(all), render_list))
        }
        SubscriptionsCommand::Get { subscription } => {
            let answer = client.get(one(&subscription, None)).await?;
            Ok(super::output(target.json, &answer.body, render_one))
        }
        SubscriptionsCommand::Pause { subscription } => {
            let answer = client.post(one(&subscription, Some("pause")), None).await?;
            Ok(super::output(target.json, &answer, render_state))
        }
        SubscriptionsCommand::Resume { subscription } => {
            let answer = client
                .post(one(&subscription, Some("resume")), None)
                .await?;
            Ok(super::output(target.json, &answer, render_state))
        }
    }
}

/// Every page, following `Link: <...>; rel="next"`.
async fn list(client: &Client, first: url::Url) -> Result<Vec<Value>, CliError> {
    let mut all = Vec::new();
    let mut url = first;
    loop {
        let answer = client.get(url.clone()).await?;
        let Value::Array(page) = answer.body else {
            return Err(CliError::Response {
                url: url.to_string(),
                reason: "not a JSON array".into(),
            });
        };
        // A page without subscriptions that points further would page forever.
        let empty = page.is_empty();
        all.extend(page);
        match answer.next {
            Some(next) if !empty && next != url => url = next,
            _ => return Ok(all),
        }
    }
}

/// A subscription's mode: `push` when the document leaves it out.
fn mode(sub: &Value) -> String {
    sub.get("mode")
        .and_then(Value::as_str)
        .unwrap_or("push")
        .to_string()
}

/// Where it delivers: its URL, its e-mail recipients, or `pulled`.
fn target(sub: &Value) -> String {
    if let Some(url) = sub.get("url").and_then(Value::as_str) {
        return url.to_string();
    }
    let to = sub.pointer("/email/to").and_then(Value::as_array);
    match to {
        Some(to) => to
            .iter()
            .map(|r| r.get("email").map_or_else(|| text(r), text))
            .collect::<Vec<_>>()
            .join(","),
        None if mode(sub) == "pull" => "pulled".into(),
        None => "-".into(),
    }
}

/// One row per subscription.
fn render_list(all: &Value) -> String {
    let mut table = Table::new(&["NAME", "SOURCE", "MODE", "STATE", "EVENTS", "TARGET"]);
    for s in all.as_array().into_iter().flatten() {
        let events = s.get("events").and_then(Value::as_array);
        let events = events.map(|e| e.iter().map(text).collect::<Vec<_>>().join(","));
        table.row(vec![
            cell(s, "name"),
            cell(s, "source"),
            mode(s),
            delivery_state(s),
            events.unwrap_or_else(|| "-".into()),
            target(s),
        ]);
    }
    table.render()
}

/// `delivery.state`, or `-` for a pull subscription (it has none).
fn delivery_state(sub: &Value) -> String {
    sub.pointer("/delivery/state")
        .map_or_else(|| "-".into(), text)
}

/// One member per line: name, id, source and mode first, then the rest by name.
fn render_one(sub: &Value) -> String {
    let mut table = Table::new(&["name", &cell(sub, "name")]);
    table.row(vec!["id".into(), cell(sub, "id")]);
    table.row(vec!["source".into(), cell(sub, "source")]);
    table.row(vec!["mode".into(), mode(sub)]);
    let first = ["name", "id", "source", "mode"];
    for (key, value) in sub.as_object().into_iter().flatten() {
        if !first.contains(&key.as_str()) {
            table.row(vec![key.clone(), text(value)]);
        }
    }
    table.render()
}

/// `name: state (reason, since)` after a pause or a resume.
fn render_state(sub: &Value) -> String {
    format!(
        "{}: {} (reason {}, since {})\n",
        cell(sub, "name"),
        delivery_state(sub),
        sub.pointer("/delivery/reason")
            .map_or_else(|| "-".into(), text),
        sub.pointer("/delivery/since")
            .map_or_else(|| "-".into(), text),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_channel_shows_its_target_and_state() {
        let all = json!([
            {"name": "billing", "source": "config", "events": ["invoice.*", "refund"],
             "url": "http://127.0.0.1:9000/hooks", "delivery": {"state": "active"}},
            {"name": "mail", "source": "api", "mode": "email", "events": ["*"],
             "email": {"to": [{"email": "a@b.example"}, {"email": "c@d.example"}]},
             "delivery": {"state": "paused"}},
            {"name": "poll", "source": "api", "mode": "pull", "events": ["x"]},
        ]);
        assert_eq!(
            render_list(&all),
            "NAME     SOURCE  MODE   STATE   EVENTS            TARGET\n\
             billing  config  push   active  invoice.*,refund  http://127.0.0.1:9000/hooks\n\
             mail     api     email  paused  *                 a@b.example,c@d.example\n\
             poll     api     pull   -       x                 pulled\n"
        );
    }

    #[test]
    fn one_subscription_lists_its_members_with_the_names_first() {
        let sub = json!({"name": "b", "id": "b", "source": "config", "retries": 3,
            "auth": {"bearer": {}}, "delivery": {"state": "active"}});
        assert_eq!(
            render_one(&sub),
            "name      b\nid        b\nsource    config\nmode      push\nauth      {\"bearer\":{}}\n\
             delivery  {\"state\":\"active\"}\nretries   3\n"
        );
    }
}
