//! The real binary: `check`, and a SIGTERM drain.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Answer, Binary, DEADLINE, Receiver, bin};
use serde_json::{Value, json};

fn write_config(dir: &tempfile::TempDir, yaml: &str) -> std::path::PathBuf {
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn check_accepts_the_example_config() {
    let out = Command::new(bin())
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK"), "{stdout}");
}

#[test]
fn check_validates_tls_files_and_warns_of_a_certificate_near_its_end() {
    use common::tls::{Role, TestCa, unix_now};
    let ca = TestCa::new("clients");
    let soon = ca.leaf_until(&["relay"], Role::Client, unix_now() + 10 * 86_400);
    let other = ca.leaf(&["relay"], Role::Client);
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("client.crt", &soon.cert_pem),
        ("client.key", &soon.key_pem),
        ("other.key", &other.key_pem),
        ("ca.crt", &ca.cert_pem),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let check = |key: &str| {
        let path = write_config(
            &dir,
            &format!(
                "subscriptions:\n  - {{name: a, url: 'https://127.0.0.1:9000/', events: [x], tls: {{client_cert: client.crt, client_key: {key}, ca: ca.crt, server_name: receiver.test}}}}\n"
            ),
        );
        let out = Command::new(bin())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = check("client.key");
    assert!(ok, "{text}");
    assert!(
        text.contains(" tls(client_cert until ")
            && text.contains("ca(1) server_name=receiver.test)"),
        "{text}"
    );
    assert!(
        text.contains("warning: subscriptions.a: tls.client_cert: expires at ")
            && (text.contains("in 9 day(s)") || text.contains("in 10 day(s)")),
        "{text}"
    );
    assert!(!text.contains("PRIVATE KEY"), "{text}");

    // A key of another certificate: both files named, exit 1.
    let (ok, text) = check("other.key");
    assert!(!ok, "{text}");
    let d = dir.path().display();
    assert!(
        text.contains(&format!(
            "subscriptions[0].tls.client_key: {d}/other.key does not match the certificate in {d}/client.crt"
        )),
        "{text}"
    );
}

#[test]
fn check_prints_email_subscriptions_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "subscriptions:\n  - {name: m, mode: email, events: [x], retries: 2, email: {to: [a@b.example, c@d.example], from: r@b.example, smtp: {host: smtp.b.example, username: u, password: '${HR_TEST_PW}'}}}\n",
    );
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .env("HR_TEST_PW", "pa55word")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with(
            "m: x -> email to a@b.example (+1) via smtp.b.example:587 starttls retries=2 "
        )),
        "{stdout}"
    );
    assert!(!stdout.contains("pa55word"), "{stdout}");
}

#[test]
fn check_prints_one_line_per_subscription_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "subscriptions:\n  - {name: a, url: 'http://127.0.0.1:9000/', events: [x], auth: {basic: {username: u, password: '${HR_TEST_PW}'}}}\n  - {name: b, url: 'http://127.0.0.1:9001/', events: ['y.*']}\n",
    );
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .env("HR_TEST_PW", "pa55word")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("a: x -> http://127.0.0.1:9000/")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("b: y.* ->")),
        "{stdout}"
    );
    assert!(!stdout.contains("pa55word"));
}

/// `check` on `yaml`: its exit code and stderr, with the temp file's path written `FILE`.
fn check_stderr(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, yaml);
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("HR_TEST_UNSET")
        .env_remove("HR_TEST_UNSET_T")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&*path.to_string_lossy(), "FILE");
    (out.status.code(), stderr)
}

#[test]
fn check_reports_every_problem_and_exits_1() {
    let (code, stderr) = check_stderr(
        "subscriptions:\n  - {name: a, url: 'http://127.0.0.1:9000/', events: [x], retries: 42}\n  - {name: b, url: '${HR_TEST_UNSET}', events: [x], timeout: 50ms}\n  - {name: c, url: 'http://127.0.0.1:9000/', events: [x], success_code: 700, colour: red}\n",
    );
    assert_eq!(code, Some(1));
    for expected in [
        "subscriptions[0].retries: 42 is out of range 0..=20",
        "subscriptions[1].url: environment variable HR_TEST_UNSET is not set",
        "subscriptions[1].timeout: 50ms is out of range 100ms..=1m",
        "subscriptions[2].success_code: 700 is out of range 100..=599",
        "subscriptions[2].colour: unknown field",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in\n{stderr}"
        );
    }
}

#[test]
fn check_reports_yaml_syntax_errors_with_line_and_column() {
    let (code, stderr) = check_stderr("listen:\n  app: 127.0.0.1:1\n subscriptions: [\n");
    assert_eq!(code, Some(1));
    let needle = "FILE:";
    let line = stderr
        .lines()
        .find(|l| l.starts_with(needle))
        .unwrap_or_else(|| panic!("{stderr}"));
    let mut parts = line[needle.len()..].split(':');
    let (l, c) = (parts.next().unwrap(), parts.next().unwrap());
    assert!(
        l.parse::<usize>().unwrap() >= 2 && c.parse::<usize>().is_ok(),
        "{line}"
    );
}

