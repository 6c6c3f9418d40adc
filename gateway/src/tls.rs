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

fn key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    crate::keyfile::check_private(path).map_err(|e| file_err(what, path, FileError::Key(e)))?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(what, path, FileError::Pem(e)))
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
        Some((cert, key_path)) => builder.with_client_auth_cert(
            certs("client certificate", cert)?,
            key("client key", key_path)?,
        )?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A server config presenting `cert`/`key` (the key refused when group or others may read
/// it), TLS 1.2 and 1.3, `ring`: the HL7 listener's and the operations port's. With
/// `client_ca`, a client must present a certificate signed by that CA (mutual TLS), and only
/// that CA is trusted for it.
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
    let config = builder.with_single_cert(
        certs("server certificate", cert)?,
        key("server key", key_path)?,
    )?;
    Ok(Arc::new(config))
}

/// A client config that trusts exactly the certificate in `pinned` (the first of the file:
/// the operations server's own, as configured on this hub), for `vitalbridge status` talking
/// to its own gateway; presents `cert`/`key` when given (the server asks for a client
/// certificate when it has a `client_ca`).
pub fn pinned_client_config(
    pinned: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let leaf = certs("server certificate", pinned)?
        .into_iter()
        .next()
        .ok_or_else(|| file_err("server certificate", pinned, FileError::NoCertificate))?;
    let verifier = Arc::new(Pinned {
        leaf,
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match identity {
        Some((cert, key_path)) => builder.with_client_auth_cert(
            certs("client certificate", cert)?,
            key("client key", key_path)?,
        )?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Accepts exactly one server certificate (and checks the handshake signatures with it).
#[derive(Debug)]
struct Pinned {
    leaf: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
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
