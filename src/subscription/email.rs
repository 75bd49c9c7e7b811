//! The `email` section of a `mode: email` subscription: recipients, sender, subject
//! template and SMTP server, validated into the settings the mailer sends with.

use std::fmt;

use lettre::message::Mailbox;
use serde_yaml::Value;

use crate::secret::Secret;
use crate::yaml::{Issues, Section, as_list, as_string, index};

/// Keys of the `email` section.
const EMAIL_KEYS: &[&str] = &["to", "from", "subject_template", "smtp"];
/// Keys of `email.smtp`.
const SMTP_KEYS: &[&str] = &["host", "port", "tls", "username", "password"];
/// Recipients at most.
const MAX_RECIPIENTS: usize = 50;
/// Subject when no template is given.
pub const DEFAULT_SUBJECT: &str = "{type} {id}";

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain text (a relay on the same host or network only).
    None,
    /// Plain connection upgraded with STARTTLS, which is required.
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
}

impl TlsMode {
    /// The configured name.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::None => "none",
            TlsMode::Starttls => "starttls",
            TlsMode::Tls => "tls",
        }
    }

    /// The usual port of the mode.
    fn default_port(self) -> u16 {
        match self {
            TlsMode::None => 25,
            TlsMode::Starttls => 587,
            TlsMode::Tls => 465,
        }
    }
}

/// The SMTP server a subscription's mail goes through.
#[derive(Clone)]
pub struct SmtpServer {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Connection security.
    pub tls: TlsMode,
    /// `AUTH` user name and password, when the server wants them.
    pub credentials: Option<(String, Secret)>,
}

impl fmt::Debug for SmtpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpServer")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.credentials.as_ref().map(|c| &c.0))
            .finish()
    }
}

/// A subject with `{type}` and `{id}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Type,
    Id,
}

impl SubjectTemplate {
    /// Parses a template; the error says why it is not one.
    pub fn parse(text: &str) -> Result<SubjectTemplate, String> {
        if text.contains(['\r', '\n']) {
            return Err("must be one line (no CR or LF)".into());
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err(format!("unmatched '}}' at {:?}", &rest[open..]));
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                return Err("unclosed '{'".into());
            };
            parts.push(match &after[..close] {
                "type" => Part::Type,
                "id" => Part::Id,
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}} (only {{type}} and {{id}})"
                    ));
                }
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(SubjectTemplate(parts))
    }

    /// The subject of one event; CR and LF (which ids and types cannot carry) become spaces.
    pub fn render(&self, event_type: &str, event_id: &str) -> String {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Type => out.push_str(event_type),
                Part::Id => out.push_str(event_id),
            }
        }
        out.replace(['\r', '\n'], " ")
    }
}

/// A validated `email` section.
#[derive(Debug, Clone)]
pub struct EmailSettings {
    /// Recipients, 1..=50.
    pub to: Vec<Mailbox>,
    /// Sender.
    pub from: Mailbox,
    /// Subject of each mail.
    pub subject: SubjectTemplate,
    /// The server.
    pub smtp: SmtpServer,
}

