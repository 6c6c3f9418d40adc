//! `[uplink.mqtt]` and `[uplink.kafka]`: the streaming destinations, their defaults and
//! their checks (called from [`Config::validate`] and [`Config::texts`]).
//!
//! A topic template is literal text with fields in braces: `{gateway}`, `{device}`,
//! `{patient}`, `{code}` ([`TopicField`]). Anything else in braces is refused by name.

use std::path::PathBuf;

use serde::Deserialize;

use super::validate::{check_private_key, check_readable, Text};
use super::{err, ConfigError, TlsFiles};
use crate::limits::{MAX_CODE_LEN, MAX_ID_LEN, MAX_PATH_LEN, MAX_TOPIC_LEN, MAX_URL_LEN};

/// What one message (MQTT) carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamPayload {
    /// One Observation per message (FHIR R4 JSON).
    Observation,
    /// One transaction Bundle per batch and topic: the Devices and Observations, each a
    /// conditional create, as the FHIR uplink sends them.
    Bundle,
}

/// Which key a Kafka record gets (and so which partition it lands in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaKey {
    /// The patient's identifier (`system|value`, or the reference); the device's id for a
    /// reading without a patient. Each patient's readings stay in order in one partition.
    Patient,
    /// The device's id.
    Device,
}

/// `[uplink.mqtt]`: observations published to an MQTT broker (QoS 1, MQTT 5, mutual TLS).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttUplinkConfig {
    /// Broker URL: `mqtts://host:8883`. `mqtt://` (no TLS) only to a loopback host.
    pub url: String,
    /// MQTT client id; stable, since the broker keeps the persistent session under it, and
    /// different from `[sources.mqtt]`'s. Default: `vitalbridge-<gateway id>-uplink`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Topic template: fields `{gateway}`, `{device}`, `{patient}`, `{code}` (the MDC code).
    /// `{patient}` puts a patient identifier in the topic, where broker logs and ACLs see it.
    #[serde(default = "default_mqtt_topic")]
    pub topic: String,
    /// `observation` (one Observation per message) or `bundle` (one Bundle per batch and topic).
    #[serde(default = "default_payload")]
    pub payload: StreamPayload,
    /// Most publishes sent and not yet acknowledged (PUBACK) at once; the broker's
    /// `Receive Maximum` lowers it.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u16,
    /// Keep-alive interval in seconds.
    #[serde(default = "default_mqtt_keep_alive_s")]
    pub keep_alive_s: u16,
    /// How long the broker keeps the session (and so its packet ids) after a disconnect, in
    /// seconds (MQTT 5 Session Expiry Interval).
    #[serde(default = "default_session_expiry_s")]
    pub session_expiry_s: u32,
    /// MQTT 5 Message Expiry Interval, in seconds: a message no subscriber took within it is
    /// dropped by the broker. Unset: messages do not expire.
    #[serde(default)]
    pub message_expiry_s: Option<u32>,
    /// How long a batch waits for its acknowledgements (and a connection attempt), in seconds.
    #[serde(default = "default_stream_timeout_s")]
    pub timeout_s: u64,
    /// TLS to the broker (required for `mqtts://`); with `cert` and `key`, mutual TLS.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
}

fn default_mqtt_topic() -> String {
    "vitalbridge/{gateway}/observations/{code}".to_owned()
}
fn default_payload() -> StreamPayload {
    StreamPayload::Observation
}
fn default_max_in_flight() -> u16 {
    64
}
fn default_mqtt_keep_alive_s() -> u16 {
    30
}
fn default_session_expiry_s() -> u32 {
    24 * 3600
}
fn default_stream_timeout_s() -> u64 {
    30
}

/// `[uplink.kafka]`: observations produced to a Kafka topic, one record per Observation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaUplinkConfig {
    /// Bootstrap brokers, `host:port` each.
    pub bootstrap: Vec<String>,
    /// The topic (Kafka's rules: 1 to 249 of `a-z A-Z 0-9 . _ -`). It must exist.
    #[serde(default = "default_kafka_topic")]
    pub topic: String,
    /// Record key: `patient` (the device for readings without one) or `device`.
    #[serde(default = "default_kafka_key")]
    pub key: KafkaKey,
    /// How long one produce request may take, in seconds.
    #[serde(default = "default_stream_timeout_s")]
    pub timeout_s: u64,
    /// TLS to the brokers; with `cert` and `key`, mutual TLS. Required unless every
    /// bootstrap broker is on this machine (loopback).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// SASL/SCRAM authentication.
    #[serde(default)]
    pub sasl: Option<KafkaSaslConfig>,
}

