//! The `hookrelay` binary: `hookrelay --config PATH` runs the relay, `hookrelay check` validates,
//! and the operator commands (`events`, `deliveries`, `subscriptions`...) talk to a running one.

use std::path::PathBuf;

/// mimalloc: the relay allocates many small short-lived buffers per event, which glibc's
/// allocator handles poorly under two busy threads (measured: ~15% of CPU in malloc/free).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hookrelay::config::{Config, ConfigError, LogFormat, help_text};
use hookrelay::signing::SigningKey;
use hookrelay::subscription::{
    Auth, Channel, Concurrency, DeliveryOrder, Encoding, EventPattern, Subscription,
};
use hookrelay::{Relay, yaml::fmt_duration};

#[derive(Parser)]
#[command(
    version,
    about = "A webhook relay sidecar: events in from the app, delivered durably to subscribers.",
    after_help = help_text()
)]
struct Cli {
    /// Configuration file (YAML; see docs/configuration.md). No default: required to run.
    #[arg(long, short, env = "HOOKRELAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default).
    Run,
    /// Validate the configuration, print a summary per subscription, and exit.
    Check,
    /// Verify a Standard Webhooks signature of a body read from stdin: exit 0 when valid,
    /// 1 when not. For receivers debugging their verification.
    Verify {
        /// Name of the environment variable holding the whsec_ secret (a secret on the
        /// command line would end up in shell history and process lists).
        #[arg(long, value_name = "VAR")]
        secret_env: String,
        /// The webhook-id header.
        #[arg(long)]
        id: String,
        /// The webhook-timestamp header (Unix seconds).
        #[arg(long)]
        timestamp: u64,
        /// The webhook-signature header (one or more space-separated v1,... entries).
        #[arg(long)]
        signature: String,
        /// Largest accepted distance between the timestamp and now.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        tolerance: std::time::Duration,
    },
    #[command(flatten)]
    Operator(hookrelay::cli::Operator),
}

fn main() -> ExitCode {
    hookrelay::memory::no_huge_pages();
    hookrelay::memory::purge_promptly();
    let cli = Cli::parse();
    if let Some(Command::Operator(op)) = cli.command {
        return hookrelay::cli::run(op);
    }
    if let Some(Command::Verify {
        secret_env,
        id,
        timestamp,
        signature,
        tolerance,
    }) = cli.command
    {
        return verify(&secret_env, &id, timestamp, &signature, tolerance);
    }
    let Some(path) = cli.config else {
        eprintln!("error: no configuration: pass --config PATH or set HOOKRELAY_CONFIG");
        return ExitCode::from(2);
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e @ ConfigError::Read { .. }) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: invalid configuration\n{e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            let now = hookrelay::time::now_ms() / 1000;
            for sub in &config.subscriptions {
                println!("{}", summary(sub));
                // A certificate near its end is a warning, not an error: the config stays valid.
                if let Some(w) = sub.http().and_then(|h| h.tls.as_ref()?.expiry_warning(now)) {
                    println!("warning: subscriptions.{}: {w}", sub.name);
                }
            }
            println!(
                "{}: OK, {} subscription(s)",
                path.display(),
                config.subscriptions.len()
            );
            ExitCode::SUCCESS
        }
        Command::Run => match run(config, path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", describe(&e));
                ExitCode::FAILURE
            }
        },
        Command::Verify { .. } | Command::Operator(_) => {
            unreachable!("handled before the config is read")
        }
    }
}

/// `hookrelay verify`: 0 valid, 1 invalid or outside the tolerance, 2 for a missing or
/// malformed secret or an unreadable body.
fn verify(
    secret_env: &str,
    id: &str,
    timestamp: u64,
    signature: &str,
    tolerance: std::time::Duration,
) -> ExitCode {
    use std::io::Read;
    let secret = match std::env::var(secret_env) {
        Ok(s) => s,
        Err(_) => {
            eprintln!("error: the environment variable {secret_env} is not set");
            return ExitCode::from(2);
        }
    };
    let key = match SigningKey::parse(&secret) {
        Ok(k) => k,
        Err(reason) => {
            eprintln!("error: the secret in {secret_env} {reason}");
            return ExitCode::from(2);
        }
    };
    let mut body = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut body) {
        eprintln!("error: cannot read the body from stdin: {e}");
        return ExitCode::from(2);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let skew = now.abs_diff(timestamp);
    if skew > tolerance.as_secs() {
        eprintln!(
            "invalid: the timestamp is {skew}s from now, beyond the tolerance of {}",
            fmt_duration(tolerance)
        );
        return ExitCode::FAILURE;
    }
    if key.verifies(id, timestamp, &body, signature) {
        println!("valid: signed by the secret in {secret_env}");
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "invalid: no v1 signature matches this id, timestamp and body ({} bytes) for the secret in {secret_env}",
            body.len()
        );
        ExitCode::FAILURE
    }
}

