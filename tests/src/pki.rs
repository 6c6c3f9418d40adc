//! A throw-away PKI for mutual-TLS tests.
//!
//! [`TestPki::generate`] makes, with `rcgen` (ECDSA P-256 keys, valid from yesterday for
//! one year):
//!
//! | material | signed by | names | file (in [`TestPki::dir`]) |
//! | --- | --- | --- | --- |
//! | test CA | itself | CN `Vitalbridge Test CA` | `ca.pem` (+ `ca-key.pem`) |
//! | trusted server cert | test CA | DNS `localhost`, IP `127.0.0.1` | `server.pem`, `server-key.pem` |
//! | client cert | test CA | CN [`CLIENT_CN`] | `client.pem`, `client-key.pem` |
//! | rogue CA | itself | CN `Rogue Test CA` | `rogue-ca.pem` |
//! | rogue server cert | rogue CA | DNS `localhost`, IP `127.0.0.1` | `rogue-server.pem`, `rogue-server-key.pem` |
//! | rogue client cert | rogue CA | CN `rogue-client` | `rogue-client.pem`, `rogue-client-key.pem` |
//! | wrong-name server cert | test CA | DNS `wrong.example` only | `wrong-name-server.pem`, `wrong-name-server-key.pem` |
//!
//! Every private key file is written with mode 0600 (the gateway refuses world-readable
//! keys). The directory is a [`tempfile::TempDir`] owned by the `TestPki` and removed when
//! it is dropped, so keep the `TestPki` alive as long as anything reads the files.
//!
//! The rustls configs built here always use [`ring_provider`] explicitly
//! (`builder_with_provider`) and never depend on a process-wide default provider:
//!
//! ```no_run
//! use vitalbridge_tests::pki::{ServerIdentity, TestPki};
//! let pki = TestPki::generate();
//! let server = pki.server_config(ServerIdentity::Trusted); // requires a client cert from the test CA
//! let client = pki.client_config(); // trusts the test CA, presents the client cert
//! let gateway_ca_file = pki.ca_cert_path();
//! ```

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tempfile::TempDir;

/// Common name of the trusted client certificate (the "gateway" identity).
pub const CLIENT_CN: &str = "vitalbridge-gateway-test";

/// Which certificate a test server presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerIdentity {
    /// Signed by the test CA, for `localhost` and `127.0.0.1`: a client trusting the test CA
    /// accepts it.
    Trusted,
    /// Signed by the rogue CA, for `localhost` and `127.0.0.1`: a client trusting only the
    /// test CA must reject it (unknown issuer).
    RogueCa,
    /// Signed by the test CA but only for `wrong.example`: a client connecting to
    /// `localhost`/`127.0.0.1` must reject it (name mismatch).
    WrongName,
}

/// Paths of one certificate and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The leaf certificate (PEM, one `CERTIFICATE` block).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8), mode 0600.
    pub key: PathBuf,
}

/// One generated leaf: its files plus the DER forms (so configs need no file I/O).
struct Leaf {
    files: CertFiles,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Leaf {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }
}

/// A test CA, a rogue CA and the leaf certificates described in the module docs, as PEM
/// files in a temporary directory it owns.
pub struct TestPki {
    /// Owns the files; removed on drop.
    dir: TempDir,
    /// Test CA certificate path.
    ca_path: PathBuf,
    /// Test CA certificate DER (the only trust anchor of both sides).
    ca_der: CertificateDer<'static>,
    /// Rogue CA certificate path.
    rogue_ca_path: PathBuf,
    /// Kept so [`TestPki::issue_client_cert`] can sign more certificates on demand.
    ca_cert: rcgen::Certificate,
    /// The test CA's key, for the same reason.
    ca_key: KeyPair,
    server: Leaf,
    rogue_server: Leaf,
    wrong_name_server: Leaf,
    client: Leaf,
    rogue_client: Leaf,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// The crypto provider every config in this crate uses: rustls' `ring` provider.
pub fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every `CERTIFICATE` block of a PEM file.
pub fn load_certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(io::Error::other(format!(
            "{}: no CERTIFICATE in file",
            path.display()
        )));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365);
}