#[test]
fn check_positions_wrong_values_and_mistyped_keys_and_names_the_key_meant() {
    let (code, stderr) = check_stderr(
        "listen:\n  app: 127.0.0.1:1\n  ops: [1]\nsubscriptions:\n  - name: a\n    url: 'http://10.0.0.1/'\n    events: [x]\n    retires: 3\n    timeout: '${HR_TEST_UNSET_T}'\n",
    );
    assert_eq!(code, Some(1));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines[..2],
        ["error: invalid configuration", "FILE: 4 problem(s):"]
    );
    assert_eq!(
        lines[2],
        "  FILE:3:8: listen.ops: expected a string, found a list"
    );
    assert!(
        lines[3].starts_with(
            "  FILE:8:5: subscriptions[0].retires: unknown field, did you mean retries? (expected one of: name, mode,"
        ),
        "{stderr}"
    );
    // In the file's order: the unset variable, then the text it left, which is no duration.
    assert_eq!(
        lines[4..],
        [
            "  FILE:9:14: subscriptions[0].timeout: environment variable HR_TEST_UNSET_T is not set (use ${HR_TEST_UNSET_T:-default} for a default)",
            "  FILE:9:14: subscriptions[0].timeout: expected a duration such as 10s, 500ms or 1h, found \"${HR_TEST_UNSET_T}\"",
        ]
    );
}

#[test]
fn check_reports_each_duplicate_key_once_at_its_own_line() {
    let (code, stderr) = check_stderr(
        "log:\n  level: info\n  format: text\n  level: debug\nsubscriptions: []\nsubscriptions: []\n",
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "error: invalid configuration\nFILE: 2 problem(s):\n  FILE:4:3: log.level: duplicate key (first at line 2)\n  FILE:6:1: subscriptions: duplicate key (first at line 5)\n"
    );
}

#[test]
fn check_of_a_missing_file_says_it_cannot_read_it_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.yaml");
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: cannot read {}: No such file or directory (os error 2)\n",
            path.display()
        )
    );
}

#[test]
fn help_names_the_default_ports_the_config_and_the_docs() {
    let out = Command::new(bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "app  127.0.0.1:8787",
        "--config PATH",
        "api  127.0.0.1:8788",
        "ops  0.0.0.0:9464",
        "HOOKRELAY_CONFIG",
        "docs/configuration.md",
        "docs/operations.md",
        "docs/api.md",
    ] {
        assert!(help.contains(expected), "missing {expected:?} in\n{help}");
    }
}

#[test]
fn a_corrupt_database_stops_startup_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hookrelay.db");
    std::fs::write(&db, vec![0x5a_u8; 16 * 1024]).unwrap();
    let path = write_config(
        &dir,
        &format!(
            "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}\nstorage: {{path: '{}'}}\n",
            db.display()
        ),
    );
    let out = Command::new(bin())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot open the store at {}", db.display()))
            && stderr.contains("not a database"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_lets_the_attempt_in_flight_finish_then_exits_0() {
    let rx = Receiver::scripted(|_| Answer::status(200).after(Duration::from_millis(800))).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        &format!(
            "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}\nstorage: {{path: '{}'}}\nlog: {{format: json, level: 'hookrelay=debug'}}\nshutdown: {{grace: 5s}}\nsubscriptions:\n  - {{name: a, url: '{}', events: ['*']}}\n",
            dir.path().join("db.sqlite").display(),
            rx.url("/")
        ),
    );
    let mut cmd = Command::new(bin());
    cmd.arg("--config").arg(&path).env_remove("RUST_LOG");
    let relay = Binary::start(cmd);
    // The start line names the store and all three listeners.
    let db = dir.path().join("db.sqlite");
    assert_eq!(
        relay.started["store"],
        format!("sqlite:{}", db.display()),
        "{}",
        relay.started
    );
    for listener in ["app", "api", "ops"] {
        let addr = relay.started[listener].as_str().unwrap_or_default();
        assert!(addr.starts_with("127.0.0.1:"), "{}", relay.started);
    }
    let mut child = relay.child;
    let lines = relay.lines;
    let status = {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        http.post(format!("http://{}/v1/events", relay.app))
            .header("content-type", "application/json")
            .body(json!({"type": "t", "id": "drain-1", "data": {}}).to_string())
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(status, 202);
    rx.wait_for(1).await;

    common::signal(child.id(), libc::SIGTERM);
    let end = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "relay did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    let rest: Vec<Value> = lines.iter().collect();
    let messages: Vec<&str> = rest.iter().filter_map(|l| l["message"].as_str()).collect();
    let shut = messages
        .iter()
        .position(|m| m.starts_with("shutting down"))
        .expect("shutdown logged");
    let delivered = messages
        .iter()
        .position(|m| *m == "delivered")
        .expect("in-flight attempt finished");
    assert!(shut < delivered, "{messages:?}");
    // One debug line per delivery, with what an operator greps for.
    let line = rest.iter().find(|l| l["message"] == "delivered").unwrap();
    assert_eq!(
        (
            &line["level"],
            &line["subscription"],
            &line["event_id"],
            &line["attempt"],
            &line["status"]
        ),
        (
            &json!("DEBUG"),
            &json!("a"),
            &json!("drain-1"),
            &json!(1),
            &json!(200)
        ),
        "{line}"
    );
    assert!(line["duration_ms"].as_f64().unwrap() >= 800.0, "{line}");
    assert!(messages.contains(&"hookrelay stopped"), "{messages:?}");
}

#[test]
fn text_logs_to_a_pipe_have_no_colour_codes() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        &format!(
            "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}\nstorage: {{path: '{}'}}\nlog: {{format: text}}\n",
            dir.path().join("db.sqlite").display()
        ),
    );
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "hookrelay=info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let started = std::iter::from_fn(|| lines.recv_timeout(DEADLINE).ok())
        .inspect(|l| seen.push(l.clone()))
        .any(|l| l.contains("hookrelay listening"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(started, "no listening line: {seen:?}");
    assert!(!seen.iter().any(|l| l.contains('\x1b')), "{seen:?}");
    let start = seen.last().unwrap();
    assert!(start.contains("store=sqlite:"), "{start}");
}

#[tokio::test]
async fn config_from_the_environment_and_no_implicit_proxy() {
    let proxy = Receiver::ok().await;
    let rx = Receiver::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        &format!(
            "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}\nstorage: {{path: '{}'}}\nlog: {{format: json}}\nsubscriptions:\n  - {{name: a, url: '{}', events: ['*']}}\n",
            dir.path().join("db.sqlite").display(),
            rx.url("/")
        ),
    );
    // HOOKRELAY_CONFIG instead of --config; HTTP(S)_PROXY must be ignored.
    let mut cmd = Command::new(bin());
    cmd.env("HOOKRELAY_CONFIG", &path)
        .env("HTTP_PROXY", proxy.url(""))
        .env("http_proxy", proxy.url(""))
        .env("ALL_PROXY", proxy.url(""))
        .env("RUST_LOG", "hookrelay=info");
    let mut relay = Binary::start(cmd);
    assert_eq!(relay.post(&json!({"type": "t", "data": {}})).await, 202);
    rx.wait_for(1).await;
    assert_eq!(proxy.count(), 0, "the proxy from the environment was used");
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();
}

