//! rustls configurations from PEM files: clients for the FHIR and HL7 uplinks and the MQTT
//! source, a server for the HL7 listener.
//!
//! Architecture invariant: the only trust anchors are the configured CA certificates (no
//! system or web roots), the crypto provider is `ring`, protocol versions are TLS 1.2 and 1.3,
//! and a private key readable by group or others is refused before it is read.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};

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
    /// It holds no certificate revocation list.
    #[error("contains no PEM X509 CRL")]
    NoCrl,
    /// A private key others may read (the key check says so itself).
    #[error(transparent)]
    Key(crate::keyfile::KeyFileError),
    /// rustls refused a certificate of it.
    #[error(transparent)]
    Rustls(rustls::Error),
    /// rustls cannot build a certificate verifier from its CAs or CRLs.
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

/// The certificate revocation lists in one PEM file.
fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let pem = |e| file_err("CRL", path, FileError::Pem(e));
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if crls.is_empty() {
        return Err(file_err("CRL", path, FileError::NoCrl));
    }
    Ok(crls)
}

/// Modification time, length and inode of each CRL file (`None`: cannot be read now). The
/// inode catches a file replaced by rename within the file system's time resolution.
type Stamps = Vec<Option<(SystemTime, u64, u64)>>;

/// The [`Stamps`] of `paths`: what says a file changed.
fn stamps(paths: &[PathBuf]) -> Stamps {
    use std::os::unix::fs::MetadataExt;
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len(), m.ino()))
        })
        .collect()
}

/// The CRLs of every file in `paths`.
fn all_crls(paths: &[PathBuf]) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut all = Vec::new();
    for path in paths {
        all.extend(crls(path)?);
    }
    Ok(all)
}

/// A verifier built from the CRL files of `paths`, built again before the next handshake
/// when one of them changed (by modification time, length or inode). A changed file that
/// cannot be read or parsed leaves the last good lists in force, and says so in the log once
/// per change.
#[derive(Debug)]
struct CrlWatch<V: ?Sized> {
    paths: Vec<PathBuf>,
    current: Mutex<(Stamps, Arc<V>)>,
}

impl<V: ?Sized> CrlWatch<V> {
    /// Builds the first verifier; an error here stops the start.
    fn new(
        paths: &[PathBuf],
        build: impl FnOnce(&[PathBuf]) -> Result<Arc<V>, TlsError>,
    ) -> Result<Self, TlsError> {
        let stamp = stamps(paths);
        let first = build(paths)?;
        Ok(Self {
            paths: paths.to_vec(),
            current: Mutex::new((stamp, first)),
        })
    }

    /// The verifier built last, without looking at the files.
    fn last(&self) -> Arc<V> {
        let current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        current.1.clone()
    }

    /// The verifier for the files as they are now.
    fn current(&self, build: impl FnOnce(&[PathBuf]) -> Result<Arc<V>, TlsError>) -> Arc<V> {
        let stamp = stamps(&self.paths);
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.0 != stamp {
            match build(&self.paths) {
                Ok(v) => {
                    tracing::info!(files = self.paths.len(), "CRL files changed: read again");
                    current.1 = v;
                }
                Err(e) => tracing::warn!(
                    error = %crate::error_chain::Chain(&e),
                    "a CRL file changed but cannot be used; the lists read before stay in force"
                ),
            }
            current.0 = stamp;
        }
        current.1.clone()
    }
}

/// Checks the server's certificate against the configured CA and the CRLs of its
/// [`CrlWatch`].
#[derive(Debug)]
struct CrlServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    watch: CrlWatch<WebPkiServerVerifier>,
}

impl CrlServerVerifier {
    fn build(
        roots: &Arc<RootCertStore>,
        provider: &Arc<rustls::crypto::CryptoProvider>,
        paths: &[PathBuf],
    ) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
        let first = paths.first().map(PathBuf::as_path).unwrap_or(Path::new(""));
        WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .with_crls(all_crls(paths)?)
            .only_check_end_entity_revocation()
            .build()
            .map_err(|e| file_err("CRL", first, FileError::Verifier(e)))
    }

    fn new(
        roots: RootCertStore,
        provider: Arc<rustls::crypto::CryptoProvider>,
        paths: &[PathBuf],
    ) -> Result<Self, TlsError> {
        let roots = Arc::new(roots);
        let watch = CrlWatch::new(paths, |paths| Self::build(&roots, &provider, paths))?;
        Ok(Self {
            roots,
            provider,
            watch,
        })
    }

    fn current(&self) -> Arc<WebPkiServerVerifier> {
        self.watch
            .current(|paths| Self::build(&self.roots, &self.provider, paths))
    }
}

