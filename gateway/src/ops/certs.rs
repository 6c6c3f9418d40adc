//! Validity of the certificates the configuration names (client certificates and private CAs),
//! for the status page, `/metrics` and the audit log.
//!
//! Files are read once at start, like the TLS configs built from them: a renewed certificate
//! is used (and shown) after a restart. PEM is split with `rustls-pki-types`, each certificate
//! parsed with `x509-cert`; a file that cannot be read or parsed is reported, never a panic.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_cert::der::Decode;

use crate::config::Config;

/// How long before `notAfter` a certificate is reported as expiring soon.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// Largest certificate file read (a CA bundle is a few kB).
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The validity of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertValidity {
    /// The subject's distinguished name (RFC 4514), e.g. `CN=hub-0001,O=Clinic`.
    pub subject: String,
    /// Not valid before.
    pub not_before: OffsetDateTime,
    /// Not valid after.
    pub not_after: OffsetDateTime,
}

/// What is wrong with a certificate at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Past `notAfter`: peers refuse it.
    Expired,
    /// Before `notBefore` (or this machine's clock is wrong).
    NotYetValid,
    /// Within [`EXPIRY_WARNING`] of `notAfter`.
    ExpiresSoon,
}

impl Problem {
    /// Short name for JSON and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::Expired => "expired",
            Problem::NotYetValid => "not_yet_valid",
            Problem::ExpiresSoon => "expires_soon",
        }
    }
}

impl CertValidity {
    /// The problem at `now`, if any.
    pub fn problem(&self, now: OffsetDateTime) -> Option<Problem> {
        if now > self.not_after {
            Some(Problem::Expired)
        } else if now < self.not_before {
            Some(Problem::NotYetValid)
        } else if self.not_after - now < EXPIRY_WARNING {
            Some(Problem::ExpiresSoon)
        } else {
            None
        }
    }
}

/// One configured certificate file.
#[derive(Debug)]
pub struct CertReport {
    /// The config key naming it, e.g. `uplink.fhir.cert`.
    pub usage: String,
    /// The file.
    pub path: PathBuf,
    /// Its certificates, in file order, or why they could not be read.
    pub certs: Result<Vec<CertValidity>, CertError>,
}

/// Why a certificate file gave no certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The file cannot be read.
    #[error("cannot read")]
    Read(#[source] std::io::Error),
    /// The PEM framing is broken.
    #[error("not valid PEM")]
    Pem(#[source] rustls_pki_types::pem::Error),
    /// A `CERTIFICATE` block is not a valid X.509 certificate.
    #[error("certificate {index} is not valid X.509")]
    X509 {
        /// 1-based position in the file.
        index: usize,
        /// The DER decoder's reason.
        #[source]
        source: x509_cert::der::Error,
    },
    /// A validity time is outside what this machine can represent.
    #[error("certificate {0} has a validity time out of range")]
    Time(usize),
    /// No `CERTIFICATE` block at all.
    #[error("contains no PEM certificate")]
    Empty,
}

fn time_of(t: &x509_cert::time::Time, index: usize) -> Result<OffsetDateTime, CertError> {
    let secs = i64::try_from(t.to_unix_duration().as_secs()).map_err(|_| CertError::Time(index))?;
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| CertError::Time(index))
}

/// Parses every `CERTIFICATE` block of a PEM text.
pub fn parse_pem(pem: &[u8]) -> Result<Vec<CertValidity>, CertError> {
    let mut out = Vec::new();
    for (i, der) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let index = i + 1;
        let der = der.map_err(CertError::Pem)?;
        let cert = x509_cert::Certificate::from_der(der.as_ref())
            .map_err(|source| CertError::X509 { index, source })?;
        let validity = &cert.tbs_certificate.validity;
        out.push(CertValidity {
            subject: cert.tbs_certificate.subject.to_string(),
            not_before: time_of(&validity.not_before, index)?,
            not_after: time_of(&validity.not_after, index)?,
        });
    }
    if out.is_empty() {
        return Err(CertError::Empty);
    }
    Ok(out)
}

