//! The e-mail channel against a real SMTP server on 127.0.0.1: Python's `aiosmtpd` (from
//! PyPI), run as a child process that records every message it accepts.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{TestRelay, poll};
use reqwest::Method;
use serde_json::{Value, json};

/// The SMTP server: `dir` gets `<n>.eml` (the message as received) and `<n>.json` (envelope,
/// login) per accepted message; DATA is answered `451` for the first `fail_first` messages,
/// then `250`, or always `550` when `reject` is given; with a user and password, AUTH is
/// required (and allowed without TLS, on 127.0.0.1 only). Prints its port.
const SERVER: &str = r#"
import asyncio, json, logging, os, sys
from aiosmtpd.smtp import SMTP, AuthResult

out, fail_first, reject = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "reject"
user = sys.argv[4] if len(sys.argv) > 4 else None
password = sys.argv[5] if len(sys.argv) > 5 else None
seen = {"data": 0, "accepted": 0, "login": None}
logging.disable(logging.CRITICAL)

class Handler:
    async def handle_DATA(self, server, session, envelope):
        seen["data"] += 1
        with open(os.path.join(out, "data_commands"), "w") as f:
            f.write(str(seen["data"]))
        if reject:
            return "550 5.7.1 refused for good"
        if seen["data"] <= fail_first:
            return "451 4.3.0 try again later"
        seen["accepted"] += 1
        n = seen["accepted"]
        with open(os.path.join(out, f"{n}.json.tmp"), "w") as f:
            json.dump({"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos, "login": seen["login"]}, f)
        with open(os.path.join(out, f"{n}.eml"), "wb") as f:
            f.write(envelope.original_content)
        os.rename(os.path.join(out, f"{n}.json.tmp"), os.path.join(out, f"{n}.json"))
        return "250 OK"

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login.decode() == user and auth_data.password.decode() == password
    if ok:
        seen["login"] = user
    return AuthResult(success=ok)

def factory():
    if user is None:
        return SMTP(Handler())
    return SMTP(Handler(), authenticator=authenticator, auth_required=True, auth_require_tls=False)

async def main():
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"#;

/// A running SMTP server; killed when dropped.
struct SmtpServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One accepted message: the parsed envelope and the raw message.
struct Received {
    envelope: Value,
    raw: Vec<u8>,
}

impl SmtpServer {
    /// Starts the server; fails (never skips) when python3 cannot import aiosmtpd.
    fn start(fail_first: u32, mode: &str, auth: Option<(&str, &str)>) -> SmtpServer {
        let found = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "python3 cannot import aiosmtpd (pip install aiosmtpd); .ci/run installs it"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("python3");
        cmd.args(["-W", "ignore", "-c", SERVER])
            .arg(dir.path())
            .arg(fail_first.to_string())
            .arg(mode);
        if let Some((user, password)) = auth {
            cmd.args([user, password]);
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the SMTP server did not print its port: {line:?}"));
        SmtpServer { child, port, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// DATA commands seen so far (accepted or not).
    fn data_commands(&self) -> u32 {
        read_number(&self.path("data_commands"))
    }

    /// Waits for the `n`th accepted message.
    async fn wait_message(&self, n: usize) -> Received {
        let json = self.path(&format!("{n}.json"));
        poll(|| async { json.exists() }).await;
        Received {
            envelope: serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap(),
            raw: std::fs::read(self.path(&format!("{n}.eml"))).unwrap(),
        }
    }

    /// The SMTP server's part of a subscription's YAML.
    fn smtp(&self) -> String {
        format!("{{host: 127.0.0.1, port: {}, tls: none}}", self.port)
    }
}

fn read_number(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// Parses a received message with Python's `email` package: headers and the decoded body.
fn parse_message(raw: &[u8]) -> Value {
    let script = "import email, json, sys\n\
        from email import policy\n\
        m = email.message_from_bytes(sys.stdin.buffer.read(), policy=policy.compat32)\n\
        print(json.dumps({'headers': {k.lower(): str(v) for k, v in m.items()},\n\
        'content_type': m.get_content_type(), 'body': list(m.get_payload(decode=True))}))\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), raw).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The decoded body of a message parsed by [`parse_message`].
fn body_bytes(m: &Value) -> Vec<u8> {
    m["body"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect()
}

fn email_sub(name: &str, smtp: &str, extra: &str) -> String {
    format!(
        "subscriptions:
  - name: {name}
    mode: email
    events: ['invoice.*']
    backoff: {{schedule: [50ms, 50ms]}}
    email:
      to: [billing@example.com, 'Ops Team <ops@example.org>']
      from: 'Hookrelay <relay@example.net>'
      subject_template: 'Event {{type}} ({{id}})'
      smtp: {smtp}
{extra}"
    )
}

#[tokio::test]
#[ignore = "needs python3 with aiosmtpd (pip install aiosmtpd); .ci/run installs it and runs ignored tests"]
async fn mail_arrives_with_headers_and_the_exact_body() {
    let smtp = SmtpServer::start(0, "ok", None);
    let relay = TestRelay::start(&email_sub("mail", &smtp.smtp(), "")).await;
    let body = r#"{"type":"invoice.paid","id":"evt-1","data":{"amount": 12.50, "note":"caf\u00e9 ü","long":"__LONG__"}}"#
        .replace("__LONG__", &"x".repeat(1200));
    let (status, answer) = relay.post_raw(&body, "application/json").await;
    assert_eq!(status, 202, "{answer}");

    let got = smtp.wait_message(1).await;
    assert_eq!(got.envelope["mail_from"], "relay@example.net");
    assert_eq!(
        got.envelope["rcpt_tos"],
        json!(["billing@example.com", "ops@example.org"])
    );
    let m = parse_message(&got.raw);
    let h = |name: &str| m["headers"][name].as_str().unwrap_or("").to_string();
    assert_eq!(h("from"), "Hookrelay <relay@example.net>");
    assert_eq!(
        h("to"),
        "billing@example.com, \"Ops Team\" <ops@example.org>"
    );
    assert_eq!(h("subject"), "Event invoice.paid (evt-1)");
    assert_eq!(h("x-hookrelay-event-id"), "evt-1");
    assert_eq!(h("x-hookrelay-event-type"), "invoice.paid");
    assert_eq!(h("x-hookrelay-attempt"), "1");
    assert!(h("message-id").starts_with('<'), "{m}");
    assert!(!h("date").is_empty(), "{m}");
    assert_eq!(m["content_type"], "application/json");
    // The data exactly as received: its bytes, long line and escapes included.
    let data = body_bytes(&m);
    let expected = format!(
        r#"{{"amount": 12.50, "note":"caf\u00e9 ü","long":"{}"}}"#,
        "x".repeat(1200)
    );
    assert_eq!(String::from_utf8(data).unwrap(), expected);
    relay.wait_outcome("mail", "delivered", 1.0).await;
    assert_eq!(relay.attempts("mail", "success").await, Some(1.0));
    relay.stop().await;
}

/// The transfer encoding the docs promise (docs/delivery.md, "E-mail delivery"): 7bit for
/// ASCII in short lines, quoted-printable for ASCII with a long line, base64 for anything
/// beyond ASCII; each body decodes to the data, plus the line break SMTP ends a text with.
#[tokio::test]
#[ignore = "needs python3 with aiosmtpd (pip install aiosmtpd); .ci/run installs it and runs ignored tests"]
async fn the_transfer_encoding_follows_the_data() {
    let smtp = SmtpServer::start(0, "ok", None);
    let relay = TestRelay::start(&email_sub("mail", &smtp.smtp(), "")).await;
    let long = format!(r#"{{"note":"{}"}}"#, "x".repeat(100));
    let cases = [
        (r#"{"invoice":"in_42","amount":1200}"#.to_string(), "7bit"),
        (long, "quoted-printable"),
        (r#"{"note":"café"}"#.to_string(), "base64"),
    ];
    for (n, (data, encoding)) in cases.iter().enumerate() {
        let body = format!(r#"{{"type":"invoice.paid","id":"evt-{n}","data":{data}}}"#);
        let (status, answer) = relay.post_raw(&body, "application/json").await;
        assert_eq!(status, 202, "{answer}");
        let m = parse_message(&smtp.wait_message(n + 1).await.raw);
        assert_eq!(
            m["headers"]["content-transfer-encoding"], *encoding,
            "{data}"
        );
        let got = body_bytes(&m);
        // SMTP ends every message with a line break: 7bit and quoted-printable bodies
        // carry it, base64 decodes to the data alone.
        let end = if *encoding == "base64" { "" } else { "\r\n" };
        assert_eq!(String::from_utf8(got).unwrap(), format!("{data}{end}"));
    }
    relay.stop().await;
}

#[tokio::test]
#[ignore = "needs python3 with aiosmtpd (pip install aiosmtpd); .ci/run installs it and runs ignored tests"]
async fn a_451_is_retried_and_the_second_attempt_delivered() {
    let smtp = SmtpServer::start(1, "ok", None);
    let relay = TestRelay::start(&email_sub("flaky", &smtp.smtp(), "")).await;
    relay
        .post(&json!({"type": "invoice.sent", "id": "evt-2", "data": {"n": 1}}))
        .await;
    let got = smtp.wait_message(1).await;
    let m = parse_message(&got.raw);
    assert_eq!(m["headers"]["x-hookrelay-attempt"], "2");
    assert_eq!(m["headers"]["x-hookrelay-event-id"], "evt-2");
    relay.wait_outcome("flaky", "delivered", 1.0).await;
    assert_eq!(relay.attempts("flaky", "smtp_error").await, Some(1.0));
    assert_eq!(relay.attempts("flaky", "success").await, Some(1.0));
    assert_eq!(smtp.data_commands(), 2);
    relay.stop().await;
}

#[tokio::test]
#[ignore = "needs python3 with aiosmtpd (pip install aiosmtpd); .ci/run installs it and runs ignored tests"]
async fn a_550_fails_at_once_as_a_dead_letter() {
    let smtp = SmtpServer::start(0, "reject", None);
    // Retries are left, but a permanent refusal does not use them.
    let relay = TestRelay::start(&email_sub("refused", &smtp.smtp(), "    retries: 3\n")).await;
    relay
        .post(&json!({"type": "invoice.void", "id": "evt-3", "data": {}}))
        .await;
    relay.wait_outcome("refused", "failed", 1.0).await;
    assert_eq!(relay.attempts("refused", "smtp_error").await, Some(1.0));
    assert_eq!(smtp.data_commands(), 1);
    let (_, dead) = relay
        .api(Method::GET, "/v1/deliveries?subscription=refused", None)
        .await;
    let d = &dead["deliveries"][0];
    assert_eq!(d["attempts"], 1, "{dead}");
    let error = d["last_error"].as_str().unwrap();
    assert!(error.starts_with("SMTP 550"), "{error}");
    relay.stop().await;
}

#[tokio::test]
#[ignore = "needs python3 with aiosmtpd (pip install aiosmtpd); .ci/run installs it and runs ignored tests"]
async fn smtp_auth_with_username_and_password() {
    let smtp = SmtpServer::start(0, "ok", Some(("relay", "pw-s3cret")));
    let relay = TestRelay::start(&email_sub(
        "authed",
        &format!(
            "{{host: 127.0.0.1, port: {}, tls: none, username: relay, password: 'pw-s3cret'}}",
            smtp.port
        ),
        "",
    ))
    .await;
    relay
        .post(&json!({"type": "invoice.paid", "id": "evt-4", "data": {}}))
        .await;
    // The server takes no mail without AUTH.
    let got = smtp.wait_message(1).await;
    assert_eq!(got.envelope["login"], "relay");
    relay.wait_outcome("authed", "delivered", 1.0).await;
    relay.stop().await;
}

#[tokio::test]
#[ignore = "needs python3 with aiosmtpd (pip install aiosmtpd); .ci/run installs it and runs ignored tests"]
async fn api_email_subscriptions_pass_the_destination_guard_and_hide_the_password() {
    let smtp = SmtpServer::start(0, "ok", Some(("relay", "pw-s3cret")));
    let relay =
        TestRelay::start("api: {allowed_destinations: ['10.0.0.0/8', '127.0.0.1/32']}").await;
    let doc = |host: &str| {
        json!({"name": "api-mail", "mode": "email", "events": ["*"], "retries": 0, "metrics": true,
               "email": {"to": ["a@example.com"], "from": "r@example.com",
                         "smtp": {"host": host, "port": smtp.port, "tls": "none",
                                  "username": "relay", "password": "pw-s3cret"}}})
    };
    for host in ["169.254.169.254", "192.168.1.1"] {
        let (status, answer) = relay
            .api(Method::POST, "/v1/subscriptions", Some(doc(host)))
            .await;
        assert_eq!(status, 422, "{host}: {answer}");
        assert_eq!(
            answer["error"]["fields"][0]["field"], "email.smtp.host",
            "{answer}"
        );
    }
    let (status, created) = relay
        .api(Method::POST, "/v1/subscriptions", Some(doc("127.0.0.1")))
        .await;
    assert_eq!(status, 201, "{created}");
    assert!(!created.to_string().contains("pw-s3cret"), "{created}");
    assert_eq!(created["email"]["smtp"]["username"], "relay");
    let (_, list) = relay.api(Method::GET, "/v1/subscriptions", None).await;
    assert!(!list.to_string().contains("pw-s3cret"), "{list}");
    // Sent back as shown (no password), the stored password is kept.
    let id = created["id"].as_str().unwrap();
    let (status, replaced) = relay
        .api(
            Method::PUT,
            &format!("/v1/subscriptions/{id}"),
            Some(created.clone()),
        )
        .await;
    assert_eq!(status, 200, "{replaced}");
    relay
        .post(&json!({"type": "t", "id": "evt-5", "data": {}}))
        .await;
    // The server requires AUTH: the mail arriving proves the kept password was used.
    let got = smtp.wait_message(1).await;
    assert_eq!(got.envelope["login"], "relay");
    relay.wait_outcome("api-mail", "delivered", 1.0).await;
    relay.stop().await;
}

#[tokio::test]
#[ignore = "needs python3 with aiosmtpd (pip install aiosmtpd); .ci/run installs it and runs ignored tests"]
async fn a_name_resolving_outside_the_allow_list_is_refused_at_connect() {
    let smtp = SmtpServer::start(0, "ok", None);
    let relay = TestRelay::start("api: {allowed_destinations: ['10.0.0.0/8']}").await;
    // Accepted when registered (the name could resolve into 10/8), refused once resolved.
    let (status, created) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({
            "name": "sneaky", "mode": "email", "events": ["*"], "retries": 0, "metrics": true,
            "email": {"to": ["a@example.com"], "from": "r@example.com",
                      "smtp": {"host": "localhost", "port": smtp.port, "tls": "none"}}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    relay.post(&json!({"type": "t", "data": {}})).await;
    relay.wait_outcome("sneaky", "failed", 1.0).await;
    assert_eq!(relay.attempts("sneaky", "connect_error").await, Some(1.0));
    assert_eq!(smtp.data_commands(), 0);
    let (_, dead) = relay
        .api(Method::GET, "/v1/deliveries?subscription=sneaky", None)
        .await;
    let error = dead["deliveries"][0]["last_error"].as_str().unwrap();
    assert!(error.contains("destination refused"), "{error}");
    relay.stop().await;
}

#[tokio::test]
#[ignore = "needs python3 with aiosmtpd (pip install aiosmtpd); .ci/run installs it and runs ignored tests"]
async fn a_raw_xml_event_is_mailed_as_its_xml() {
    let smtp = SmtpServer::start(0, "ok", None);
    let relay = TestRelay::start(&email_sub("mail", &smtp.smtp(), "")).await;
    let xml =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><notify><domain>příklad.cz</domain></notify>";
    let r = relay
        .http
        .post(format!("http://{}/v1/events", relay.addrs.app))
        .header("content-type", "application/xml")
        .header("hookrelay-event-type", "invoice.xml")
        .header("hookrelay-event-id", "sv-42")
        .body(xml)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let got = smtp.wait_message(1).await;
    let m = parse_message(&got.raw);
    assert_eq!(m["content_type"], "application/xml");
    let body = body_bytes(&m);
    assert_eq!(String::from_utf8(body).unwrap(), xml);
    relay.stop().await;
}
