//! The `tls` settings of an HTTP push subscription: a client certificate and its key
//! (mutual TLS), a private CA trusted instead of the system roots, and the name the
//! receiver's certificate is checked against. Material is read and checked once, here.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};

use crate::pem;
use crate::yaml::{Issues, Section};

/// Keys of a `tls` section.
const KEYS: &[&str] = &["client_cert", "client_key", "ca", "server_name"];

/// A certificate with less time left than this is warned about.
const EXPIRY_WARNING_SECS: i64 = 30 * 86_400;

/// Where file paths in a subscription resolve, and whether they are allowed at all (the API
/// takes inline PEM only, so a caller cannot make the relay read its files).
#[derive(Debug, Clone, Copy)]
pub struct Files<'a> {
    /// The config file's directory; `None` resolves against the working directory.
    pub base: Option<&'a Path>,
    /// False for API documents.
    pub allowed: bool,
}

impl Files<'_> {
    /// Paths of the config file, relative to the working directory.
    pub const CONFIG: Files<'static> = Files {
        base: None,
        allowed: true,
    };
    /// No paths: inline PEM only (API documents).
    pub const INLINE_ONLY: Files<'static> = Files {
        base: None,
        allowed: false,
    };
}

/// Where a subscription's TLS material came from, for messages and the reload watcher.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSources {
    /// The client certificate's file, when not inline.
    pub client_cert: Option<PathBuf>,
    /// The client key's file, when not inline.
    pub client_key: Option<PathBuf>,
    /// The CA file, when not inline.
    pub ca: Option<PathBuf>,
}

impl TlsSources {
    /// The files the material was read from.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.client_cert, &self.client_key, &self.ca]
            .into_iter()
            .flatten()
    }
}

/// A subscription's validated TLS material, as DER; `Debug` leaves the key out.
#[derive(Clone)]
pub struct TlsSettings {
    /// The client certificate and its chain (empty: no client certificate).
    pub chain: Vec<CertificateDer<'static>>,
    /// The client certificate's private key (present with a chain).
    pub key: Option<Arc<PrivateKeyDer<'static>>>,
    /// Roots trusted instead of the system's (empty: the system's).
    pub roots: Vec<CertificateDer<'static>>,
    /// The name checked against the receiver's certificate instead of the URL's host.
    pub server_name: Option<ServerName<'static>>,
    /// When the client certificate expires, in seconds since the epoch.
    pub not_after: Option<i64>,
    /// SHA-256 over all of the above: same digest, same TLS identity.
    pub digest: [u8; 32],
    /// Where the material came from.
    pub sources: TlsSources,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("client_cert", &self.chain.len())
            .field("client_key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("ca", &self.roots.len())
            .field("server_name", &self.server_name)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl TlsSettings {
    /// A warning when the client certificate has expired or expires within 30 days of `now`
    /// (seconds since the epoch). Only a warning: refusing it would stop a restart.
    pub fn expiry_warning(&self, now: i64) -> Option<String> {
        let at = self.not_after?;
        let when = crate::time::rfc3339(at.saturating_mul(1000));
        if at <= now {
            Some(format!("tls.client_cert: expired at {when}"))
        } else if at - now < EXPIRY_WARNING_SECS {
            let days = (at - now) / 86_400;
            Some(format!(
                "tls.client_cert: expires at {when}, in {days} day(s)"
            ))
        } else {
            None
        }
    }

    /// One line for `check`: what is set, never the key.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.chain.is_empty() {
            let until = self
                .not_after
                .map(|t| format!(" until {}", crate::time::rfc3339(t.saturating_mul(1000))))
                .unwrap_or_default();
            parts.push(format!("client_cert{until}"));
        }
        if !self.roots.is_empty() {
            parts.push(format!("ca({})", self.roots.len()));
        }
        if let Some(name) = &self.server_name {
            parts.push(format!("server_name={}", name.to_str()));
        }
        format!("tls({})", parts.join(" "))
    }
}

/// PEM text read from a value: inline, or the file it names.
struct Material {
    pem: Vec<u8>,
    /// The file, or `inline tls.KEY`, for messages.
    shown: String,
    path: Option<PathBuf>,
}

