//! The rustls client configuration of a subscription with `tls` settings: its client
//! certificate, its private CA (instead of the system roots) and its checked server name.
//! reqwest takes it preconfigured, as it has no option for a server-name override.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::subscription::TlsSettings;

/// The client configuration for `tls`; an error says why it cannot be built.
pub fn client_config(tls: &TlsSettings) -> Result<ClientConfig, String> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let verifier = verifier(tls, &provider)?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &tls.key {
        Some(key) => builder
            .with_client_auth_cert(tls.chain.clone(), key.clone_key())
            .map_err(|e| format!("tls.client_cert: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    // reqwest sets ALPN only on configs it builds itself; without it HTTP/2 is lost.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // SNI stays the URL's host (none for an IP address); `server_name` is for checking only.
    config.enable_sni = true;
    Ok(config)
}

/// The private CA's roots, else the system's (as reqwest's default), checked against
/// `server_name` when one is set.
fn verifier(
    tls: &TlsSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let inner: Arc<dyn ServerCertVerifier> = if tls.roots.is_empty() {
        Arc::new(
            rustls_platform_verifier::Verifier::new(provider.clone())
                .map_err(|e| format!("tls: the system's roots: {e}"))?,
        )
    } else {
        let mut roots = RootCertStore::empty();
        for root in &tls.roots {
            roots
                .add(root.clone())
                .map_err(|e| format!("tls.ca: {e}"))?;
        }
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("tls.ca: {e}"))?
    };
    Ok(match &tls.server_name {
        Some(name) => Arc::new(PinnedName {
            inner,
            name: name.clone(),
        }),
        None => inner,
    })
}

/// Checks the receiver's certificate against a fixed name instead of the URL's host.
#[derive(Debug)]
struct PinnedName {
    inner: Arc<dyn ServerCertVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for PinnedName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::TlsSources;

    #[test]
    fn reqwest_takes_the_config_with_alpn_and_the_client_certificate() {
        let (cert, key) = crate::pem::test_pair();
        let tls = TlsSettings {
            chain: vec![cert.der().clone()],
            key: Some(Arc::new(
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )),
            roots: vec![cert.der().clone()],
            server_name: Some(ServerName::try_from("a.test").unwrap()),
            not_after: None,
            digest: [0; 32],
            sources: TlsSources::default(),
        };
        let config = client_config(&tls).unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
        assert_eq!(config.alpn_protocols[0], b"h2");
        // A rustls other than reqwest's would make this fail ("Unknown TLS backend").
        reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .build()
            .unwrap();
    }
}
