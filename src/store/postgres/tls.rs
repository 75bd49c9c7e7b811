//! TLS to the database, by rustls (no OpenSSL): `disable`, `require` (encrypted, any
//! certificate, as libpq's `require`) or `verify-full` (the `ca` file's roots, else the
//! system's, and the host name checked).

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::settings::{PostgresSettings, TlsMode, read_ca};

/// The pool's manager for `config` with the TLS that `pg.tls` asks for; an error says why
/// TLS cannot be set up.
pub(super) fn manager(
    mut config: tokio_postgres::Config,
    pg: &PostgresSettings,
    manager_config: ManagerConfig,
) -> Result<Manager, String> {
    Ok(match connector(&mut config, pg)? {
        None => Manager::from_config(config, NoTls, manager_config),
        Some(tls) => Manager::from_config(config, tls, manager_config),
    })
}

/// The TLS connector that `pg.tls` asks for (`None`: plain), with `config`'s `sslmode` set
/// to match; an error says why TLS cannot be set up. The pool and the listener share it.
pub(super) fn connector(
    config: &mut tokio_postgres::Config,
    pg: &PostgresSettings,
) -> Result<Option<MakeRustlsConnect>, String> {
    if pg.tls == TlsMode::Disable {
        config.ssl_mode(SslMode::Disable);
        return Ok(None);
    }
    config.ssl_mode(SslMode::Require);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let client = match (pg.tls, &pg.ca) {
        (TlsMode::VerifyFull, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for der in read_ca(ca)? {
                roots
                    .add(CertificateDer::from(der))
                    .map_err(|e| format!("storage.postgres.tls.ca: {e}"))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (TlsMode::VerifyFull, None) => {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder
                .with_platform_verifier()
                .map_err(|e| format!("TLS: the system's roots: {e}"))?
                .with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth(),
    };
    Ok(Some(MakeRustlsConnect::new(client)))
}

/// `require`: any certificate is taken (the link is encrypted, the peer not identified),
/// but the handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