#[tokio::test]
async fn sighup_reloads_and_logs_what_it_could_not_apply() {
    let (first, second) = (Receiver::ok().await, Receiver::ok().await);
    let dir = tempfile::tempdir().unwrap();
    let config = |storage: &str, sub: &str| {
        format!(
            "listen: {{app: '127.0.0.1:0', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}\nstorage: {{path: '{}', sync: {storage}}}\nlog: {{format: json}}\nreload: {{watch: false}}\nsubscriptions:\n{sub}",
            dir.path().join("db.sqlite").display(),
        )
    };
    let path = write_config(
        &dir,
        &config(
            "full",
            &format!(
                "  - {{name: a, url: '{}', events: ['*']}}\n",
                first.url("/")
            ),
        ),
    );
    let mut cmd = Command::new(bin());
    cmd.arg("--config")
        .arg(&path)
        .env("RUST_LOG", "hookrelay=info");
    let mut relay = Binary::start(cmd);
    // Not watching: only SIGHUP reloads.
    assert_eq!(relay.started["reload"], "SIGHUP");
    let hup = |pid: u32| common::signal(pid, libc::SIGHUP);
    let next = |lines: &std::sync::mpsc::Receiver<Value>, message: &str| -> Value {
        std::iter::from_fn(|| lines.recv_timeout(DEADLINE).ok())
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line"))
    };

    // Invalid: every problem logged with its path; nothing changes.
    std::fs::write(
        &path,
        config("full", "  - {name: a, events: ['*'], retries: 99}\n"),
    )
    .unwrap();
    hup(relay.child.id());
    let failed = next(
        &relay.lines,
        "config reload failed; the running config is kept",
    );
    let problems = failed["problems"].as_str().unwrap();
    assert!(
        problems.contains("subscriptions[0].url") && problems.contains("subscriptions[0].retries"),
        "{failed}"
    );

    // Valid, with a storage change that only a restart applies.
    std::fs::write(
        &path,
        config(
            "normal",
            &format!(
                "  - {{name: a, url: '{}', events: ['*']}}\n",
                second.url("/")
            ),
        ),
    )
    .unwrap();
    hup(relay.child.id());
    let reloaded = next(&relay.lines, "config reloaded");
    assert_eq!(reloaded["changed"], "[\"a\"]", "{reloaded}");
    let warned = std::iter::from_fn(|| relay.lines.recv_timeout(DEADLINE).ok())
        .find(|l| l["level"] == "WARN")
        .expect("a warning about the storage section");
    assert_eq!(warned["sections"], "[\"storage\"]", "{warned}");
    assert_eq!(relay.post(&json!({"type": "t", "data": {}})).await, 202);
    second.wait_for(1).await;
    assert_eq!(first.count(), 0);
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();
}