impl ServerCertVerifier for CrlServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// Checks a client's certificate against the configured client CA and the CRLs of its
/// [`CrlWatch`], as [`CrlServerVerifier`] does for servers.
#[derive(Debug)]
struct CrlClientVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The CA names offered to clients: the roots', the same whatever the CRLs say.
    hints: Vec<rustls::DistinguishedName>,
    watch: CrlWatch<dyn ClientCertVerifier>,
}

impl CrlClientVerifier {
    fn build(
        roots: &Arc<RootCertStore>,
        provider: &Arc<rustls::crypto::CryptoProvider>,
        paths: &[PathBuf],
        ca: &Path,
    ) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .with_crls(all_crls(paths)?)
            .only_check_end_entity_revocation()
            .build()
            .map_err(|e| file_err("client CA certificate", ca, FileError::Verifier(e)))
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.watch
            .current(|paths| Self::build(&self.roots, &self.provider, paths, Path::new("")))
    }
}

impl ClientCertVerifier for CrlClientVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// A client config trusting only the CA in `ca`, presenting `cert`/`key` when given (no
/// CRLs: [`client_config_with_crls`]).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with_crls(ca, &[], identity)
}

/// A client config trusting only the CA in `ca`, checking the server's certificate against
/// the CRLs in `crl_files` (PEM; read again when they change), presenting `cert`/`key` when
/// given.
pub fn client_config_with_crls(
    ca: &Path,
    crl_files: &[PathBuf],
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs("CA certificate", ca)? {
        roots
            .add(cert)
            .map_err(|e| file_err("CA certificate", ca, FileError::Rustls(e)))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = if crl_files.is_empty() {
        versions.with_root_certificates(roots)
    } else {
        let verifier = CrlServerVerifier::new(roots, provider, crl_files)?;
        versions
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
    };
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
/// that CA is trusted for it; with `crl_files` too, a client certificate on one of those CRLs
/// is refused (read again when a file changes).
pub fn server_config(
    cert: &Path,
    key_path: &Path,
    client_ca: Option<&Path>,
    crl_files: &[PathBuf],
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
            if crl_files.is_empty() {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| file_err("client CA certificate", ca, FileError::Verifier(e)))?;
                builder.with_client_cert_verifier(verifier)
            } else {
                let roots = Arc::new(roots);
                let watch = CrlWatch::new(crl_files, |paths| {
                    CrlClientVerifier::build(&roots, &provider, paths, ca)
                })?;
                let hints = watch.last().root_hint_subjects().to_vec();
                builder.with_client_cert_verifier(Arc::new(CrlClientVerifier {
                    roots,
                    provider,
                    hints,
                    watch,
                }))
            }
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

/// The rustls error somewhere in `error`'s chain (an `io::Error` carrying one, as
/// tokio-rustls reports them, or a rustls error itself): how a TLS failure is recognised
/// when it surfaces after the handshake, e.g. a server's alert refusing the client
/// certificate, which TLS 1.3 delivers with the first response.
pub fn rustls_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        next = e.source();
    }
    None
}

/// Turns a handshake error into a sentence a technician can act on.
pub fn explain(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(r) => explain_rustls(r),
        None => e.to_string(),
    }
}