/// An error and its causes on one line; a cause whose text the line already holds is left
/// out (store and bind errors end with their cause's text).
fn describe(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    text
}

fn run(config: Config, path: PathBuf) -> anyhow::Result<()> {
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(hookrelay::memory::collect_if_due)
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let relay = Relay::bind(config).await?.reload_from(path);
        relay.run(shutdown_signal()).await?;
        Ok(())
    })
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    use std::io::IsTerminal;
    // Colour codes only for a person at a terminal, never in files or a log collector.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGTERM (the kubelet) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// One line describing a subscription, secrets left out.
fn summary(sub: &Subscription) -> String {
    let events: Vec<String> = sub
        .events
        .iter()
        .map(|e| match e {
            EventPattern::Any => "*".to_string(),
            EventPattern::Exact(t) => t.clone(),
            EventPattern::Prefix(p) => format!("{p}*"),
        })
        .collect();
    let filter = if sub.filter.is_everything() {
        ""
    } else {
        " filtered"
    };
    let (push, target, http) = match &sub.channel {
        Channel::Pull(p) => {
            let pull = format!(
                " ack={:?} visibility_timeout={} ttl={}",
                p.ack,
                fmt_duration(p.visibility_timeout),
                fmt_duration(p.ttl)
            )
            .to_lowercase();
            return format!("{}: {} <- pulled{pull}{filter}", sub.name, events.join(","));
        }
        Channel::Email { push, email } => {
            let more = match email.to.len() {
                1 => String::new(),
                n => format!(" (+{})", n - 1),
            };
            let target = format!(
                "email to {}{more} via {}:{} {}",
                email.to[0].email,
                email.smtp.host,
                email.smtp.port,
                email.smtp.tls.as_str()
            );
            (push, target, None)
        }
        Channel::Http { push, http } => (push, http.url.to_string(), Some(http)),
    };
    let rate = push
        .rate_limit
        .map(|r| format!(" rate={}/s burst={}", r.per_second, r.burst))
        .unwrap_or_default();
    let auth = match http.and_then(|h| h.auth.as_ref()) {
        Some(Auth::Basic { username, .. }) => format!(" auth=basic({username})"),
        Some(Auth::Bearer(_)) => " auth=bearer".to_string(),
        Some(Auth::OAuth2(o)) => format!(" auth=oauth2({})", o.client_id),
        None => String::new(),
    };
    let signed = match http.map_or(0, |h| h.signing.len()) {
        0 => String::new(),
        n => format!(" signed({n} key{})", if n == 1 { "" } else { "s" }),
    };
    let ordered = match &push.ordering {
        DeliveryOrder::None => "",
        DeliveryOrder::Fifo => " ordered(fifo)",
        DeliveryOrder::Key(_) => " ordered(by key)",
    };
    let encoding = match http.map(|h| &h.encoding) {
        None | Some(Encoding::Raw) => String::new(),
        Some(Encoding::Envelope) => " encoding=envelope".to_string(),
        Some(Encoding::Form { field }) => format!(" encoding=form({field})"),
    };
    let tls = http
        .and_then(|h| h.tls.as_ref())
        .map(|t| format!(" {}", t.summary()))
        .unwrap_or_default();
    format!(
        "{}: {} -> {} retries={} timeout={} max_in_flight={}{}{encoding}{rate}{auth}{tls}{signed}{ordered}{filter}",
        sub.name,
        events.join(","),
        target,
        push.retries,
        fmt_duration(push.timeout),
        match push.concurrency {
            Concurrency::Fixed => String::new(),
            Concurrency::Auto => "auto<=".to_string(),
        },
        push.max_in_flight,
    )
}
