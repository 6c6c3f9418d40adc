//! rustls configurations from PEM files: clients for the FHIR and HL7 uplinks and the MQTT
//! source, a server for the HL7 listener.
//!
//! Architecture invariant: the only trust anchors are the configured CA certificates (no
//! system or web roots), the crypto provider is `ring`, protocol versions are TLS 1.2 and 1.3,
//! and a private key readable by group or others is refused before it is read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{what} {}", .path.display())]
    File {
        /// Which file it is (CA, client certificate, client key).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: FileError,
    },
    /// rustls refused the material.
    #[error("TLS configuration")]
    Rustls(#[from] rustls::Error),
}

/// What is wrong with one TLS file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It cannot be read, or its PEM framing is broken.
    #[error("not readable PEM")]
    Pem(#[source] rustls_pki_types::pem::Error),
    /// It holds no certificate.
    #[error("contains no PEM certificate")]
    NoCertificate,
    /// A private key others may read (the key check says so itself).
    #[error(transparent)]
    Key(crate::keyfile::KeyFileError),
    /// rustls refused a certificate of it.
    #[error(transparent)]
    Rustls(rustls::Error),
    /// rustls cannot build a client-certificate verifier from its CAs.
    #[error(transparent)]
    Verifier(rustls::server::VerifierBuilderError),
}

fn file_err(what: &'static str, path: &Path, source: FileError) -> TlsError {
    TlsError::File {
        what,
        path: path.into(),
        source,
    }
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |e| file_err(what, path, FileError::Pem(e));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(file_err(what, path, FileError::NoCertificate));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    crate::keyfile::check_private(path)
        .map_err(|e| file_err("client key", path, FileError::Key(e)))?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err("client key", path, FileError::Pem(e)))
}

/// A client config trusting only the CA in `ca`, presenting `cert`/`key` when given.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs("CA certificate", ca)? {
        roots
            .add(cert)
            .map_err(|e| file_err("CA certificate", ca, FileError::Rustls(e)))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key_path)) => {
            builder.with_client_auth_cert(certs("client certificate", cert)?, key(key_path)?)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A server config presenting `cert`/`key`; with `client_ca`, a client must present a
/// certificate signed by that CA (mutual TLS), and only that CA is trusted for it.
pub fn server_config(
    cert: &Path,
    key_path: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs("client CA certificate", ca)? {
                roots
                    .add(c)
                    .map_err(|e| file_err("client CA certificate", ca, FileError::Rustls(e)))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| file_err("client CA certificate", ca, FileError::Verifier(e)))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs("server certificate", cert)?, key(key_path)?)?;
    Ok(Arc::new(config))
}

/// Turns a handshake error into a sentence a technician can act on.
pub fn explain(e: &std::io::Error) -> String {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(c)) => {
            let why = match c {
                rustls::CertificateError::UnknownIssuer => {
                    "the server's certificate is not signed by the configured CA".to_owned()
                }
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. } => {
                    "the server's certificate is not valid for the host name in the URL".to_owned()
                }
                rustls::CertificateError::Expired
                | rustls::CertificateError::ExpiredContext { .. } => {
                    "the server's certificate has expired".to_owned()
                }
                other => format!("the server's certificate was rejected ({other:?})"),
            };
            format!("TLS handshake failed: {why}")
        }
        Some(rustls::Error::AlertReceived(alert)) => {
            format!("TLS handshake failed: the server sent alert {alert:?} (does it accept this gateway's client certificate?)")
        }
        Some(other) => format!("TLS handshake failed: {other}"),
        None => e.to_string(),
    }
}
