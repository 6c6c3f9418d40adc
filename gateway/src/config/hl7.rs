//! `[sources.hl7]` (the MLLP listener for monitor gateways) and `[uplink.hl7]` (ORU^R01 to an
//! interface engine): their tables, defaults and checks.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::validate::{check_readable_key, Text};
use super::{err, ConfigError, TlsFiles};
use crate::limits::{MAX_CODE_LEN, MAX_NAME_LEN, MAX_PATH_LEN, MAX_URL_LEN};

/// `[sources.hl7]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7SourceConfig {
    /// Address and port to listen on for MLLP connections, e.g. `0.0.0.0:2575`.
    pub listen: SocketAddr,
    /// IANA time zone of HL7 times sent without an offset (e.g. `Europe/Berlin`). Unset: the
    /// host's.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Largest accepted message (one MLLP frame), in bytes. A larger one is answered AR and
    /// the connection stays usable.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Most connections at once; further ones are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Close a connection that sent nothing for this many seconds.
    #[serde(default = "default_idle_timeout_s")]
    pub idle_timeout_s: u64,
    /// Close a connection whose message has started but not ended for this many seconds.
    #[serde(default = "default_read_timeout_s")]
    pub read_timeout_s: u64,
    /// Vendor placeholder values that mean "no value" in OBX-5 (decimal numbers as the
    /// vendor's interface specification documents them, e.g. `"-999"`). The IEEE 11073
    /// special values (NaN 8388607, NRes -8388608, ±INF) always are.
    #[serde(default)]
    pub no_value: Vec<String>,
    /// TLS for the listener; absent: plain TCP (a closed network only).
    #[serde(default)]
    pub tls: Option<ListenerTls>,
}

fn default_max_message_bytes() -> usize {
    1024 * 1024
}
fn default_max_connections() -> usize {
    64
}
fn default_idle_timeout_s() -> u64 {
    3600
}
fn default_read_timeout_s() -> u64 {
    30
}

/// `[sources.hl7.tls]`: the listener's certificate, and for mutual TLS the CA its clients'
/// certificates must be signed by.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// The listener's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM); must not be readable by group or others.
    pub key: PathBuf,
    /// With it, mutual TLS: only clients with a certificate signed by this CA connect.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM) of `client_ca`: a client certificate on one is
    /// refused. Read again when a file changes.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
}

/// `[uplink.hl7]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7UplinkConfig {
    /// The interface engine's MLLP listener, `host:port`.
    pub address: String,
    /// TLS to the engine (`ca`; with `cert` and `key`, mutual TLS). Absent: set `plaintext`.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Send without TLS (a closed network only). Must be set explicitly when `tls` is absent.
    #[serde(default)]
    pub plaintext: bool,
    /// MSH-3.
    #[serde(default = "default_sending_application")]
    pub sending_application: String,
    /// MSH-4.
    #[serde(default)]
    pub sending_facility: String,
    /// MSH-5.
    #[serde(default)]
    pub receiving_application: String,
    /// MSH-6.
    #[serde(default)]
    pub receiving_facility: String,
    /// Connections to the engine at once; each carries one message at a time.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// How long to wait for the engine's ACK (and to connect), in seconds.
    #[serde(default = "default_ack_timeout_s")]
    pub timeout_s: u64,
}

fn default_sending_application() -> String {
    "VITALBRIDGE".to_owned()
}
fn default_connections() -> usize {
    1
}
fn default_ack_timeout_s() -> u64 {
    30
}

/// Every string and path of the two tables, with its key and limit.
pub(super) fn texts(
    source: Option<&Hl7SourceConfig>,
    uplink: Option<&Hl7UplinkConfig>,
    all: &mut Vec<Text>,
) {
    let path = |k: &str, p: &PathBuf| (k.to_owned(), p.as_os_str().len(), MAX_PATH_LEN);
    if let Some(s) = source {
        if let Some(z) = &s.time_zone {
            all.push(("sources.hl7.time_zone".into(), z.len(), MAX_CODE_LEN));
        }
        for (i, v) in s.no_value.iter().enumerate() {
            all.push((format!("sources.hl7.no_value[{i}]"), v.len(), MAX_CODE_LEN));
        }
        if let Some(t) = &s.tls {
            all.push(path("sources.hl7.tls.cert", &t.cert));
            all.push(path("sources.hl7.tls.key", &t.key));
            for crl in &t.crls {
                all.push(path("sources.hl7.tls.crls", crl));
            }
            if let Some(ca) = &t.client_ca {
                all.push(path("sources.hl7.tls.client_ca", ca));
            }
        }
    }
    if let Some(u) = uplink {
        all.push(("uplink.hl7.address".into(), u.address.len(), MAX_URL_LEN));
        for (k, v) in [
            ("uplink.hl7.sending_application", &u.sending_application),
            ("uplink.hl7.sending_facility", &u.sending_facility),
            ("uplink.hl7.receiving_application", &u.receiving_application),
            ("uplink.hl7.receiving_facility", &u.receiving_facility),
        ] {
            all.push((k.into(), v.len(), MAX_NAME_LEN));
        }
        if let Some(t) = &u.tls {
            all.push(path("uplink.hl7.tls.ca", &t.ca));
            for crl in &t.crls {
                all.push(path("uplink.hl7.tls.crls", crl));
            }
            for (k, v) in [
                ("uplink.hl7.tls.cert", &t.cert),
                ("uplink.hl7.tls.key", &t.key),
            ] {
                if let Some(v) = v {
                    all.push(path(k, v));
                }
            }
        }
    }
}

