//! A real SMTP server on 127.0.0.1:0 for the e-mail tests. The `mailin` crate speaks the
//! protocol (EHLO, AUTH PLAIN and LOGIN, DATA with dot-unstuffing); this file only carries
//! lines between a socket and a session and records what the server saw.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailin::{Action, AuthMechanism, Handler, Response, SessionBuilder, response};

use super::poll;

/// How the server answers the end of a message's data.
#[derive(Clone, Copy, Debug)]
pub enum DataReply {
    /// `451` (try again later) for the first `n` messages, then `250`.
    FailFirst(u32),
    /// `550` (refused for good) for every message.
    Reject,
}

impl DataReply {
    /// Every message accepted.
    pub const ACCEPT: DataReply = DataReply::FailFirst(0);
}

/// One accepted message: its envelope, who logged in, and the message as received.
#[derive(Clone, Debug)]
pub struct Mail {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub login: Option<String>,
    pub raw: Vec<u8>,
}

/// What every connection of one server saw.
#[derive(Default)]
struct Log {
    data_commands: u32,
    accepted: Vec<Mail>,
}

/// A running SMTP server; stops accepting when dropped.
pub struct SmtpServer {
    pub port: u16,
    log: Arc<Mutex<Log>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl SmtpServer {
    /// Starts the server (inside a tokio runtime); with credentials, AUTH is required.
    pub fn start(reply: DataReply, credentials: Option<(&str, &str)>) -> SmtpServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let mut builder = SessionBuilder::new("hookrelay-test");
        if credentials.is_some() {
            // Without TLS: the relay sends with `tls: none` here, on 127.0.0.1 only.
            builder
                .enable_auth(AuthMechanism::Plain)
                .enable_auth(AuthMechanism::Login)
                .insecure_enable_plaintext_auth();
        }
        let log = Arc::new(Mutex::new(Log::default()));
        let handler = Session {
            reply,
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
            log: log.clone(),
            login: None,
            from: String::new(),
            to: Vec::new(),
            data: Vec::new(),
        };
        let accept = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let (builder, handler) = (builder.clone(), handler.clone());
                let stream = stream.into_std().unwrap();
                // A mailin session is not Send, so each connection gets a thread of its own.
                std::thread::spawn(move || converse(stream, peer.ip(), &builder, handler));
            }
        });
        SmtpServer { port, log, accept }
    }

    /// DATA commands answered so far (accepted or not).
    pub fn data_commands(&self) -> u32 {
        self.log.lock().unwrap().data_commands
    }

    /// Waits for the `n`th accepted message (from 1).
    pub async fn wait_message(&self, n: usize) -> Mail {
        poll(|| async { self.log.lock().unwrap().accepted.len() >= n }).await;
        self.log.lock().unwrap().accepted[n - 1].clone()
    }

    /// The SMTP server's part of a subscription's YAML.
    pub fn smtp(&self) -> String {
        format!("{{host: 127.0.0.1, port: {}, tls: none}}", self.port)
    }
}

/// Runs one connection's session until the client quits or goes away.
fn converse(
    stream: TcpStream,
    peer: IpAddr,
    builder: &SessionBuilder,
    handler: Session,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    // A client that stops talking does not keep the thread.
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut session = builder.build(peer, handler);
    session.greeting().write_to(&mut writer)?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let answer = session.process(&line);
        answer.write_to(&mut writer)?;
        if answer.action == Action::Close {
            return Ok(());
        }
        // mailin stays in its DATA state after refusing a message's data, so the session
        // cannot go on: end it, as a server may after any reply.
        if line == b".\r\n" && answer.is_error {
            return Ok(());
        }
    }
}

/// One connection's handler: the envelope and data of the message under way.
#[derive(Clone)]
struct Session {
    reply: DataReply,
    credentials: Option<(String, String)>,
    log: Arc<Mutex<Log>>,
    login: Option<String>,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

impl Session {
    fn authenticate(&mut self, user: &str, password: &str) -> Response {
        match &self.credentials {
            Some((u, p)) if u == user && p == password => {
                self.login = Some(user.to_string());
                response::AUTH_OK
            }
            _ => response::INVALID_CREDENTIALS,
        }
    }
}

impl Handler for Session {
    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.from = from.to_string();
        self.to = to.to_vec();
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let mut log = self.log.lock().unwrap();
        log.data_commands += 1;
        match self.reply {
            DataReply::Reject => Response::custom(550, "5.7.1 refused for good".to_string()),
            DataReply::FailFirst(n) if log.data_commands <= n => {
                Response::custom(451, "4.3.0 try again later".to_string())
            }
            DataReply::FailFirst(_) => {
                let mail = Mail {
                    mail_from: self.from.clone(),
                    rcpt_tos: self.to.clone(),
                    login: self.login.clone(),
                    raw: std::mem::take(&mut self.data),
                };
                log.accepted.push(mail);
                response::OK
            }
        }
    }

    fn auth_plain(&mut self, _authorization_id: &str, user: &str, password: &str) -> Response {
        self.authenticate(user, password)
    }

    fn auth_login(&mut self, user: &str, password: &str) -> Response {
        self.authenticate(user, password)
    }
}
