//! Standard Webhooks signatures: every attempt of a subscription with `signing.secrets`
//! carries `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one
//! space-separated entry per secret, so receivers can rotate keys without downtime.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The prefix of a secret in the Standard Webhooks format.
pub const SECRET_PREFIX: &str = "whsec_";
/// Shortest and longest key, in bytes (the specification's bounds).
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// A signing key: the decoded bytes of a `whsec_` secret. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// Parses `whsec_<base64>`; the error says what is wrong without showing the secret.
    pub fn parse(text: &str) -> Result<SigningKey, String> {
        let Some(encoded) = text.strip_prefix(SECRET_PREFIX) else {
            return Err(format!(
                "must start with {SECRET_PREFIX} (the Standard Webhooks format)"
            ));
        };
        // Unpadded base64 is accepted too, as the Python reference library does (the Rust
        // one and svix refuse it; docs/delivery.md says to pad secrets for them).
        let padded = match encoded.len() % 4 {
            2 => format!("{encoded}=="),
            3 => format!("{encoded}="),
            _ => encoded.to_string(),
        };
        let key = STANDARD
            .decode(padded)
            .map_err(|_| format!("is not base64 after {SECRET_PREFIX}"))?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(format!(
                "decodes to {} bytes; a key has {} to {} bytes",
                key.len(),
                KEY_BYTES.start(),
                KEY_BYTES.end()
            ));
        }
        Ok(SigningKey(key))
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mac = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(mac))
    }

    /// True when one `v1` entry of a `webhook-signature` header signs this message (each
    /// compared in constant time).
    pub fn verifies(&self, id: &str, timestamp: u64, body: &[u8], header: &str) -> bool {
        let mac = self.mac(id, timestamp, body);
        header
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|sig| STANDARD.decode(sig).ok())
            .any(|sig| mac.clone().verify_slice(&sig).is_ok())
    }

    /// The HMAC of `{id}.{timestamp}.{body}`, before finalisation.
    fn mac(&self, id: &str, timestamp: u64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// The `webhook-signature` header value: one entry per key, space-separated.
pub fn signature_header(keys: &[SigningKey], id: &str, timestamp: u64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| k.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's published example.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: u64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn the_specification_example_signs_and_verifies() {
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(key.sign(ID, TIMESTAMP, BODY), SIGNATURE);
        assert!(key.verifies(ID, TIMESTAMP, BODY, SIGNATURE));
        // Any change to the id, time or body breaks it.
        assert!(!key.verifies("msg_other", TIMESTAMP, BODY, SIGNATURE));
        assert!(!key.verifies(ID, TIMESTAMP + 1, BODY, SIGNATURE));
        assert!(!key.verifies(ID, TIMESTAMP, br#"{"test": 2432232315}"#, SIGNATURE));
        // Entries of other versions or garbage are skipped, not fatal.
        assert!(key.verifies(ID, TIMESTAMP, BODY, &format!("v2,abc v1,!!! {SIGNATURE}")));
    }

    #[test]
    fn rotation_signs_with_every_key_and_either_verifies() {
        let old = SigningKey::parse(SECRET).unwrap();
        let new = SigningKey::parse("whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap();
        let header = signature_header(&[old.clone(), new.clone()], ID, TIMESTAMP, BODY);
        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], SIGNATURE);
        assert!(old.verifies(ID, TIMESTAMP, BODY, &header));
        assert!(new.verifies(ID, TIMESTAMP, BODY, &header));
        // Non-UTF-8 bodies are signed as bytes.
        let raw = [0xff, 0x00, 0xfe];
        assert!(new.verifies(ID, TIMESTAMP, &raw, &new.sign(ID, TIMESTAMP, &raw)));
    }

    #[test]
    fn secrets_are_checked_and_never_shown() {
        for (text, reason) in [
            ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with whsec_"),
            ("whsec_not base64!", "is not base64"),
            ("whsec_c2hvcnQ=", "decodes to 5 bytes"),
        ] {
            let err = SigningKey::parse(text).unwrap_err();
            assert!(err.starts_with(reason), "{text}: {err}");
            assert!(!err.contains(text), "{err}");
        }
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(format!("{key:?}"), "SigningKey(<redacted>)");
    }
}