fn make_ca(cn: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("generate CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "Vitalbridge tests");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params);
    let cert = params.self_signed(&key).expect("self-sign CA");
    (cert, key)
}

/// Signs a leaf for `sans` (DNS names or IP literals) with `cn`, for server or client use.
fn make_leaf(
    dir: &Path,
    stem: &str,
    cn: &str,
    sans: &[&str],
    eku: ExtendedKeyUsagePurpose,
    issuer: &rcgen::Certificate,
    issuer_key: &KeyPair,
) -> Leaf {
    let key = KeyPair::generate().expect("generate leaf key");
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).expect("leaf params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params);
    let cert = params
        .signed_by(&key, issuer, issuer_key)
        .expect("sign leaf");
    let files = CertFiles {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}-key.pem")),
    };
    write_public(&files.cert, cert.pem().as_bytes()).expect("write cert");
    write_private(&files.key, key.serialize_pem().as_bytes()).expect("write key");
    Leaf {
        files,
        cert_der: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

fn write_public(path: &Path, data: &[u8]) -> io::Result<()> {
    fs::write(path, data)
}

/// Writes a key file created with mode 0600 from the start (never briefly world-readable).
fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

impl TestPki {
    /// Generates all material into a fresh temporary directory.
    ///
    /// Panics on failure (this is test scaffolding: a failure here is a broken environment).
    pub fn generate() -> TestPki {
        let dir = tempfile::Builder::new()
            .prefix("vitalbridge-pki-")
            .tempdir()
            .expect("create PKI tempdir");
        let d = dir.path();

        let (ca_cert, ca_key) = make_ca("Vitalbridge Test CA");
        let ca_path = d.join("ca.pem");
        write_public(&ca_path, ca_cert.pem().as_bytes()).expect("write ca.pem");
        write_private(&d.join("ca-key.pem"), ca_key.serialize_pem().as_bytes())
            .expect("write ca-key.pem");

        let (rogue_cert, rogue_key) = make_ca("Rogue Test CA");
        let rogue_ca_path = d.join("rogue-ca.pem");
        write_public(&rogue_ca_path, rogue_cert.pem().as_bytes()).expect("write rogue-ca.pem");

        let local = ["localhost", "127.0.0.1"];
        let server = make_leaf(
            d,
            "server",
            "localhost",
            &local,
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca_cert,
            &ca_key,
        );
        let rogue_server = make_leaf(
            d,
            "rogue-server",
            "localhost",
            &local,
            ExtendedKeyUsagePurpose::ServerAuth,
            &rogue_cert,
            &rogue_key,
        );
        let wrong_name_server = make_leaf(
            d,
            "wrong-name-server",
            "wrong.example",
            &["wrong.example"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca_cert,
            &ca_key,
        );
        let client = make_leaf(
            d,
            "client",
            CLIENT_CN,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            &ca_cert,
            &ca_key,
        );
        let rogue_client = make_leaf(
            d,
            "rogue-client",
            "rogue-client",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            &rogue_cert,
            &rogue_key,
        );

        TestPki {
            ca_der: ca_cert.der().clone(),
            dir,
            ca_path,
            rogue_ca_path,
            ca_cert,
            ca_key,
            server,
            rogue_server,
            wrong_name_server,
            client,
            rogue_client,
        }
    }

    /// The directory holding every file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The test CA certificate (PEM): the trust anchor to configure on the gateway.
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_path
    }

    /// The rogue CA certificate (PEM).
    pub fn rogue_ca_cert_path(&self) -> &Path {
        &self.rogue_ca_path
    }

    /// The trusted client certificate and key (CN [`CLIENT_CN`]): give these to the gateway.
    pub fn client_files(&self) -> &CertFiles {
        &self.client.files
    }

    /// A client certificate and key signed by the rogue CA (servers must refuse it).
    pub fn rogue_client_files(&self) -> &CertFiles {
        &self.rogue_client.files
    }

    /// The certificate and key a server presents for `identity`.
    pub fn server_files(&self, identity: ServerIdentity) -> &CertFiles {
        &self.server_leaf(identity).files
    }

    fn server_leaf(&self, identity: ServerIdentity) -> &Leaf {
        match identity {
            ServerIdentity::Trusted => &self.server,
            ServerIdentity::RogueCa => &self.rogue_server,
            ServerIdentity::WrongName => &self.wrong_name_server,
        }
    }

    /// The test CA certificate in DER.
    pub fn ca_cert_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }

    /// A root store holding only the test CA.
    pub fn ca_roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .expect("test CA is a valid trust anchor");
        roots
    }

    /// A server config presenting `identity`'s certificate and REQUIRING a client
    /// certificate that chains to the test CA (anonymous clients fail the handshake).
    /// TLS 1.2 and 1.3; ALPN `http/1.1`.
    pub fn server_config(&self, identity: ServerIdentity) -> Arc<ServerConfig> {
        let provider = ring_provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.ca_roots()),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        let leaf = self.server_leaf(identity);
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![leaf.cert_der.clone()], leaf.key())
            .expect("server cert and key match");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    /// A client config trusting only the test CA and presenting the trusted client cert.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client_config_with(Some(&self.client))
    }

    /// A client config trusting only the test CA and presenting NO client certificate.
    pub fn client_config_without_cert(&self) -> Arc<ClientConfig> {
        self.client_config_with(None)
    }

    /// A client config trusting the test CA but presenting the rogue client certificate.
    pub fn client_config_with_rogue_cert(&self) -> Arc<ClientConfig> {
        self.client_config_with(Some(&self.rogue_client))
    }

    fn client_config_with(&self, leaf: Option<&Leaf>) -> Arc<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(self.ca_roots());
        let cfg = match leaf {
            Some(leaf) => builder
                .with_client_auth_cert(vec![leaf.cert_der.clone()], leaf.key())
                .expect("client cert and key match"),
            None => builder.with_no_client_auth(),
        };
        Arc::new(cfg)
    }

    /// Issues a leaf signed by the test CA with serial number `serial`, valid from
    /// `not_before` to `not_after`: a server certificate for `localhost`/`127.0.0.1` when
    /// `server`, else a client certificate with CN [`CLIENT_CN`]. Written as `{stem}.pem` /
    /// `{stem}-key.pem` in [`TestPki::dir`] (key mode 0600).
    pub fn issue_leaf(
        &self,
        stem: &str,
        server: bool,
        serial: u64,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> CertFiles {
        let key = KeyPair::generate().expect("generate leaf key");
        let sans: Vec<String> = if server {
            vec!["localhost".into(), "127.0.0.1".into()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(sans).expect("leaf params");
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            if server { "localhost" } else { CLIENT_CN },
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("sign leaf");
        let files = CertFiles {
            cert: self.dir.path().join(format!("{stem}.pem")),
            key: self.dir.path().join(format!("{stem}-key.pem")),
        };
        write_public(&files.cert, cert.pem().as_bytes()).expect("write cert");
        write_private(&files.key, key.serialize_pem().as_bytes()).expect("write key");
        files
    }

    /// A CRL of the test CA revoking the certificates with `serials`, written (replaced) as
    /// `{stem}.pem` in [`TestPki::dir`]; `number` is its CRL number.
    pub fn write_crl(&self, stem: &str, number: u64, serials: &[u64]) -> PathBuf {
        let now = time::OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(7),
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: now - time::Duration::hours(1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.ca_cert, &self.ca_key)
            .expect("sign CRL");
        let path = self.dir.path().join(format!("{stem}.pem"));
        let tmp = self.dir.path().join(format!("{stem}.pem.tmp"));
        fs::write(&tmp, crl.pem().expect("CRL PEM")).expect("write CRL");
        fs::rename(&tmp, &path).expect("replace CRL");
        path
    }

    /// A server config presenting `server`'s certificate, requiring a client certificate
    /// that chains to the rogue CA (`trust_rogue_ca`) or the test CA, and, with `crl`,
    /// refusing a client certificate on that CRL. TLS 1.2 and 1.3.
    pub fn server_config_with(
        &self,
        server: &CertFiles,
        trust_rogue_ca: bool,
        crl: Option<&Path>,
    ) -> Arc<ServerConfig> {
        let provider = ring_provider();
        let roots = if trust_rogue_ca {
            let mut roots = RootCertStore::empty();
            for c in load_certs(&self.rogue_ca_path).expect("rogue CA") {
                roots.add(c).expect("rogue CA is a trust anchor");
            }
            roots
        } else {
            self.ca_roots()
        };
        let mut verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        if let Some(crl) = crl {
            let crls = rustls_pki_types::CertificateRevocationListDer::pem_file_iter(crl)
                .expect("CRL file")
                .collect::<Result<Vec<_>, _>>()
                .expect("CRL PEM");
            verifier = verifier.with_crls(crls);
        }
        let verifier = verifier.build().expect("client verifier");
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                load_certs(&server.cert).expect("server cert"),
                load_key(&server.key).expect("server key"),
            )
            .expect("server cert and key match");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    /// Issues one more client certificate signed by the test CA, written as
    /// `{stem}.pem` / `{stem}-key.pem` in [`TestPki::dir`] (key mode 0600).
    pub fn issue_client_cert(&self, stem: &str, cn: &str) -> CertFiles {
        make_leaf(
            self.dir.path(),
            stem,
            cn,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            &self.ca_cert,
            &self.ca_key,
        )
        .files
    }
}