/// Reads `tls.<key>`: inline PEM (starts with `-----BEGIN`) or a path.
fn material(
    t: &Section<'_>,
    key: &str,
    files: &Files<'_>,
    issues: &mut Issues,
) -> Option<Material> {
    let text = t.string(key, issues)?;
    // PEM anywhere in it (after a `Bag Attributes` header, say) makes it inline text.
    if text.contains("-----BEGIN") {
        return Some(Material {
            pem: text.into_bytes(),
            shown: format!("inline tls.{key}"),
            path: None,
        });
    }
    if !files.allowed {
        issues.push(
            &t.at(key),
            "must be PEM text; file paths are for the config file only",
        );
        return None;
    }
    let path = match files.base {
        Some(base) => base.join(&text),
        None => PathBuf::from(&text),
    };
    match std::fs::read(&path) {
        Ok(pem) => Some(Material {
            pem,
            shown: path.display().to_string(),
            path: Some(path),
        }),
        // A key is never echoed: a value that is neither PEM nor a file may be the key in
        // another encoding (base64 of the PEM, say).
        Err(e) if key == "client_key" => {
            issues.push(
                &t.at(key),
                format!("neither PEM text nor a readable file ({})", e.kind()),
            );
            None
        }
        Err(e) => {
            issues.push(&t.at(key), format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// Validates the `tls` section of `s`, recording every problem.
pub(super) fn parse_tls(
    s: &Section<'_>,
    files: &Files<'_>,
    issues: &mut Issues,
) -> Option<TlsSettings> {
    if !s.has("tls") {
        return None;
    }
    let before = issues.0.len();
    let t = s.section("tls", KEYS, issues);
    let cert = material(&t, "client_cert", files, issues);
    let key = material(&t, "client_key", files, issues);
    let ca = material(&t, "ca", files, issues);
    if t.has("client_cert") != t.has("client_key") {
        issues.push(t.path(), "client_cert and client_key go together");
    }
    let chain = match &cert {
        Some(m) => pem::certificates(&m.pem, &m.shown)
            .map_err(|why| issues.push(&t.at("client_cert"), why))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let private = key.as_ref().and_then(|m| {
        pem::private_key(&m.pem, &m.shown)
            .map_err(|why| issues.push(&t.at("client_key"), why))
            .ok()
    });
    if let (Some(k), Some(km), Some(cm), false) = (&private, &key, &cert, chain.is_empty())
        && let Err(why) = pem::key_matches(&chain, k, &km.shown, &cm.shown)
    {
        issues.push(&t.at("client_key"), why);
    }
    let roots = match &ca {
        Some(m) => pem::certificates(&m.pem, &m.shown)
            .map_err(|why| issues.push(&t.at("ca"), why))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let server_name =
        t.string("server_name", issues)
            .and_then(|name| match ServerName::try_from(name.clone()) {
                Ok(n) => Some(n),
                Err(_) => {
                    issues.push(
                        &t.at("server_name"),
                        format!("{name:?} is not a DNS name or IP address"),
                    );
                    None
                }
            });
    if issues.0.len() != before {
        return None;
    }
    // Each part tagged and length-prefixed, so no two settings hash alike.
    let mut hash = Sha256::new();
    let mut part = |tag: &[u8], bytes: &[u8]| {
        hash.update(tag);
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    chain.iter().for_each(|c| part(b"cert", c.as_ref()));
    if let Some(k) = &private {
        part(b"key", k.secret_der());
    }
    roots.iter().for_each(|r| part(b"root", r.as_ref()));
    if let Some(name) = &server_name {
        part(b"name", name.to_str().as_bytes());
    }
    Some(TlsSettings {
        not_after: chain.first().and_then(pem::not_after),
        chain,
        key: private.map(Arc::new),
        roots,
        server_name,
        digest: hash.finalize().into(),
        sources: TlsSources {
            client_cert: cert.and_then(|m| m.path),
            client_key: key.and_then(|m| m.path),
            ca: ca.and_then(|m| m.path),
        },
    })
}
