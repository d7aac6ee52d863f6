//! TLS for the QUIC transport: mutual TLS 1.3 by default, or an explicit unauthenticated mode.
//!
//! * [`Security::MutualTls`]: the receiver (server) presents `cert`/`key` and requires a client
//!   certificate signed by `cacert` (rustls' `WebPkiClientVerifier`); the sender (client) trusts
//!   only `cacert` for the receiver's certificate and presents its own `cert`/`key`. Files are PEM
//!   and named as CRIU names them (`--tls-cacert`, `--tls-cert`, `--tls-key`).
//! * [`Security::Insecure`]: no authentication at all (the server uses an ephemeral self-signed
//!   certificate and the client accepts any); the connection is still encrypted. It says so with a
//!   `tracing::warn!` every time it is set up.
//!
//! TLS 1.3 only, ring as the crypto provider, ALPN [`ALPN`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::error::TransportError;

/// The ALPN protocol id of pagestream's QUIC protocol.
pub const ALPN: &[u8] = b"pagestream/1";

/// The three PEM files of one side of a mutual-TLS session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signed the peer's certificate (`--tls-cacert`).
    pub cacert: PathBuf,
    /// This side's certificate chain (`--tls-cert`).
    pub cert: PathBuf,
    /// This side's private key (`--tls-key`).
    pub key: PathBuf,
}

/// How a session is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    /// Mutual TLS 1.3 with certificates signed by a common CA.
    MutualTls(TlsFiles),
    /// Encrypted but unauthenticated: anyone can connect, and the sender cannot tell whom it talks
    /// to. Only with an explicit `--insecure`.
    Insecure,
}

impl fmt::Display for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Security::MutualTls(files) => write!(f, "mutual TLS (CA {})", files.cacert.display()),
            Security::Insecure => f.write_str("insecure (encrypted, no authentication)"),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|e| TransportError::TlsFile { path: path.to_owned(), reason: e.to_string() })
}

/// Every certificate in the PEM file `path` (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let bytes = read_file(path)?;
    let bad = |reason: String| TransportError::TlsFile { path: path.to_owned(), reason };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a valid PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no certificate in it (expected a PEM 'CERTIFICATE' block)".into()));
    }
    Ok(certs)
}

/// The private key in the PEM file `path` (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    let bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TransportError::TlsFile {
        path: path.to_owned(),
        reason: format!("no usable private key (expected a PEM 'PRIVATE KEY' block): {e}"),
    })
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TransportError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TransportError::TlsFile {
            path: path.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

fn warn_insecure(side: &str) {
    tracing::warn!(
        "{side}: --insecure: the QUIC connection is encrypted but NOT authenticated; anyone on the \
         network can connect or impersonate the peer"
    );
}

fn cert_error(files: &TlsFiles, e: rustls::Error) -> TransportError {
    TransportError::TlsConfig(format!("certificate {} with key {}: {e}", files.cert.display(), files.key.display()))
}

/// The receiver's rustls configuration (TLS 1.3, ALPN set).
pub fn server_crypto(security: &Security) -> Result<rustls::ServerConfig, TransportError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::TlsConfig(e.to_string()))?;
    let mut config = match security {
        Security::MutualTls(files) => {
            let roots = load_roots(&files.cacert)?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build().map_err(|e| {
                    TransportError::TlsConfig(format!("client verifier from {}: {e}", files.cacert.display()))
                })?;
            let certs = load_certs(&files.cert)?;
            let key = load_key(&files.key)?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)
                .map_err(|e| cert_error(files, e))?
        }
        Security::Insecure => {
            warn_insecure("receiver");
            let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
                .map_err(|e| TransportError::Certs(format!("ephemeral certificate: {e}")))?;
            let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
            builder
                .with_no_client_auth()
                .with_single_cert(vec![generated.cert.der().clone()], key)
                .map_err(|e| TransportError::TlsConfig(format!("ephemeral certificate: {e}")))?
        }
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The sender's rustls configuration (TLS 1.3, ALPN set).
pub fn client_crypto(security: &Security) -> Result<rustls::ClientConfig, TransportError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::TlsConfig(e.to_string()))?;
    let mut config = match security {
        Security::MutualTls(files) => {
            let roots = load_roots(&files.cacert)?;
            let certs = load_certs(&files.cert)?;
            let key = load_key(&files.key)?;
            builder.with_root_certificates(roots).with_client_auth_cert(certs, key).map_err(|e| cert_error(files, e))?
        }
        Security::Insecure => {
            warn_insecure("sender");
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert { provider }))
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// quinn's server crypto for `security`.
pub fn quic_server_config(security: &Security) -> Result<QuicServerConfig, TransportError> {
    QuicServerConfig::try_from(server_crypto(security)?).map_err(|e| TransportError::TlsConfig(e.to_string()))
}

/// quinn's client crypto for `security`.
pub fn quic_client_config(security: &Security) -> Result<QuicClientConfig, TransportError> {
    QuicClientConfig::try_from(client_crypto(security)?).map_err(|e| TransportError::TlsConfig(e.to_string()))
}

/// [`Security::Insecure`]'s client verifier: any server certificate is accepted, but the
/// handshake signatures are still checked (so the session keys are bound to that certificate).
#[derive(Debug)]
struct AcceptAnyServerCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_garbled_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = load_certs(&missing).unwrap_err().to_string();
        assert!(err.contains("nope.pem") && err.contains("No such file"), "{err}");

        let garbled = dir.path().join("garbled.pem");
        std::fs::write(&garbled, "hello, not a certificate\n").unwrap();
        let err = load_certs(&garbled).unwrap_err().to_string();
        assert!(err.contains("garbled.pem") && err.contains("no certificate"), "{err}");
        let err = load_key(&garbled).unwrap_err().to_string();
        assert!(err.contains("garbled.pem") && err.contains("private key"), "{err}");

        let broken = dir.path().join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").unwrap();
        let err = load_certs(&broken).unwrap_err().to_string();
        assert!(err.contains("broken.pem"), "{err}");
    }

    #[test]
    fn insecure_configs_build() {
        let server = server_crypto(&Security::Insecure).unwrap();
        assert_eq!(server.alpn_protocols, vec![ALPN.to_vec()]);
        let client = client_crypto(&Security::Insecure).unwrap();
        assert_eq!(client.alpn_protocols, vec![ALPN.to_vec()]);
        assert!(quic_server_config(&Security::Insecure).is_ok());
        assert!(quic_client_config(&Security::Insecure).is_ok());
    }
}