/// Whether `text` is a plain decimal number such as `-999` or `9999.0`: an optional sign,
/// digits with at most one point, at most 18 digits (no exponent).
fn is_plain_decimal(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let count = digits.bytes().filter(u8::is_ascii_digit).count();
    (1..=18).contains(&count)
        && digits.bytes().filter(|&b| b == b'.').count() <= 1
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// The checks of `[sources.hl7]`.
pub(super) fn validate_source(s: &Hl7SourceConfig, problems: &mut Vec<ConfigError>) {
    for (i, v) in s.no_value.iter().enumerate() {
        if !is_plain_decimal(v.trim()) {
            problems.push(err(
                &format!("sources.hl7.no_value[{i}]"),
                "must be a decimal number, e.g. \"-999\"",
            ));
        }
    }
    if let Some(Err(e)) = s.time_zone.as_deref().map(jiff::tz::TimeZone::get) {
        problems.push(err(
            "sources.hl7.time_zone",
            format!("not a time zone of this host's tz database ({e}); e.g. \"Europe/Berlin\""),
        ));
    }
    if !(1024..=64 * 1024 * 1024).contains(&s.max_message_bytes) {
        problems.push(err(
            "sources.hl7.max_message_bytes",
            "must be between 1024 and 67108864",
        ));
    }
    if !(1..=4096).contains(&s.max_connections) {
        problems.push(err(
            "sources.hl7.max_connections",
            "must be between 1 and 4096",
        ));
    }
    if !(1..=86_400).contains(&s.idle_timeout_s) {
        problems.push(err(
            "sources.hl7.idle_timeout_s",
            "must be between 1 and 86400",
        ));
    }
    if !(1..=3600).contains(&s.read_timeout_s) {
        problems.push(err(
            "sources.hl7.read_timeout_s",
            "must be between 1 and 3600",
        ));
    }
    if let Some(t) = &s.tls {
        check_readable_key("sources.hl7.tls.cert", &t.cert, false, problems);
        check_readable_key("sources.hl7.tls.key", &t.key, true, problems);
        for (i, crl) in t.crls.iter().enumerate() {
            check_readable_key(&format!("sources.hl7.tls.crls[{i}]"), crl, false, problems);
        }
        if !t.crls.is_empty() && t.client_ca.is_none() {
            problems.push(err(
                "sources.hl7.tls.crls",
                "needs client_ca: the CRLs are of the CA that signs the clients' certificates",
            ));
        }
        if let Some(ca) = &t.client_ca {
            check_readable_key("sources.hl7.tls.client_ca", ca, false, problems);
        }
    }
}

/// The host and port of `uplink.hl7.address`.
pub fn split_address(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && port != 0).then(|| (host.to_owned(), port))
}