impl EmailSettings {
    /// `email` of a subscription; `None` (with issues recorded) when invalid.
    pub fn parse(s: &Section<'_>, issues: &mut Issues) -> Option<EmailSettings> {
        s.required("email", issues)?;
        let before = issues.0.len();
        let e = s.section("email", EMAIL_KEYS, issues);
        let to = e.required("to", issues).and_then(|v| {
            let at = e.at("to");
            let items: Vec<Value> = match v {
                Value::Sequence(_) => as_list(v, &at, issues)?.to_vec(),
                // One address may be given without a list.
                other => vec![other.clone()],
            };
            if items.is_empty() || items.len() > MAX_RECIPIENTS {
                issues.push(
                    &at,
                    format!(
                        "must list 1..={MAX_RECIPIENTS} recipients, found {}",
                        items.len()
                    ),
                );
                return None;
            }
            let list: Vec<Mailbox> = items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let p = index(&at, i);
                    as_string(item, &p, issues).and_then(|t| mailbox(&t, &p, issues))
                })
                .collect();
            (list.len() == items.len()).then_some(list)
        });
        let from = e
            .required("from", issues)
            .and_then(|v| as_string(v, &e.at("from"), issues))
            .and_then(|t| mailbox(&t, &e.at("from"), issues));
        let subject = match e.string("subject_template", issues) {
            None => SubjectTemplate::parse(DEFAULT_SUBJECT).ok(),
            Some(t) => SubjectTemplate::parse(&t)
                .map_err(|reason| issues.push(&e.at("subject_template"), reason))
                .ok(),
        };
        let smtp = parse_smtp(&e, issues);
        if issues.0.len() != before {
            return None;
        }
        Some(EmailSettings {
            to: to?,
            from: from?,
            subject: subject?,
            smtp: smtp?,
        })
    }
}

fn mailbox(text: &str, path: &str, issues: &mut Issues) -> Option<Mailbox> {
    match text.parse::<Mailbox>() {
        Ok(m) => Some(m),
        Err(e) => {
            issues.push(path, format!("{text:?} is not an e-mail address: {e}"));
            None
        }
    }
}

fn parse_smtp(e: &Section<'_>, issues: &mut Issues) -> Option<SmtpServer> {
    e.required("smtp", issues)?;
    let s = e.section("smtp", SMTP_KEYS, issues);
    let host = s
        .required("host", issues)
        .and_then(|v| as_string(v, &s.at("host"), issues));
    if let Some(h) = &host
        && url::Host::parse(h.trim_start_matches('[').trim_end_matches(']')).is_err()
    {
        issues.push(
            &s.at("host"),
            format!("{h:?} is not a host name or address"),
        );
    }
    let tls = match s.string("tls", issues).as_deref() {
        None | Some("starttls") => TlsMode::Starttls,
        Some("none") => TlsMode::None,
        Some("tls") => TlsMode::Tls,
        Some(other) => {
            issues.push(
                &s.at("tls"),
                format!("{other:?} is not none, starttls or tls"),
            );
            TlsMode::Starttls
        }
    };
    let port = s.integer("port", 1..=65535, tls.default_port().into(), issues) as u16;
    let username = s.string("username", issues);
    let password = s.string("password", issues);
    let credentials = match (username, password) {
        (Some(u), Some(p)) => Some((u, Secret::new(p))),
        (None, None) => None,
        (Some(_), None) => {
            issues.push(
                &s.at("password"),
                "missing (username and password go together)",
            );
            None
        }
        (None, Some(_)) => {
            issues.push(
                &s.at("username"),
                "missing (username and password go together)",
            );
            None
        }
    };
    Some(SmtpServer {
        host: host?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        tls,
        credentials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_templates() {
        let t = SubjectTemplate::parse("[{type}] event {id}!").unwrap();
        assert_eq!(t.render("a.b", "e1"), "[a.b] event e1!");
        let d = SubjectTemplate::parse(DEFAULT_SUBJECT).unwrap();
        assert_eq!(d.render("t", "i"), "t i");
        assert_eq!(
            SubjectTemplate::parse("plain").unwrap().render("t", "i"),
            "plain"
        );
        assert_eq!(SubjectTemplate::parse("").unwrap().render("t", "i"), "");
        assert_eq!(
            SubjectTemplate::parse("{id}{id}").unwrap().render("t", "i"),
            "ii"
        );
        for (bad, why) in [
            ("{name}", "unknown placeholder {name}"),
            ("{type", "unclosed"),
            ("type}", "unmatched"),
            ("{}", "unknown placeholder {}"),
            ("a\r\nBcc: x@y", "one line"),
        ] {
            let e = SubjectTemplate::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        // A line break cannot reach the header even if an id carried one.
        assert_eq!(t.render("a\r\nX: y", "1"), "[a  X: y] event 1!");
    }
}