fn default_kafka_topic() -> String {
    "vitalbridge.observations".to_owned()
}
fn default_kafka_key() -> KafkaKey {
    KafkaKey::Patient
}

/// `[uplink.kafka.sasl]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSaslConfig {
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default = "default_sasl_mechanism")]
    pub mechanism: String,
    /// The SCRAM user name.
    pub username: String,
    /// A file holding the password (one line); must not be readable by group or others.
    pub password_file: PathBuf,
}

fn default_sasl_mechanism() -> String {
    "SCRAM-SHA-512".to_owned()
}

/// A field of a topic template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicField {
    /// The gateway id.
    Gateway,
    /// The device's id.
    Device,
    /// The patient's identifier value (`unbound` without a patient).
    Patient,
    /// The metric's MDC code.
    Code,
}

/// One piece of a parsed topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPart {
    /// Text copied as it is.
    Literal(String),
    /// A field, filled in per reading.
    Field(TopicField),
}

/// Parses a topic template, or says which field is unknown or which brace is unmatched.
pub(crate) fn parse_topic_template(template: &str) -> Result<Vec<TopicPart>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("has a '}' without its '{'".to_owned());
        }
        if open > 0 {
            parts.push(TopicPart::Literal(rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| "has a '{' without its '}'".to_owned())?;
        let field = match &after[..close] {
            "gateway" => TopicField::Gateway,
            "device" => TopicField::Device,
            "patient" => TopicField::Patient,
            "code" => TopicField::Code,
            other => {
                let shown: String = other.chars().take(MAX_CODE_LEN).collect();
                return Err(format!(
                    "unknown field {{{shown}}}: the fields are {{gateway}}, {{device}}, {{patient}} and {{code}}"
                ));
            }
        };
        parts.push(TopicPart::Field(field));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(TopicPart::Literal(rest.to_owned()));
    }
    Ok(parts)
}

/// Whether `host` is this machine (a loopback address or `localhost`).
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Splits `host:port` (a bracketed IPv6 host allowed); `None` when it is not that.
pub fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    (!host.is_empty() && !host.contains(['/', ' '])).then_some((host, port))
}