/// A short, stable label for a TLS failure, for the `cause` of
/// `vitalbridge_tls_failures_by_cause_total` and the audit log's `tls_failure`: the alert a
/// peer sent (`unknown_ca`, `bad_certificate`, `certificate_expired`, `certificate_revoked`,
/// `certificate_required`, …: the peer refused this gateway's certificate), what was wrong
/// with the peer's certificate (`peer_unknown_issuer`, `peer_name_mismatch`, `peer_expired`,
/// `peer_not_yet_valid`, `peer_revoked`, …), no client certificate (`no_certificate`, on
/// this gateway's listeners), or an old protocol or weak ciphers (`no_tls12_or_13`,
/// `no_common_cipher`). [`explain_rustls`] says the same in words, from the client's side.
pub fn cause_label(e: &rustls::Error) -> &'static str {
    use rustls::{AlertDescription as A, CertificateError as C, PeerIncompatible as P};
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "peer_unknown_issuer",
            C::NotValidForName | C::NotValidForNameContext { .. } => "peer_name_mismatch",
            C::Expired | C::ExpiredContext { .. } => "peer_expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "peer_not_yet_valid",
            C::Revoked => "peer_revoked",
            C::UnknownRevocationStatus => "peer_revocation_unknown",
            C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => "crl_expired",
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => "peer_wrong_purpose",
            _ => "peer_certificate_other",
        },
        rustls::Error::NoCertificatesPresented => "no_certificate",
        rustls::Error::AlertReceived(alert) => match alert {
            A::UnknownCA => "unknown_ca",
            A::BadCertificate => "bad_certificate",
            A::CertificateExpired => "certificate_expired",
            A::CertificateRevoked => "certificate_revoked",
            A::CertificateRequired => "certificate_required",
            A::CertificateUnknown => "certificate_unknown",
            A::UnsupportedCertificate => "unsupported_certificate",
            A::AccessDenied => "access_denied",
            A::ProtocolVersion => "protocol_version",
            A::HandshakeFailure | A::InsufficientSecurity => "handshake_failure",
            A::DecryptError => "decrypt_error",
            _ => "alert_other",
        },
        rustls::Error::PeerIncompatible(
            P::ServerDoesNotSupportTls12Or13
            | P::Tls12NotOffered
            | P::Tls12NotOfferedOrEnabled
            | P::SupportedVersionsExtensionRequired,
        ) => "no_tls12_or_13",
        rustls::Error::PeerIncompatible(
            P::NoCipherSuitesInCommon | P::NoKxGroupsInCommon | P::NoSignatureSchemesInCommon,
        ) => "no_common_cipher",
        _ => "other",
    }
}

/// [`cause_label`] for a handshake's `io::Error`: `io` when no rustls error is inside (the
/// connection closed or reset during the handshake).
pub fn io_cause_label(e: &std::io::Error) -> &'static str {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(r) => cause_label(r),
        None => "io",
    }
}

fn utc(t: UnixTime) -> String {
    let secs = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} s after 1970"))
}

