//! The e-mail transport: the mail of an attempt (the notification as received, with its
//! content type) and the mailer that sends it over SMTP (lettre, rustls), resolving the
//! server itself so every address is checked: never one of the relay's own listeners, and
//! for an API subscription the whole destination guard.

use std::net::SocketAddr;
use std::time::Duration;

use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Body, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tower::BoxError;

use super::destination::{Lookup, Policy};
use super::verdict::Reply;
use crate::store::Delivery;
use crate::subscription::email::{EmailSettings, SmtpServer, TlsMode};

/// What an e-mail attempt hands the mailer: its mail, or why it could not be built (the
/// attempt then fails like a connection that could not be made).
pub type MailAttempt = Result<Mail, String>;

/// One attempt's mail, built by [`message`].
#[derive(Debug)]
pub struct Mail(Message);

/// The mail for attempt `attempt` (1-based) of `delivery`: the delivery's data, exactly, as
/// the body, with its content type, always in base64: it decodes to the data byte for byte.
/// (lettre would pick 7bit for short ASCII, which sends a pretty-printed event's bare line
/// feeds as they are: servers refuse or rewrite those, and the trailing CRLF SMTP adds
/// would become part of the data.)
pub fn message(
    settings: &EmailSettings,
    delivery: &Delivery,
    attempt: u32,
) -> Result<Mail, String> {
    let mut builder = Message::builder()
        .from(settings.from.clone())
        .subject(
            settings
                .subject
                .render(&delivery.event_type, &delivery.event_id),
        )
        .date_now()
        .message_id(None);
    for to in &settings.to {
        builder = builder.to(to.clone());
    }
    // Ids and types are validated to header-safe characters at ingest.
    for (name, value) in [
        ("X-Hookrelay-Event-Id", &*delivery.event_id),
        ("X-Hookrelay-Event-Type", &*delivery.event_type),
        ("X-Hookrelay-Attempt", &attempt.to_string()),
    ] {
        let name = HeaderName::new_from_ascii_str(name);
        builder = builder.raw_header(HeaderValue::new(name, value.to_string()));
    }
    let content_type =
        ContentType::parse(delivery.content_type()).map_err(|e| format!("content type: {e}"))?;
    let body = Body::new_with_encoding(delivery.data.to_vec(), ContentTransferEncoding::Base64)
        .map_err(|_| "cannot encode the body in base64".to_string())?;
    builder
        .header(content_type)
        .body(body)
        .map(Mail)
        .map_err(|e| format!("cannot build the mail: {e}"))
}

/// Sends a subscription's mails; the server's addresses are checked at every connection.
pub struct Mailer {
    smtp: SmtpServer,
    lookup: Lookup,
    policy: Policy,
    timeout: Duration,
}

impl Mailer {
    /// A mailer for `settings`; `timeout` bounds each SMTP command.
    pub fn new(
        settings: &EmailSettings,
        lookup: Lookup,
        policy: Policy,
        timeout: Duration,
    ) -> Mailer {
        Mailer {
            smtp: settings.smtp.clone(),
            lookup,
            policy,
            timeout,
        }
    }

    /// Sends one mail. The server's answer is a [`Reply::Smtp`]; no answer (no address, no
    /// connection, TLS failure) is an error.
    pub async fn send(&self, mail: Mail) -> Result<Reply, BoxError> {
        let address = self.address().await?;
        let smtp = &self.smtp;
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(address.ip().to_string())
                .port(address.port())
                .timeout(Some(self.timeout));
        // The name, not the address we connect to, is what the certificate must match.
        builder = match smtp.tls {
            TlsMode::None => builder.tls(Tls::None),
            TlsMode::Starttls => builder.tls(Tls::Required(TlsParameters::new(smtp.host.clone())?)),
            TlsMode::Tls => builder.tls(Tls::Wrapper(TlsParameters::new(smtp.host.clone())?)),
        };
        if let Some((username, password)) = &smtp.credentials {
            builder = builder.credentials(Credentials::new(
                username.clone(),
                password.expose().to_string(),
            ));
        }
        match builder.build().send(mail.0).await {
            Ok(response) => Ok(Reply::Smtp {
                code: response.code().into(),
                text: response.message().collect::<Vec<_>>().join(" "),
            }),
            Err(e) => match e.status() {
                Some(code) => Ok(Reply::Smtp {
                    code: code.into(),
                    text: e.to_string(),
                }),
                None => Err(Box::new(e)),
            },
        }
    }

    /// The address to connect to: the first the host resolves to that may be reached.
    async fn address(&self) -> Result<SocketAddr, BoxError> {
        let smtp = &self.smtp;
        let found = self
            .lookup
            .reachable(&smtp.host, Some(smtp.port), self.policy)
            .await?;
        found
            .into_iter()
            .next()
            .ok_or_else(|| format!("{} has no address", smtp.host).into())
    }
}
