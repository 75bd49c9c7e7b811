//! Keys that encrypt secrets at rest (`storage.encryption_keys`): XChaCha20-Poly1305, whose
//! 24-byte random nonces never repeat in practice, so one key may seal any number of values.
//!
//! A sealed value reads `v1:<key id>:<base64 of nonce || ciphertext>`; the prefix is the
//! associated data, so a value cannot be passed off under another key id. The first key
//! seals; every key opens, so a new key can be put first while values sealed with the old
//! one are still read.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// The format version of a sealed value.
const VERSION: &str = "v1";
/// Nonce length of XChaCha20-Poly1305.
const NONCE_LEN: usize = 24;
/// Key length.
pub const KEY_LEN: usize = 32;

/// Encryption keys by id; the first seals. `Debug` shows the ids only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Keyring {
    keys: Vec<(String, [u8; KEY_LEN])>,
}

/// Why a value could not be sealed or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    /// The value names a key that is not configured.
    #[error("it was encrypted with key {0:?}, which storage.encryption_keys does not hold")]
    UnknownKey(String),
    /// The value is not `v1:<id>:<base64>`.
    #[error("it is not an encrypted value this relay can read")]
    Malformed,
    /// The key id is known but the value does not decrypt (another key, or altered).
    #[error("it does not decrypt with key {0:?} (a different key under that id, or altered)")]
    Forged(String),
    /// No random nonce could be drawn.
    #[error("no random numbers for a nonce")]
    Random,
}

impl Keyring {
    /// A keyring of `(id, key)` pairs; the first seals. Ids are checked by the settings
    /// parser (`valid_id`).
    pub fn new(keys: Vec<(String, [u8; KEY_LEN])>) -> Keyring {
        Keyring { keys }
    }

    /// True when no key is configured: secrets are stored as they are.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Seals `plain` with the first key; `None` without keys.
    pub fn seal(&self, plain: &str) -> Option<Result<String, KeyringError>> {
        let (id, key) = self.keys.first()?;
        Some(seal_with(id, key, plain))
    }

    /// Opens a value sealed with any of the keys.
    pub fn open(&self, sealed: &str) -> Result<String, KeyringError> {
        let mut parts = sealed.splitn(3, ':');
        let (Some(VERSION), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(KeyringError::Malformed);
        };
        let (_, key) = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .ok_or_else(|| KeyringError::UnknownKey(id.to_string()))?;
        let bytes = STANDARD.decode(body).map_err(|_| KeyringError::Malformed)?;
        if bytes.len() < NONCE_LEN {
            return Err(KeyringError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| KeyringError::Malformed)?;
        let aad = format!("{VERSION}:{id}");
        let plain = cipher(key)
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| KeyringError::Forged(id.to_string()))?;
        String::from_utf8(plain).map_err(|_| KeyringError::Malformed)
    }
}

/// True for a key id the sealed format can carry: 1 to 64 of `A-Z a-z 0-9 _ - .`.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

fn cipher(key: &[u8; KEY_LEN]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(&(*key).into())
}

fn seal_with(id: &str, key: &[u8; KEY_LEN], plain: &str) -> Result<String, KeyringError> {
    let nonce = XNonce::try_generate().map_err(|_| KeyringError::Random)?;
    let aad = format!("{VERSION}:{id}");
    let ciphertext = cipher(key)
        .encrypt(
            &nonce,
            Payload {
                msg: plain.as_bytes(),
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| KeyringError::Random)?;
    let mut bytes = nonce.to_vec();
    bytes.extend_from_slice(&ciphertext);
    Ok(format!("{aad}:{}", STANDARD.encode(bytes)))
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(id, _)| id))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(keys: &[(&str, u8)]) -> Keyring {
        Keyring::new(
            keys.iter()
                .map(|(id, b)| (id.to_string(), [*b; KEY_LEN]))
                .collect(),
        )
    }

    #[test]
    fn seals_with_the_first_key_and_opens_with_any() {
        let old = ring(&[("k1", 1)]);
        let sealed_old = old.seal("hunter2").unwrap().unwrap();
        assert!(sealed_old.starts_with("v1:k1:"), "{sealed_old}");
        assert!(!sealed_old.contains("hunter2"));
        let rotated = ring(&[("k2", 2), ("k1", 1)]);
        let sealed_new = rotated.seal("hunter2").unwrap().unwrap();
        assert!(sealed_new.starts_with("v1:k2:"), "{sealed_new}");
        assert_eq!(rotated.open(&sealed_old).unwrap(), "hunter2");
        assert_eq!(rotated.open(&sealed_new).unwrap(), "hunter2");
        // Random nonces: the same secret never seals to the same text.
        assert_ne!(rotated.seal("hunter2").unwrap().unwrap(), sealed_new);
    }

    #[test]
    fn refuses_unknown_keys_altered_values_and_other_formats() {
        let a = ring(&[("k1", 1)]);
        let sealed = a.seal("s").unwrap().unwrap();
        assert_eq!(
            ring(&[("k2", 2)]).open(&sealed),
            Err(KeyringError::UnknownKey("k1".into()))
        );
        assert_eq!(
            ring(&[("k1", 9)]).open(&sealed),
            Err(KeyringError::Forged("k1".into()))
        );
        // The key id is authenticated: relabelling a value does not open it.
        let relabelled = sealed.replacen("v1:k1:", "v1:k2:", 1);
        assert_eq!(
            ring(&[("k2", 1)]).open(&relabelled),
            Err(KeyringError::Forged("k2".into()))
        );
        for bad in ["", "plain", "v2:k1:AAAA", "v1:k1:***", "v1:k1:AAAA"] {
            assert_eq!(a.open(bad), Err(KeyringError::Malformed), "{bad}");
        }
        assert!(Keyring::default().seal("s").is_none());
    }

    #[test]
    fn debug_shows_ids_only() {
        let shown = format!("{:?}", ring(&[("k1", 0xAB)]));
        assert_eq!(shown, r#"["k1"]"#);
    }

    #[test]
    fn key_ids() {
        assert!(valid_id("2026-01.primary_key"));
        for bad in ["", "a:b", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
