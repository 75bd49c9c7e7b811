//! The operator CLI (`hookrelay events|deliveries|release|subscriptions|queue`), the real
//! binary against a relay running in this process: tables for people, `--json` for scripts,
//! API errors and unreachable relays with their exit codes.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Answer, DEADLINE, Receiver, TestRelay, bin};
use reqwest::Method;
use serde_json::{Value, json};

/// What a run of the binary printed, and how it exited.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Its stdout as JSON; panics, showing the run, when it is not.
    fn json(&self) -> Value {
        assert_eq!(self.code, Some(0), "{self}");
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self}"))
    }

    /// Its stdout after checking it exited 0.
    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self}");
        &self.stdout
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the binary with `args` and only the environment in `env` of its own variables (the
/// test's environment may hold any). Async: the relay answering it runs on this runtime.
async fn hookrelay(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(args);
    for var in [
        "HOOKRELAY_API_URL",
        "HOOKRELAY_APP_URL",
        "HOOKRELAY_API_TOKEN",
        "HOOKRELAY_INGEST_TOKEN",
        "HOOKRELAY_CONFIG",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("the CLI finishes within the deadline")
        .expect("the CLI runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `command` (words split at spaces) against the api listener at `api`, without tokens.
async fn on(api: &str, command: &str) -> Run {
    let mut args: Vec<&str> = command.split_whitespace().collect();
    args.extend(["--api", api]);
    hookrelay(&args, &[]).await
}

/// `--api URL` of a relay.
fn api(relay: &TestRelay) -> String {
    format!("http://{}", relay.addrs.api)
}

/// The table's rows (header left out), each split into its cells.
fn rows(table: &str) -> Vec<Vec<&str>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect()
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn subscriptions_are_listed_across_pages_shown_paused_and_resumed() {
    let relay = TestRelay::start(
        "subscriptions:\n  - {name: from-file, url: 'http://127.0.0.1:9/', events: [x]}\n",
    )
    .await;
    // 105 from the API: more than the default page of 100.
    let mut names = vec!["from-file".to_string()];
    for i in 0..105 {
        let name = format!("sub-{i:03}");
        let doc = json!({"name": name, "url": "http://127.0.0.1:9/", "events": ["x"]});
        let (status, body) = relay
            .api(Method::POST, "/v1/subscriptions", Some(doc))
            .await;
        assert_eq!(status, 201, "{body}");
        names.push(name);
    }
    let api = api(&relay);

    let table = on(&api, "subscriptions list").await;
    let listed: Vec<String> = rows(table.ok()).iter().map(|r| r[0].to_string()).collect();
    assert_eq!(listed, names, "{table}");
    assert!(
        table
            .ok()
            .starts_with("NAME       SOURCE  MODE  STATE   EVENTS  TARGET\n"),
        "{table}"
    );
    assert_eq!(
        rows(table.ok())[0],
        [
            "from-file",
            "config",
            "push",
            "active",
            "x",
            "http://127.0.0.1:9/"
        ]
    );

    // --json: one array of every page, here pages of 7.
    let all = hookrelay(
        &["subscriptions", "list", "--page-size", "7", "--json"],
        &[("HOOKRELAY_API_URL", &api)],
    )
    .await
    .json();
    let json_names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(json_names, names);
    // `--event` narrows the listing.
    let none = on(&api, "subscriptions list --event y --json").await.json();
    assert_eq!(none, json!([]));

    let shown = on(&api, "subscriptions get sub-042").await;
    // One member per line, the name first.
    let members: Vec<Vec<&str>> = shown
        .ok()
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(members[0], ["name", "sub-042"], "{shown}");
    assert!(members.contains(&vec!["source", "api"]), "{shown}");
    assert!(
        members.contains(&vec!["url", "http://127.0.0.1:9/"]),
        "{shown}"
    );

    let paused = on(&api, "subscriptions pause sub-042").await;
    assert!(
        paused
            .ok()
            .starts_with("sub-042: paused (reason api, since "),
        "{paused}"
    );
    let got = on(&api, "subscriptions get sub-042 --json").await.json();
    assert_eq!(got["delivery"]["state"], "paused", "{got}");
    let (_, seen) = relay
        .api(Method::GET, "/v1/subscriptions/sub-042", None)
        .await;
    assert_eq!(seen["delivery"]["state"], "paused");

    let resumed = on(&api, "subscriptions resume sub-042 --json").await.json();
    assert_eq!(resumed["delivery"]["state"], "active", "{resumed}");
}

#[tokio::test]
async fn dead_letters_are_listed_retried_and_released_and_events_show_their_deliveries() {
    // `flaky` fails its first attempt only; `dead` fails every attempt; `ok` takes all.
    let ok = Receiver::ok().await;
    let flaky = Receiver::scripted(|n| Answer::status(if n == 0 { 500 } else { 204 })).await;
    let dead = Receiver::scripted(|_| Answer::status(500)).await;
    let relay = TestRelay::start(&format!(
        "subscriptions:
  - {{name: ok, url: '{}', events: ['*']}}
  - {{name: flaky, url: '{}', events: [flaky.*], retries: 0}}
  - {{name: dead, url: '{}', events: [dead.*], retries: 0}}
",
        ok.url("/"),
        flaky.url("/"),
        dead.url("/")
    ))
    .await;
    let (status, _) = relay
        .post(&json!({"type": "flaky.one", "id": "ev-flaky", "data": {}}))
        .await;
    assert_eq!(status, 202);
    for i in 0..3 {
        let (status, _) = relay
            .post(&json!({"type": "dead.one", "id": format!("ev-dead-{i}"), "data": {}}))
            .await;
        assert_eq!(status, 202);
    }
    relay.wait_outcome("flaky", "failed", 1.0).await;
    relay.wait_outcome("dead", "failed", 3.0).await;
    relay.wait_outcome("ok", "delivered", 4.0).await;
    let api = api(&relay);
    let app = format!("http://{}", relay.addrs.app);

    // The dead letters of one subscription; `failed` is the default state.
    let listed = on(&api, "deliveries list --subscription flaky").await;
    let table = rows(listed.ok());
    assert_eq!(table.len(), 1, "{listed}");
    assert_eq!(
        &table[0][1..6],
        ["ev-flaky", "flaky.one", "flaky", "failed", "1"],
        "{listed}"
    );
    let flaky_id = table[0][0].to_string();

    // Pages of 2 are followed to the end; `--limit` stops early.
    let dead_letters = on(
        &api,
        "deliveries list --state failed --subscription dead --page-size 2 --json",
    )
    .await
    .json();
    let events: Vec<&str> = dead_letters
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["ev-dead-0", "ev-dead-1", "ev-dead-2"]);
    let two = on(&api, "deliveries list --limit 2 --page-size 1 --json")
        .await
        .json();
    assert_eq!(two.as_array().unwrap().len(), 2, "{two}");
    let delivered = on(
        &api,
        "deliveries list --state delivered --subscription ok --json",
    )
    .await
    .json();
    assert_eq!(delivered.as_array().unwrap().len(), 4, "{delivered}");

    // The event's status comes from the app listener.
    let status = hookrelay(&["events", "get", "ev-flaky", "--app", &app], &[]).await;
    let text = status.ok();
    assert!(
        text.starts_with("event ev-flaky  type flaky.one  received "),
        "{status}"
    );
    let mut states: Vec<(String, String)> = rows(&text[text.find('\n').unwrap() + 1..])
        .iter()
        .map(|r| (r[1].to_string(), r[2].to_string()))
        .collect();
    states.sort();
    assert_eq!(
        states,
        [
            ("flaky".to_string(), "failed".to_string()),
            ("ok".to_string(), "delivered".to_string())
        ],
        "{status}"
    );

    // Retried, the dead letter is delivered.
    let retried = on(&api, &format!("deliveries retry {flaky_id}")).await;
    assert_eq!(retried.ok(), format!("delivery {flaky_id}: pending\n"));
    flaky.wait_for(2).await;
    relay.wait_outcome("flaky", "delivered", 1.0).await;
    let event = hookrelay(
        &["events", "get", "ev-flaky", "--json"],
        &[("HOOKRELAY_APP_URL", &app)],
    )
    .await
    .json();
    let flaky_delivery = event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["subscription"] == "flaky")
        .unwrap();
    assert_eq!(flaky_delivery["state"], "delivered", "{event}");
    assert_eq!(flaky_delivery["attempts"], 2, "{event}");
    // A delivered one cannot be retried: the API's conflict, exit 1.
    let again = on(&api, &format!("deliveries retry {flaky_id}")).await;
    assert_eq!(again.code, Some(1), "{again}");
    assert!(
        again.stderr.starts_with(&format!(
            "error: conflict: delivery {flaky_id} is delivered;"
        )),
        "{again}"
    );

    // Release puts the three back; the scope is then rate limited.
    let released = on(&api, "release --subscription dead").await;
    assert_eq!(released.ok(), "released 3 deliveries\n");
    relay.wait_outcome("dead", "failed", 6.0).await;
    let too_soon = on(&api, "release --subscription dead --json").await;
    assert_eq!(too_soon.code, Some(1), "{too_soon}");
    assert!(too_soon.stdout.is_empty(), "{too_soon}");
    assert!(
        too_soon.stderr.starts_with("error: too_soon: "),
        "{too_soon}"
    );
    // The whole relay is a scope of its own.
    let all = on(&api, "release --json").await.json();
    assert_eq!(all, json!({"released": 3}));
}

#[tokio::test]
async fn queue_stats_show_depth_in_flight_and_the_oldest_per_subscription() {
    // `slow` holds each attempt for longer than the test, one at a time.
    let slow = Receiver::scripted(|_| Answer::status(200).after(Duration::from_secs(30))).await;
    let relay = TestRelay::start(&format!(
        "subscriptions:
  - {{name: slow, url: '{}', events: [s], max_in_flight: 1}}
  - {{name: idle, url: 'http://127.0.0.1:9/', events: [never]}}
",
        slow.url("/")
    ))
    .await;
    for i in 0..4 {
        let (status, _) = relay
            .post(&json!({"type": "s", "id": format!("s-{i}"), "data": {}}))
            .await;
        assert_eq!(status, 202);
    }
    slow.wait_for(1).await;
    let api = api(&relay);
    let stats = on(&api, "queue stats --json").await.json();
    let subs = stats["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 2, "{stats}");
    assert_eq!(subs[0]["subscription"], "slow");
    assert_eq!(subs[0]["depth"], 4, "{stats}");
    let in_flight = subs[0]["in_flight"].as_u64().unwrap();
    assert!((1..=4).contains(&in_flight), "{stats}");
    assert!(subs[0]["oldest_at"].is_string(), "{stats}");
    assert_eq!(
        subs[1],
        json!({"subscription": "idle", "depth": 0, "in_flight": 0, "oldest_at": null,
               "dead_letters": 0, "orphaned": 0})
    );

    let table = on(&api, "queue stats").await;
    let text = table.ok();
    // The header's columns are the unit tests' business; here the figures under them.
    assert!(
        text.starts_with("SUBSCRIPTION  DEPTH  IN_FLIGHT  OLDEST"),
        "{table}"
    );
    let rows = rows(text);
    assert_eq!(
        rows[0][..3],
        ["slow", "4", &in_flight.to_string()],
        "{table}"
    );
    assert_eq!(
        rows[0][3],
        subs[0]["oldest_at"].as_str().unwrap(),
        "{table}"
    );
    assert!(rows[0][4].ends_with('s'), "an age: {table}");
    assert_eq!(rows[1], ["idle", "0", "0", "-", "-", "0", "0"], "{table}");
}

#[tokio::test]
async fn api_errors_exit_1_and_an_unreachable_relay_exits_2() {
    let relay = TestRelay::start(
        "api: {token: api-t0ken}\ningest: {token: ingest-t0ken}\nsubscriptions:\n  - {name: a, url: 'http://127.0.0.1:9/', events: [x]}\n",
    )
    .await;
    let api = api(&relay);
    let app = format!("http://{}", relay.addrs.app);
    let token = [("HOOKRELAY_API_TOKEN", "api-t0ken")];

    // No token: the API's 401, with a hint naming the variable; never the token itself.
    let denied = on(&api, "subscriptions list").await;
    assert_eq!(denied.code, Some(1), "{denied}");
    assert!(
        denied.stderr.starts_with("error: unauthorized: "),
        "{denied}"
    );
    assert!(
        denied.stderr.contains("hint: set HOOKRELAY_API_TOKEN"),
        "{denied}"
    );
    let wrong = hookrelay(
        &["subscriptions", "list", "--api", &api],
        &[("HOOKRELAY_API_TOKEN", "nope")],
    )
    .await;
    assert_eq!(wrong.code, Some(1), "{wrong}");
    assert!(!wrong.stderr.contains("nope"), "{wrong}");
    let listed = hookrelay(&["subscriptions", "list", "--api", &api], &token).await;
    assert_eq!(rows(listed.ok()).len(), 1, "{listed}");

    // Not found; and a bad value named with its field.
    let missing = hookrelay(&["subscriptions", "get", "nosuch", "--api", &api], &token).await;
    assert_eq!(missing.code, Some(1), "{missing}");
    assert_eq!(
        missing.stderr,
        "error: not_found: no subscription \"nosuch\"\n"
    );
    let bad = hookrelay(
        &["deliveries", "list", "--state", "lost", "--api", &api],
        &token,
    )
    .await;
    assert_eq!(bad.code, Some(1), "{bad}");
    assert!(
        bad.stderr.starts_with(
            "error: invalid_query: invalid query parameters\n  state: must be one of pending, "
        ),
        "{bad}"
    );

    // The app listener takes the ingest token.
    let (status, _) = {
        let r = relay
            .http
            .post(format!("{app}/v1/events"))
            .bearer_auth("ingest-t0ken")
            .header("content-type", "application/json")
            .body(json!({"type": "x", "id": "e1", "data": {}}).to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(status, 202);
    let no_ingest = hookrelay(&["events", "get", "e1", "--app", &app], &token).await;
    assert_eq!(no_ingest.code, Some(1), "{no_ingest}");
    assert!(
        no_ingest
            .stderr
            .contains("hint: set HOOKRELAY_INGEST_TOKEN"),
        "{no_ingest}"
    );
    let event = hookrelay(
        &["events", "get", "e1", "--json", "--app", &app],
        &[("HOOKRELAY_INGEST_TOKEN", "ingest-t0ken")],
    )
    .await
    .json();
    assert_eq!(event["id"], "e1", "{event}");

    // Nothing listening: exit 2, naming the URL and how to point elsewhere.
    let closed = closed_port().await;
    let refused = hookrelay(
        &["queue", "stats", "--api", &format!("http://{closed}")],
        &token,
    )
    .await;
    assert_eq!(refused.code, Some(2), "{refused}");
    assert!(
        refused.stderr.starts_with(&format!(
            "error: cannot connect to http://{closed}/v1/queue: "
        )),
        "{refused}"
    );
    assert!(
        refused
            .stderr
            .contains("Pass --api URL or set HOOKRELAY_API_URL"),
        "{refused}"
    );
    // The default address is the api listener's default.
    let default = hookrelay(&["release", "--help"], &[]).await;
    assert!(
        default.ok().contains("[default: http://127.0.0.1:8788]"),
        "{default}"
    );
    // Usage errors are clap's: exit 2.
    let usage = hookrelay(&["deliveries", "retry"], &[]).await;
    assert_eq!(usage.code, Some(2), "{usage}");
    let bad_url = hookrelay(&["queue", "stats", "--api", "ftp://x"], &[]).await;
    assert_eq!(bad_url.code, Some(2), "{bad_url}");
}
