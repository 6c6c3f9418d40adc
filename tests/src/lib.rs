//! Test harness for Vitalbridge end-to-end tests and benchmarks.
//!
//! - [`pki`]: a throw-away CA, server/client certificates (good, rogue-CA, wrong-name) as
//!   PEM files, and rustls configs built with the `ring` provider.
//! - [`mosquitto`]: a real mosquitto broker per test on a free loopback port, plus QoS 1
//!   publish and subscribe helpers.
//! - [`upstream`]: a FHIR R4 server over HTTPS with mutual TLS, conditional create, fault
//!   injection and assertions on what it stored.
//! - [`engine`]: a real FHIR R4 engine (Medplum's fhir-router in Node, validating) behind a
//!   mutual-TLS front end, searched through its own FHIR API.
//! - [`client`]: a minimal HTTPS client (hyper over tokio-rustls) for talking to the upstream
//!   from tests.
//! - [`gateway`]: runs the real `vitalbridge` binary as a child process (start, kill -9,
//!   restart, SIGTERM) and reads its log.
//! - [`ops`]: requests to the gateway's operations server (also from another loopback
//!   address), an independent Prometheus text parser, and headless Chromium for the status
//!   page.
//! - [`serial_link`]: a serial cable made of two pseudo-terminals, with noise injection and
//!   unplug/replug; [`serial_scenario`]: gateway configs and the device simulator process
//!   for serial tests.
//! - [`validator`]: runs the independent Python FHIR R4 validator (`tests/validate_fhir.py`)
//!   on files or on `serde_json::Value`s (e.g. what the upstream stored).
//!
//! - [`mllp`]: HL7 v2 over MLLP: a blocking sender, and the Python receiver standing in for
//!   an interface engine (`tests/mllp_receiver.py`, parsing with the independent `hl7`
//!   package).
//! - [`powerloss`]: a FUSE layer that keeps unsynced writes in memory and loses them on a
//!   simulated power cut (`tests/powerloss_fs.py`), mounted for a test.
//! - [`tmpfs`]: a small tmpfs of a test's own, to fill and grow (disk-full tests).
//! - [`oauth`]: a real OAuth 2.0 authorization server (`oidc-provider`, Node) and a FHIR
//!   front end checking its tokens, in front of the upstream.
//! - [`fixture`]: broker + upstream + gateway directory ([`fixture::Rig`], the set-up most
//!   end-to-end tests share), a publisher that retries until the broker acknowledges, and an
//!   exact reconciliation.
//!
//! - [`kafka`]: a real Kafka-protocol broker (tansu, prebuilt from PyPI) on S3 storage that
//!   outlives its restarts, and an independent kafka-python consumer.
//! - [`streams`]: the streaming destinations' peers: a client-certificate-only mosquitto
//!   with an ACL, and an independent paho-mqtt subscriber that validates every message.
//!
//! - [`ports`]: loopback ports for servers and the gateway's listeners, from below the
//!   kernel's ephemeral range so that none is handed out twice.
//!
//! Everything binds to 127.0.0.1 only.
#![warn(missing_docs)]

pub mod client;
pub mod engine;
pub mod fixture;
pub mod gateway;
pub mod kafka;
pub mod mllp;
pub mod mosquitto;
pub mod oauth;
pub mod ops;
pub mod pki;
pub mod ports;
pub mod powerloss;
pub mod scenario;
pub mod serial_link;
pub mod serial_scenario;
pub mod streams;
pub mod tmpfs;
pub mod upstream;
pub mod validator;
