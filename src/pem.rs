//! PEM and X.509 helpers shared by the store (database roots) and the subscriptions (client
//! certificates, private CAs): read certificates and keys, check a key against its
//! certificate, read a certificate's expiry. Errors are messages for the config's issues.

use rustls::crypto::aws_lc_rs;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_cert::der::Decode;

/// The certificates of a PEM file of roots; an error says why it cannot serve.
pub fn read_ca(path: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    Ok(certificates(&pem, &shown)?
        .into_iter()
        .map(|c| c.to_vec())
        .collect())
}

/// Every certificate in `pem`, at least one; `shown` names the source in messages.
pub fn certificates(pem: &[u8], shown: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{shown} is not PEM: {}", problem(&e)))?;
    if certs.is_empty() {
        return Err(format!("{shown} holds no certificate"));
    }
    Ok(certs)
}

/// The private key in `pem` (PKCS#8, PKCS#1 or SEC1); encrypted keys are refused by name.
pub fn private_key(pem: &[u8], shown: &str) -> Result<PrivateKeyDer<'static>, String> {
    let text = String::from_utf8_lossy(pem);
    // rustls-pki-types skips sections it cannot use, so an encrypted key reads as "no key".
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err("encrypted keys are not supported (decrypt it with openssl pkey)".into());
    }
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => format!("{shown} holds no private key"),
        other => format!("{shown} is not a PEM private key: {}", problem(&other)),
    })
}

/// What is wrong with PEM text, in words of our own: the parser's own messages quote the
/// offending line or marker, which for a key flattened onto one line is the whole key.
fn problem(e: &rustls_pki_types::pem::Error) -> &'static str {
    use rustls_pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { .. } => {
            "a BEGIN line without its END line (newlines lost or escaped?)"
        }
        Error::IllegalSectionStart { .. } => "a malformed BEGIN line",
        Error::Base64Decode(_) => "the text between BEGIN and END is not base64",
        Error::SectionTooLarge => "a section larger than 256 MB",
        Error::NoItemsFound => "nothing usable found",
        _ => "unreadable",
    }
}

/// Whether `key` (read from `key_shown`) is the private key of the first certificate of
/// `chain` (from `cert_shown`); the error says why not, naming both.
pub fn key_matches(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    key_shown: &str,
    cert_shown: &str,
) -> Result<(), String> {
    let provider = aws_lc_rs::default_provider();
    match CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &provider) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(format!(
            "{key_shown} does not match the certificate in {cert_shown}"
        )),
        Err(e) => Err(format!("{key_shown} cannot be used: {e}")),
    }
}

/// When `cert` expires, in seconds since the epoch; `None` when it cannot be decoded.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let cert = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    let at = cert.tbs_certificate.validity.not_after.to_unix_duration();
    i64::try_from(at.as_secs()).ok()
}

/// A self-signed certificate for `a.test` and its key, for tests.
#[cfg(test)]
pub(crate) fn test_pair() -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["a.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_after_reads_the_expiry_and_refuses_garbage() {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        // 2031-05-17T00:00:00Z
        assert_eq!(not_after(cert.der()), Some(1_936_742_400));
        assert_eq!(not_after(&CertificateDer::from(vec![1, 2, 3])), None);
    }

    #[test]
    fn a_malformed_key_is_never_quoted_in_the_error() {
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
        // The key flattened onto one line, newlines escaped or turned into spaces.
        for flat in [key.replace('\n', "\\n"), key.replace('\n', " ")] {
            let e = private_key(flat.as_bytes(), "inline tls.client_key").unwrap_err();
            assert!(
                e.starts_with("inline tls.client_key is not a PEM private key"),
                "{e}"
            );
            for chunk in body.as_bytes().chunks(16) {
                let chunk = std::str::from_utf8(chunk).unwrap();
                assert!(!e.contains(chunk), "{e}");
            }
            // Nor as the parser's byte list.
            assert!(
                !e.contains(&format!("{:?}", &body.as_bytes()[..8])[1..20]),
                "{e}"
            );
        }
    }

    #[test]
    fn keys_are_read_checked_and_encrypted_ones_refused() {
        let (cert, key) = test_pair();
        let chain = certificates(cert.pem().as_bytes(), "c.pem").unwrap();
        let der = private_key(key.serialize_pem().as_bytes(), "k.pem").unwrap();
        assert_eq!(key_matches(&chain, &der, "k.pem", "c.pem"), Ok(()));
        let other = rcgen::KeyPair::generate().unwrap();
        let other = private_key(other.serialize_pem().as_bytes(), "k.pem").unwrap();
        assert_eq!(
            key_matches(&chain, &other, "k2.pem", "c.pem"),
            Err("k2.pem does not match the certificate in c.pem".into())
        );
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(
            private_key(encrypted.as_bytes(), "k.pem")
                .unwrap_err()
                .contains("encrypted")
        );
        assert_eq!(
            private_key(cert.pem().as_bytes(), "c.pem").unwrap_err(),
            "c.pem holds no private key"
        );
        assert_eq!(
            certificates(b"nothing", "x.pem").unwrap_err(),
            "x.pem holds no certificate"
        );
    }
}