/// The checks of `[uplink.hl7]`.
pub(super) fn validate_uplink(u: &Hl7UplinkConfig, problems: &mut Vec<ConfigError>) {
    if split_address(&u.address).is_none() {
        problems.push(err("uplink.hl7.address", "must be host:port"));
    }
    match (&u.tls, u.plaintext) {
        (None, false) => problems.push(err(
            "uplink.hl7",
            "give a [uplink.hl7.tls] table, or set plaintext = true for a closed network",
        )),
        (Some(_), true) => problems.push(err(
            "uplink.hl7.plaintext",
            "must not be set together with [uplink.hl7.tls]",
        )),
        _ => {}
    }
    if let Some(t) = &u.tls {
        check_readable_key("uplink.hl7.tls.ca", &t.ca, false, problems);
        for (i, crl) in t.crls.iter().enumerate() {
            check_readable_key(&format!("uplink.hl7.tls.crls[{i}]"), crl, false, problems);
        }
        match (&t.cert, &t.key) {
            (Some(c), Some(k)) => {
                check_readable_key("uplink.hl7.tls.cert", c, false, problems);
                check_readable_key("uplink.hl7.tls.key", k, true, problems);
            }
            (None, None) => {}
            _ => problems.push(err("uplink.hl7.tls", "give both cert and key, or neither")),
        }
    }
    if u.sending_application.is_empty() {
        problems.push(err("uplink.hl7.sending_application", "must not be empty"));
    }
    if !(1..=16).contains(&u.connections) {
        problems.push(err("uplink.hl7.connections", "must be between 1 and 16"));
    }
    if !(1..=600).contains(&u.timeout_s) {
        problems.push(err("uplink.hl7.timeout_s", "must be between 1 and 600"));
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Destination};

    fn problems(toml: &str) -> Vec<String> {
        match Config::from_toml(toml).unwrap().validate() {
            Ok(()) => Vec::new(),
            Err(p) => p.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_minimal_hl7_source_config_is_valid_and_uses_the_file_uplink() {
        let c = Config::from_toml(
            "[gateway]\ndata_dir = \"/tmp/vb-hl7-test\"\n[sources.hl7]\nlisten = \"127.0.0.1:2575\"\n[ops.http]\nlisten = \"127.0.0.1:8642\"\n",
        )
        .unwrap();
        let s = c.sources.hl7.as_ref().unwrap();
        assert_eq!(s.max_message_bytes, 1024 * 1024);
        assert_eq!(s.read_timeout_s, 30);
        assert!(s.tls.is_none() && s.time_zone.is_none() && s.no_value.is_empty());
        assert!(matches!(
            c.uplink.destinations()[..],
            [Destination::File(_)]
        ));
        let p: Vec<String> = c
            .validate()
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .filter(|p| p.contains("hl7"))
            .collect();
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn bad_hl7_source_settings_are_named_by_key() {
        let p = problems(
            "[sources.hl7]\nlisten = \"127.0.0.1:0\"\ntime_zone = \"Mars/Olympus\"\nmax_message_bytes = 10\nmax_connections = 0\nidle_timeout_s = 0\nread_timeout_s = 0\nno_value = [\"minus nine\"]\n[sources.hl7.tls]\ncert = \"/nonexistent.pem\"\nkey = \"/nonexistent.key\"\n",
        );
        for key in [
            "sources.hl7.time_zone",
            "sources.hl7.max_message_bytes",
            "sources.hl7.max_connections",
            "sources.hl7.idle_timeout_s",
            "sources.hl7.read_timeout_s",
            "sources.hl7.no_value[0]",
            "sources.hl7.tls.cert",
            "sources.hl7.tls.key",
        ] {
            assert!(p.iter().any(|e| e.starts_with(key)), "{key}: {p:?}");
        }
        assert!(
            Config::from_toml("[sources.hl7]\nlisten = \"127.0.0.1:0\"\nunknown = 1\n").is_err()
        );
    }

    #[test]
    fn the_hl7_uplink_needs_tls_or_an_explicit_plaintext_and_goes_beside_the_others() {
        let base = "[uplink.hl7]\naddress = \"engine.example.org:6661\"\n";
        let p = problems(base);
        assert!(p.iter().any(|e| e.contains("plaintext = true")), "{p:?}");
        assert!(problems(&format!("{base}plaintext = true\n"))
            .iter()
            .all(|e| !e.contains("hl7")));
        let p = problems(&format!("{base}plaintext = true\n[uplink.fhir]\nbase_url = \"https://f\"\nca = \"/c\"\ncert = \"/c\"\nkey = \"/k\"\n"));
        assert!(p.iter().all(|e| !e.contains("exactly one")), "{p:?}");
        let p = problems("[uplink.hl7]\naddress = \"no-port\"\nplaintext = true\nconnections = 0\ntimeout_s = 0\nsending_application = \"\"\n");
        for key in [
            "uplink.hl7.address",
            "uplink.hl7.connections",
            "uplink.hl7.timeout_s",
            "uplink.hl7.sending_application",
        ] {
            assert!(p.iter().any(|e| e.starts_with(key)), "{key}: {p:?}");
        }
        let c = Config::from_toml(&format!("{base}plaintext = true\n")).unwrap();
        assert!(matches!(c.uplink.destinations()[..], [Destination::Hl7(_)]));
        let both = Config::from_toml(&format!("{base}plaintext = true\n[uplink.file]\n")).unwrap();
        let names: Vec<&str> = both
            .uplink
            .destinations()
            .iter()
            .map(|d| d.name())
            .collect();
        assert_eq!(names, ["file", "hl7"]);
    }
}
