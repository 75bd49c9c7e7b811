//! The operator CLI: `hookrelay events`, `deliveries`, `release`, `subscriptions` and
//! `queue`. A client of the HTTP API and nothing more: it imports nothing of the relay, so it
//! sees exactly what any other client sees. Each command group is a file; [`client`] holds
//! the HTTP side, [`table`] the output for people.
//!
//! Exit codes: 0 done, 1 the API refused (its error is printed as `error: code: message`,
//! then one line per field), 2 a usage error or no relay to talk to.

mod client;
mod deliveries;
mod events;
mod queue;
mod subscriptions;
mod table;

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

pub use client::{ApiTarget, AppTarget, CliError};
pub use deliveries::DeliveriesCommand;
pub use events::EventsCommand;
pub use queue::QueueCommand;
pub use subscriptions::SubscriptionsCommand;

/// An operator command: a request to a running relay.
#[derive(Subcommand, Debug)]
pub enum Operator {
    /// Where an event's deliveries stand (asks the app listener).
    Events {
        #[command(flatten)]
        target: AppTarget,
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// List deliveries by state, retry a dead letter.
    Deliveries {
        #[command(flatten)]
        target: ApiTarget,
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// Put every failed and expired delivery (of one subscription, or all) back to pending.
    Release {
        #[command(flatten)]
        target: ApiTarget,
        /// Only this subscription's (id or name).
        #[arg(long, value_name = "SUBSCRIPTION")]
        subscription: Option<String>,
    },
    /// List, show, pause and resume subscriptions.
    Subscriptions {
        #[command(flatten)]
        target: ApiTarget,
        #[command(subcommand)]
        command: SubscriptionsCommand,
    },
    /// Queue figures per subscription.
    Queue {
        #[command(flatten)]
        target: ApiTarget,
        #[command(subcommand)]
        command: QueueCommand,
    },
}

/// Runs an operator command: prints its output, or the error on stderr; returns the exit code.
pub fn run(op: Operator) -> ExitCode {
    // One request at a time: a current-thread runtime is all a client needs.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match op {
            Operator::Events { target, command } => events::run(&target, command).await,
            Operator::Deliveries { target, command } => deliveries::run(&target, command).await,
            Operator::Release {
                target,
                subscription,
            } => deliveries::release(&target, subscription).await,
            Operator::Subscriptions { target, command } => {
                subscriptions::run(&target, command).await
            }
            Operator::Queue { target, command } => queue::run(&target, command).await,
        }
    });
    match result {
        Ok(out) => {
            use std::io::Write;
            // A closed pipe (`| head`) is not an error worth a message.
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{}", describe(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

/// The error for stderr: `error: ...`, then a line per field at fault and any hint.
fn describe(e: &CliError) -> String {
    let mut text = format!("error: {e}\n");
    if let CliError::Api { fields, hint, .. } = e {
        for (field, reason) in fields {
            text.push_str(&format!("  {field}: {reason}\n"));
        }
        if let Some(hint) = hint {
            text.push_str(&format!("hint: {hint}\n"));
        }
    }
    text
}

/// The API's JSON (pretty, one document) with `--json`, else `render`'s text.
fn output(json: bool, body: &Value, render: impl FnOnce(&Value) -> String) -> String {
    if json {
        let mut text = serde_json::to_string_pretty(body).unwrap_or_else(|_| body.to_string());
        text.push('\n');
        text
    } else {
        render(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_error_names_each_field_and_the_hint() {
        let e = CliError::Api {
            status: 422,
            code: "invalid_query".into(),
            message: "invalid query parameters".into(),
            fields: vec![("state".into(), "must be one of pending, failed".into())],
            hint: Some("look here".into()),
        };
        assert_eq!(
            describe(&e),
            "error: invalid_query: invalid query parameters\n  state: must be one of pending, failed\nhint: look here\n"
        );
        assert_eq!(e.exit_code(), 1);
    }
}