/// Whether `topic` is a Kafka topic name.
pub fn valid_kafka_topic(topic: &str) -> bool {
    (1..=249).contains(&topic.len())
        && topic != "."
        && topic != ".."
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

pub(super) fn tls_texts(key: &str, tls: &TlsFiles, all: &mut Vec<Text>) {
    all.push((format!("{key}.ca"), tls.ca.as_os_str().len(), MAX_PATH_LEN));
    for (field, value) in [("cert", &tls.cert), ("key", &tls.key)] {
        if let Some(value) = value {
            all.push((
                format!("{key}.{field}"),
                value.as_os_str().len(),
                MAX_PATH_LEN,
            ));
        }
    }
}

/// The strings of `[uplink.mqtt]` and `[uplink.kafka]`, for the length check.
pub(super) fn texts(
    mqtt: Option<&MqttUplinkConfig>,
    kafka: Option<&KafkaUplinkConfig>,
    all: &mut Vec<Text>,
) {
    if let Some(m) = mqtt {
        all.push(("uplink.mqtt.url".into(), m.url.len(), MAX_URL_LEN));
        if let Some(id) = &m.client_id {
            all.push(("uplink.mqtt.client_id".into(), id.len(), MAX_ID_LEN));
        }
        all.push(("uplink.mqtt.topic".into(), m.topic.len(), MAX_TOPIC_LEN));
        if let Some(tls) = &m.tls {
            tls_texts("uplink.mqtt.tls", tls, all);
        }
    }
    if let Some(k) = kafka {
        for (i, b) in k.bootstrap.iter().enumerate() {
            all.push((format!("uplink.kafka.bootstrap[{i}]"), b.len(), MAX_URL_LEN));
        }
        all.push(("uplink.kafka.topic".into(), k.topic.len(), MAX_TOPIC_LEN));
        if let Some(tls) = &k.tls {
            tls_texts("uplink.kafka.tls", tls, all);
        }
        if let Some(s) = &k.sasl {
            all.push((
                "uplink.kafka.sasl.mechanism".into(),
                s.mechanism.len(),
                MAX_CODE_LEN,
            ));
            all.push((
                "uplink.kafka.sasl.username".into(),
                s.username.len(),
                MAX_ID_LEN,
            ));
            all.push((
                "uplink.kafka.sasl.password_file".into(),
                s.password_file.as_os_str().len(),
                MAX_PATH_LEN,
            ));
        }
    }
}

/// Every path of the streaming destinations that may name a systemd credential.
pub(super) fn secret_paths<'a>(
    mqtt: Option<&'a mut MqttUplinkConfig>,
    kafka: Option<&'a mut KafkaUplinkConfig>,
    paths: &mut Vec<(&'static str, &'a mut PathBuf)>,
) {
    let tls = |keys: [&'static str; 3], tls: &'a mut TlsFiles, paths: &mut Vec<_>| {
        paths.push((keys[0], &mut tls.ca));
        if let Some(cert) = tls.cert.as_mut() {
            paths.push((keys[1], cert));
        }
        if let Some(key) = tls.key.as_mut() {
            paths.push((keys[2], key));
        }
    };
    if let Some(t) = mqtt.and_then(|m| m.tls.as_mut()) {
        tls(
            [
                "uplink.mqtt.tls.ca",
                "uplink.mqtt.tls.cert",
                "uplink.mqtt.tls.key",
            ],
            t,
            paths,
        );
    }
    if let Some(k) = kafka {
        if let Some(t) = k.tls.as_mut() {
            tls(
                [
                    "uplink.kafka.tls.ca",
                    "uplink.kafka.tls.cert",
                    "uplink.kafka.tls.key",
                ],
                t,
                paths,
            );
        }
        if let Some(s) = k.sasl.as_mut() {
            paths.push(("uplink.kafka.sasl.password_file", &mut s.password_file));
        }
    }
}

fn validate_tls(key: &str, tls: &TlsFiles, problems: &mut Vec<ConfigError>) {
    check_readable(&format!("{key}.ca"), &tls.ca, problems);
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(k)) => {
            check_readable(&format!("{key}.cert"), cert, problems);
            check_private_key(&format!("{key}.key"), k, problems);
        }
        (None, None) => {}
        _ => problems.push(err(
            key,
            "give both `cert` and `key` for mutual TLS, or neither",
        )),
    }
}

/// Checks `[uplink.mqtt]`.
pub(super) fn validate_mqtt(m: &MqttUplinkConfig, problems: &mut Vec<ConfigError>) {
    match url::Url::parse(&m.url) {
        Err(e) => problems.push(err(
            "uplink.mqtt.url",
            format!("not a valid URL ({e}): expected mqtts://host:port"),
        )),
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            if host.is_empty() {
                problems.push(err("uplink.mqtt.url", "has no host"));
            }
            match u.scheme() {
                "mqtts" => {
                    if m.tls.is_none() {
                        problems.push(err(
                            "uplink.mqtt.tls",
                            "mqtts:// needs an [uplink.mqtt.tls] table with at least `ca`",
                        ));
                    }
                }
                "mqtt" if is_loopback_host(host) => {}
                "mqtt" => problems.push(err(
                    "uplink.mqtt.url",
                    "mqtt:// sends patient data in clear: use mqtts:// (plain mqtt:// only to a loopback host)",
                )),
                other => problems.push(err(
                    "uplink.mqtt.url",
                    format!("scheme {other:?} is not mqtts (or mqtt to a loopback host)"),
                )),
            }
            if !u.path().is_empty() && u.path() != "/" {
                problems.push(err("uplink.mqtt.url", "must not have a path"));
            }
        }
    }
    match parse_topic_template(&m.topic) {
        Err(e) => problems.push(err("uplink.mqtt.topic", e)),
        Ok(parts) => {
            let literal: String = parts
                .iter()
                .filter_map(|p| match p {
                    TopicPart::Literal(s) => Some(s.as_str()),
                    TopicPart::Field(_) => None,
                })
                .collect();
            if parts.is_empty() {
                problems.push(err("uplink.mqtt.topic", "must not be empty"));
            } else if literal.contains(['+', '#', '\0']) {
                problems.push(err(
                    "uplink.mqtt.topic",
                    "must not contain '+', '#' (those are for subscriptions) or NUL",
                ));
            } else if m.topic.starts_with('$') {
                problems.push(err(
                    "uplink.mqtt.topic",
                    "must not start with '$' (broker topics)",
                ));
            }
        }
    }
    if let Some(id) = &m.client_id {
        if id.is_empty() {
            problems.push(err("uplink.mqtt.client_id", "must not be empty"));
        }
    }
    if m.max_in_flight == 0 {
        problems.push(err(
            "uplink.mqtt.max_in_flight",
            "must be between 1 and 65535",
        ));
    }
    if m.keep_alive_s < 5 {
        problems.push(err(
            "uplink.mqtt.keep_alive_s",
            "must be at least 5 seconds",
        ));
    }
    if m.message_expiry_s == Some(0) {
        problems.push(err(
            "uplink.mqtt.message_expiry_s",
            "must be at least 1 (leave it out for no expiry)",
        ));
    }
    if m.timeout_s == 0 || m.timeout_s > 600 {
        problems.push(err("uplink.mqtt.timeout_s", "must be between 1 and 600"));
    }
    if let Some(tls) = &m.tls {
        validate_tls("uplink.mqtt.tls", tls, problems);
    }
}

