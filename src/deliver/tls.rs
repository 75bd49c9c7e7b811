//! The rustls client configuration of a subscription with `tls` settings: its client
//! certificate, its private CA (instead of the system roots) and its checked server name.
//! reqwest takes it preconfigured, as it has no option for a server-name override. Clients
//! without `tls` settings take `default_config`, whose system roots are read once, when first
//! needed, for every client.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::subscription::TlsSettings;

/// The crypto provider of every delivery client.
static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(aws_lc_rs::default_provider()));

/// The client configuration of subscriptions without `tls`: the system's roots, as
/// reqwest's own, but read once for all clients (reqwest read them for each client it
/// built: 26 ms and a root store each, at every start, even with no https receiver).
pub fn default_config() -> Result<ClientConfig, String> {
    Ok(finish(
        builder(Arc::new(Checker {
            roots: Roots::System,
            name: None,
        }))?
        .with_no_client_auth(),
    ))
}

/// The client configuration for `tls`; an error says why it cannot be built.
pub fn client_config(tls: &TlsSettings) -> Result<ClientConfig, String> {
    let builder = builder(verifier(tls)?)?;
    let config = match &tls.key {
        Some(key) => builder
            .with_client_auth_cert(tls.chain.clone(), key.clone_key())
            .map_err(|e| format!("tls.client_cert: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    Ok(finish(config))
}

fn builder(
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, String> {
    Ok(ClientConfig::builder_with_provider(PROVIDER.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier))
}

fn finish(mut config: ClientConfig) -> ClientConfig {
    // reqwest sets ALPN only on configs it builds itself; without it HTTP/2 is lost.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // SNI stays the URL's host (none for an IP address); `server_name` is for checking only.
    config.enable_sni = true;
    config
}

/// Reads the system's roots on a blocking thread, once, when the first https subscription
/// starts, so no handshake waits on the file reads; says so at once if there are none.
pub fn load_system_roots_soon() {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if STARTED.swap(true, Ordering::Relaxed) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn_blocking(|| {
        if let Err(e) = system_roots() {
            tracing::error!(error = %e, "cannot read the system's CA roots: https deliveries without tls.ca fail");
        }
    });
}

/// The verifier over the system's roots, built once.
fn system_roots() -> Result<&'static rustls_platform_verifier::Verifier, rustls::Error> {
    static ROOTS: OnceLock<Result<rustls_platform_verifier::Verifier, rustls::Error>> =
        OnceLock::new();
    ROOTS
        .get_or_init(|| rustls_platform_verifier::Verifier::new(PROVIDER.clone()))
        .as_ref()
        .map_err(Clone::clone)
}

/// Which roots a receiver's certificate chains to.
#[derive(Debug)]
enum Roots {
    /// The system's, read on first use and shared by every client.
    System,
    /// A private CA's (`tls.ca`).
    Private(Arc<WebPkiServerVerifier>),
}

/// Checks a receiver's certificate against its roots, and against a fixed name instead of
/// the URL's host when `tls.server_name` is set.
#[derive(Debug)]
struct Checker {
    roots: Roots,
    name: Option<ServerName<'static>>,
}

impl Checker {
    fn inner(&self) -> Result<&dyn ServerCertVerifier, rustls::Error> {
        Ok(match &self.roots {
            Roots::System => system_roots()?,
            Roots::Private(verifier) => verifier.as_ref(),
        })
    }
}

impl ServerCertVerifier for Checker {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self.name.as_ref().unwrap_or(name);
        self.inner()?
            .verify_server_cert(end_entity, intermediates, name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        // The provider's, which every verifier here answers, without reading the system's
        // roots (rustls asks while building the ClientHello).
        PROVIDER
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The private CA's roots, else the system's (as reqwest's default), checked against
/// `server_name` when one is set.
fn verifier(tls: &TlsSettings) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let roots = if tls.roots.is_empty() {
        Roots::System
    } else {
        let mut roots = RootCertStore::empty();
        for root in &tls.roots {
            roots
                .add(root.clone())
                .map_err(|e| format!("tls.ca: {e}"))?;
        }
        Roots::Private(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), PROVIDER.clone())
                .build()
                .map_err(|e| format!("tls.ca: {e}"))?,
        )
    };
    Ok(Arc::new(Checker {
        roots,
        name: tls.server_name.clone(),
    }))
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

    #[test]
    fn the_default_config_checks_against_the_system_roots() {
        let config = default_config().unwrap();
        assert_eq!(config.alpn_protocols[0], b"h2");
        // A self-signed certificate is no system root's: refused, not waved through.
        let (cert, _) = crate::pem::test_pair();
        let name = ServerName::try_from("a.test").unwrap();
        let system = Checker {
            roots: Roots::System,
            name: None,
        };
        let verdict = system.verify_server_cert(cert.der(), &[], &name, &[], UnixTime::now());
        assert!(verdict.is_err(), "{verdict:?}");
        if let Ok(roots) = system_roots() {
            assert_eq!(
                system.supported_verify_schemes(),
                roots.supported_verify_schemes()
            );
        }
    }
}