fn read(path: &Path) -> Result<Vec<CertValidity>, CertError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(CertError::Read)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(CertError::Read)?;
    parse_pem(&bytes)
}

/// The certificate files a configuration uses, by config key.
pub fn configured(config: &Config) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    if let Some(fhir) = &config.uplink.fhir {
        if let Some(cert) = &fhir.cert {
            files.push(("uplink.fhir.cert".to_owned(), cert.clone()));
        }
        files.push(("uplink.fhir.ca".to_owned(), fhir.ca.clone()));
    }
    if let Some(tls) = config.sources.mqtt.as_ref().and_then(|m| m.tls.as_ref()) {
        if let Some(cert) = &tls.cert {
            files.push(("sources.mqtt.tls.cert".to_owned(), cert.clone()));
        }
        files.push(("sources.mqtt.tls.ca".to_owned(), tls.ca.clone()));
    }
    if let Some(tls) = config.sources.hl7.as_ref().and_then(|h| h.tls.as_ref()) {
        files.push(("sources.hl7.tls.cert".to_owned(), tls.cert.clone()));
        if let Some(ca) = &tls.client_ca {
            files.push(("sources.hl7.tls.client_ca".to_owned(), ca.clone()));
        }
    }
    if let Some(tls) = config.uplink.hl7.as_ref().and_then(|h| h.tls.as_ref()) {
        if let Some(cert) = &tls.cert {
            files.push(("uplink.hl7.tls.cert".to_owned(), cert.clone()));
        }
        files.push(("uplink.hl7.tls.ca".to_owned(), tls.ca.clone()));
    }
    files
}

/// Reads every certificate file `config` names.
pub fn inspect(config: &Config) -> Vec<CertReport> {
    configured(config)
        .into_iter()
        .map(|(usage, path)| CertReport {
            certs: read(&path),
            usage,
            path,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_with_validity(not_before: OffsetDateTime, not_after: OffsetDateTime) -> String {
        let mut params = rcgen::CertificateParams::new(vec!["hub-0001.example".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "hub-0001");
        params.not_before = not_before;
        params.not_after = not_after;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn subject_and_validity_are_read_from_pem() {
        let nb = time::macros::datetime!(2025-01-01 00:00 UTC);
        let na = time::macros::datetime!(2027-06-30 12:00 UTC);
        let two = format!("{}{}", pem_with_validity(nb, na), pem_with_validity(nb, nb));
        let certs = parse_pem(two.as_bytes()).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].subject, "CN=hub-0001");
        assert_eq!(certs[0].not_before, nb);
        assert_eq!(certs[0].not_after, na);
    }

    #[test]
    fn problems_depend_on_the_time() {
        let c = CertValidity {
            subject: "CN=x".into(),
            not_before: time::macros::datetime!(2026-01-01 00:00 UTC),
            not_after: time::macros::datetime!(2026-12-31 00:00 UTC),
        };
        let at = |t| c.problem(t);
        assert_eq!(
            at(time::macros::datetime!(2025-12-31 00:00 UTC)),
            Some(Problem::NotYetValid)
        );
        assert_eq!(at(time::macros::datetime!(2026-06-01 00:00 UTC)), None);
        assert_eq!(
            at(time::macros::datetime!(2026-12-10 00:00 UTC)),
            Some(Problem::ExpiresSoon)
        );
        assert_eq!(
            at(time::macros::datetime!(2027-01-01 00:00 UTC)),
            Some(Problem::Expired)
        );
    }

    #[test]
    fn broken_files_are_errors_not_panics() {
        assert!(matches!(parse_pem(b""), Err(CertError::Empty)));
        assert!(matches!(parse_pem(b"hello"), Err(CertError::Empty)));
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            parse_pem(garbage),
            Err(CertError::X509 { index: 1, .. })
        ));
        let unterminated = b"-----BEGIN CERTIFICATE-----\nAAAA\n";
        assert!(parse_pem(unterminated).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_pem(&bytes);
        }

        #[test]
        fn arbitrary_der_in_a_pem_frame_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let b64 = base64_encode(&bytes);
            let pem = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
            let _ = parse_pem(pem.as_bytes());
        }
    }

    fn base64_encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