/// Checks `[uplink.kafka]`.
pub(super) fn validate_kafka(k: &KafkaUplinkConfig, problems: &mut Vec<ConfigError>) {
    if k.bootstrap.is_empty() {
        problems.push(err(
            "uplink.kafka.bootstrap",
            "list at least one broker as host:port",
        ));
    }
    let mut all_loopback = true;
    for (i, b) in k.bootstrap.iter().enumerate() {
        match split_host_port(b) {
            Some((host, _)) => all_loopback &= is_loopback_host(host),
            None => problems.push(err(
                &format!("uplink.kafka.bootstrap[{i}]"),
                "not a broker address: expected host:port (e.g. kafka-1.example.org:9093)",
            )),
        }
    }
    if k.tls.is_none() && !all_loopback {
        problems.push(err(
            "uplink.kafka.tls",
            "a broker beyond this machine needs [uplink.kafka.tls] (at least `ca`): patient data is not sent in clear",
        ));
    }
    if !valid_kafka_topic(&k.topic) {
        problems.push(err(
            "uplink.kafka.topic",
            "must be 1 to 249 of a-z, A-Z, 0-9, '.', '_' or '-'",
        ));
    }
    if k.timeout_s == 0 || k.timeout_s > 600 {
        problems.push(err("uplink.kafka.timeout_s", "must be between 1 and 600"));
    }
    if let Some(tls) = &k.tls {
        validate_tls("uplink.kafka.tls", tls, problems);
    }
    if let Some(s) = &k.sasl {
        if s.mechanism != "SCRAM-SHA-256" && s.mechanism != "SCRAM-SHA-512" {
            problems.push(err(
                "uplink.kafka.sasl.mechanism",
                "must be \"SCRAM-SHA-256\" or \"SCRAM-SHA-512\"",
            ));
        }
        if s.username.is_empty() {
            problems.push(err("uplink.kafka.sasl.username", "must not be empty"));
        }
        check_private_key(
            "uplink.kafka.sasl.password_file",
            &s.password_file,
            problems,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_templates_name_their_unknown_fields_and_unmatched_braces() {
        assert_eq!(
            parse_topic_template("rpm/{gateway}/{code}").unwrap(),
            vec![
                TopicPart::Literal("rpm/".into()),
                TopicPart::Field(TopicField::Gateway),
                TopicPart::Literal("/".into()),
                TopicPart::Field(TopicField::Code),
            ]
        );
        let e = parse_topic_template("rpm/{gateway}/{mrn}").unwrap_err();
        assert!(e.contains("unknown field {mrn}"), "{e}");
        assert!(parse_topic_template("rpm/{gateway").is_err());
        assert!(parse_topic_template("rpm/gateway}").is_err());
        assert_eq!(parse_topic_template("").unwrap(), vec![]);
    }

    #[test]
    fn kafka_topics_and_broker_addresses_follow_kafkas_rules() {
        assert!(valid_kafka_topic("vitalbridge.observations"));
        assert!(!valid_kafka_topic("obs/1"));
        assert!(!valid_kafka_topic(&"t".repeat(250)));
        assert_eq!(split_host_port("kafka-1:9093"), Some(("kafka-1", 9093)));
        assert_eq!(split_host_port("[::1]:9092"), Some(("[::1]", 9092)));
        assert_eq!(split_host_port("kafka-1"), None);
        assert_eq!(split_host_port("kafka://k:1"), None);
        assert!(is_loopback_host("127.0.0.1") && is_loopback_host("[::1]"));
        assert!(!is_loopback_host("10.0.0.1"));
    }
}