/// [`explain`] for a rustls error: what is wrong, in words, and what to check.
pub fn explain_rustls(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, PeerIncompatible as P};
    let why = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "the server's certificate is not signed by the configured CA".to_owned(),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "the server's certificate is not valid for the host name in the URL".to_owned()
            }
            C::Expired => "the server's certificate has expired".to_owned(),
            C::ExpiredContext { time, not_after } => format!(
                "the server's certificate expired at {} (this gateway's clock says {})",
                utc(*not_after),
                utc(*time)
            ),
            C::NotValidYet => {
                "the server's certificate is not valid yet (check this gateway's clock)".to_owned()
            }
            C::NotValidYetContext { time, not_before } => format!(
                "the server's certificate is not valid until {} and this gateway's clock says {}: check the clock, or the server's certificate",
                utc(*not_before),
                utc(*time)
            ),
            C::Revoked => "the server's certificate is revoked (it is on a configured CRL)".to_owned(),
            C::UnknownRevocationStatus => "the server's certificate's revocation status is unknown: no configured CRL is from its issuer".to_owned(),
            C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => {
                "a configured CRL is out of date".to_owned()
            }
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "the server's certificate is not for TLS servers (extended key usage)".to_owned()
            }
            other => format!("the server's certificate was rejected: {other}"),
        },
        rustls::Error::AlertReceived(alert) => {
            let what = match alert {
                A::UnknownCA => "the server does not trust the CA that signed this gateway's client certificate (alert unknown_ca)",
                A::BadCertificate => "the server refused this gateway's client certificate (alert bad_certificate)",
                A::CertificateExpired => "the server says this gateway's client certificate has expired or is not valid yet (alert certificate_expired)",
                A::CertificateRevoked => "the server says this gateway's client certificate is revoked (alert certificate_revoked)",
                A::CertificateRequired => "the server requires a client certificate and got none it accepts (alert certificate_required)",
                A::CertificateUnknown => "the server refused this gateway's client certificate for a reason it did not name (alert certificate_unknown)",
                A::UnsupportedCertificate => "the server cannot use this gateway's client certificate: its key type or usage (alert unsupported_certificate)",
                A::AccessDenied => "the server accepted the certificate but denies this gateway access (alert access_denied)",
                A::ProtocolVersion => "the server speaks no TLS version this gateway accepts (1.2 or 1.3); it may offer only TLS 1.0 or 1.1, which are refused (alert protocol_version)",
                A::HandshakeFailure | A::InsufficientSecurity => "the server and this gateway have no cipher suite in common; the server may offer only weak ciphers, which are refused (alert handshake_failure)",
                A::DecryptError => "the server could not verify this gateway's signature (alert decrypt_error): does the client key match the certificate?",
                other => return format!("TLS handshake failed: the server sent alert {other:?}"),
            };
            what.to_owned()
        }
        rustls::Error::PeerIncompatible(P::ServerDoesNotSupportTls12Or13 | P::Tls12NotOffered | P::Tls12NotOfferedOrEnabled | P::SupportedVersionsExtensionRequired) => {
            "the server speaks no TLS version this gateway accepts (1.2 or 1.3): it offers only TLS 1.0 or 1.1, which are refused".to_owned()
        }
        rustls::Error::PeerIncompatible(P::NoCipherSuitesInCommon | P::NoKxGroupsInCommon | P::NoSignatureSchemesInCommon) => {
            "the server offers only cipher suites, key exchanges or signatures this gateway refuses as weak".to_owned()
        }
        other => format!("{other}"),
    };
    format!("TLS handshake failed: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription as A, CertificateError as C};

    #[test]
    fn every_refusal_is_said_in_words_and_has_a_stable_label() {
        let t = |secs| UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
        // (error, words of `explain_rustls`, label of `cause_label` for the metric and audit)
        let cases: Vec<(rustls::Error, &str, &str)> = vec![
            (rustls::Error::AlertReceived(A::UnknownCA), "does not trust the CA", "unknown_ca"),
            (rustls::Error::AlertReceived(A::BadCertificate), "refused this gateway's client certificate", "bad_certificate"),
            (rustls::Error::AlertReceived(A::CertificateExpired), "has expired", "certificate_expired"),
            (rustls::Error::AlertReceived(A::CertificateRevoked), "is revoked", "certificate_revoked"),
            (rustls::Error::AlertReceived(A::CertificateRequired), "requires a client certificate", "certificate_required"),
            (rustls::Error::AlertReceived(A::ProtocolVersion), "TLS 1.0 or 1.1", "protocol_version"),
            (rustls::Error::AlertReceived(A::HandshakeFailure), "weak ciphers", "handshake_failure"),
            (rustls::PeerIncompatible::ServerDoesNotSupportTls12Or13.into(), "TLS 1.0 or 1.1", "no_tls12_or_13"),
            (rustls::PeerIncompatible::NoCipherSuitesInCommon.into(), "weak", "no_common_cipher"),
            (
                rustls::Error::InvalidCertificate(C::NotValidYetContext {
                    time: t(1_780_000_000),
                    not_before: t(1_790_000_000),
                }),
                "not valid until 2026-09-21T14:13:20Z and this gateway's clock says 2026-05-28T20:26:40Z",
                "peer_not_yet_valid",
            ),
            (
                rustls::Error::InvalidCertificate(C::ExpiredContext {
                    time: t(1_790_000_000),
                    not_after: t(1_780_000_000),
                }),
                "expired at 2026-05-28T20:26:40Z",
                "peer_expired",
            ),
            (rustls::Error::InvalidCertificate(C::Expired), "has expired", "peer_expired"),
            (rustls::Error::InvalidCertificate(C::NotValidYet), "not valid yet", "peer_not_yet_valid"),
            (rustls::Error::InvalidCertificate(C::NotValidForName), "not valid for the host name", "peer_name_mismatch"),
            (rustls::Error::InvalidCertificate(C::Revoked), "revoked", "peer_revoked"),
            (rustls::Error::InvalidCertificate(C::UnknownIssuer), "not signed by the configured CA", "peer_unknown_issuer"),
        ];
        for (error, words, label) in cases {
            let text = explain_rustls(&error);
            assert!(text.contains(words), "{error:?}: {text}");
            assert!(!text.contains("Context"), "{text}");
            assert!(!text.contains('{'), "{text}");
            assert_eq!(cause_label(&error), label, "{error:?}");
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, error);
            assert_eq!(io_cause_label(&io), label);
        }
        assert_eq!(io_cause_label(&std::io::Error::other("reset")), "io");
    }

    #[test]
    fn a_rustls_error_is_found_inside_an_io_error_inside_another_error() {
        #[derive(Debug, thiserror::Error)]
        #[error("request failed")]
        struct Outer(#[source] std::io::Error);
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(A::UnknownCA),
        );
        let outer = Outer(io);
        assert_eq!(
            rustls_cause(&outer),
            Some(&rustls::Error::AlertReceived(A::UnknownCA))
        );
        let plain = Outer(std::io::Error::other("reset"));
        assert_eq!(rustls_cause(&plain), None);
    }
}
