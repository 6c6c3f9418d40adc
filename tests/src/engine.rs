//! A real FHIR R4 engine: Medplum's `@medplum/fhir-router` with its in-memory repository,
//! validating every resource it stores, behind a mutual-TLS front end
//! (`tests/fhir-engine/server.mjs`, run by Node). `tests/setup.sh` installs the npm packages
//! into `tests/fhir-engine/node_modules`.
//!
//! Unlike [`crate::upstream`], nothing here is ours but the TLS front end, the conditional
//! references and an index that narrows identifier searches to the resources holding the
//! value (see the headers of `server.mjs` and `repository.mjs`): searches go through the
//! engine's own matching, conditional creates through its own transaction processing, with
//! its own limits (a transaction with conditional creates is refused above 8 entries).
//!
//! ```no_run
//! # async fn demo() {
//! use vitalbridge_tests::{engine::Engine, pki::TestPki};
//! let pki = TestPki::generate();
//! let engine = Engine::start(&pki, None).await;
//! let found = engine.search("Observation", "identifier=urn%3Ax%7Cv").await;
//! assert!(found.is_empty());
//! # }
//! ```

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::client::HttpsClient;
use crate::pki::{ServerIdentity, TestPki};

/// The engine's directory: `server.mjs`, `package.json`, and `node_modules` once installed.
pub fn engine_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fhir-engine")
}

/// `node` (or `$NODE`) running `script` in the engine's directory. Panics (naming the fix)
/// when the packages are missing: the tests need them and are never skipped.
pub fn node(script: &str) -> Command {
    let dir = engine_dir();
    assert!(
        dir.join("node_modules/@medplum/fhir-router").is_dir(),
        "the FHIR engine is not installed in {}: run tests/setup.sh",
        dir.display()
    );
    let mut cmd = Command::new(std::env::var("NODE").unwrap_or_else(|_| "node".into()));
    cmd.current_dir(dir).arg(script);
    cmd
}

/// A running engine; killed on drop.
pub struct Engine {
    child: Child,
    port: u16,
    client: HttpsClient,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("port", &self.port).finish()
    }
}

impl Engine {
    /// Starts the engine on a free loopback port with the test PKI's trusted server
    /// certificate, requiring a client certificate from the test CA. `max_body_bytes`: the
    /// front end refuses larger requests with 413. Panics (naming the fix) when Node or the
    /// packages are missing: the test needs them and is never skipped.
    pub async fn start(pki: &TestPki, max_body_bytes: Option<usize>) -> Engine {
        let server = pki.server_files(ServerIdentity::Trusted);
        let mut cmd = node("server.mjs");
        cmd.arg("--cert")
            .arg(&server.cert)
            .arg("--key")
            .arg(&server.key)
            .arg("--client-ca")
            .arg(pki.ca_cert_path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(n) = max_body_bytes {
            cmd.arg("--max-body-bytes").arg(n.to_string());
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {:?} (install nodejs: tests/setup.sh): {e}",
                cmd.get_program()
            )
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            line
        });
        let line = tokio::time::timeout(Duration::from_secs(60), line)
            .await
            .expect("the FHIR engine did not start within 60 s")
            .expect("reader task");
        let port = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("the FHIR engine did not say its port: {line:?}"));
        Engine {
            child,
            port,
            client: HttpsClient::new(pki.client_config()),
        }
    }

    /// The FHIR base URL, `https://localhost:PORT/fhir`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}/fhir", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Node process's id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `(effectiveDateTime, stored at)` of every Observation the engine created, in the order
    /// it created them.
    pub async fn created(&self) -> Vec<(String, time::OffsetDateTime)> {
        let url = format!("https://localhost:{}/_created", self.port);
        let list: Value = match self.client.get(&url).await {
            Ok(r) => r.json().unwrap_or_default(),
            Err(_) => Value::Null,
        };
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|pair| {
                let effective = pair[0].as_str()?.to_owned();
                let ms = i128::from(pair[1].as_i64()?);
                let at = time::OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).ok()?;
                Some((effective, at))
            })
            .collect()
    }

    /// Every resource of `rtype` matching `query` (already encoded), through the engine's own
    /// search, following `next` links.
    pub async fn search(&self, rtype: &str, query: &str) -> Vec<Value> {
        let mut url = format!("{}/{rtype}?{query}&_count=1000", self.url());
        let mut out = Vec::new();
        loop {
            let resp = self
                .client
                .get(&url)
                .await
                .unwrap_or_else(|e| panic!("search {url}: {e}"));
            assert_eq!(resp.status, 200, "search {url}: {:?}", resp.json());
            let bundle = resp.json().expect("a searchset Bundle");
            for e in bundle["entry"].as_array().into_iter().flatten() {
                out.push(e["resource"].clone());
            }
            let next = bundle["link"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str())
                .map(str::to_owned);
            match next {
                Some(n) if !n.is_empty() => {
                    // The engine writes links against its own base; keep our host and port.
                    let tail = n.split_once("/fhir/").map(|(_, t)| t).unwrap_or(&n);
                    url = format!("{}/{tail}", self.url());
                }
                _ => return out,
            }
        }
    }

    /// Every stored resource of `rtype`.
    pub async fn all(&self, rtype: &str) -> Vec<Value> {
        self.search(rtype, "_total=none").await
    }

    /// Resources of `rtype` whose identifier is `system|value` (escaped and encoded the way a
    /// FHIR client must).
    pub async fn by_identifier(&self, rtype: &str, system: &str, value: &str) -> Vec<Value> {
        let mut q = String::from("identifier=");
        push_token_part(&mut q, system);
        q.push_str("%7C");
        push_token_part(&mut q, value);
        self.search(rtype, &q).await
    }

    /// What the front end counted.
    pub async fn stats(&self) -> EngineStats {
        let url = format!("https://localhost:{}/_stats", self.port);
        let v = self
            .client
            .get(&url)
            .await
            .ok()
            .and_then(|r| r.json().ok())
            .unwrap_or_default();
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        EngineStats {
            requests: n("requests"),
            bundles: n("bundles"),
            refused: n("refused"),
            observation_entries: n("observationEntries"),
        }
    }
}

/// Counters of the engine's front end since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    /// HTTP requests.
    pub requests: u64,
    /// Bundles POSTed to the base.
    pub bundles: u64,
    /// Requests answered 4xx/5xx (the engine's refusals and the front end's).
    pub refused: u64,
    /// Observation entries of Bundles answered 2xx (created or matched by `ifNoneExist`).
    pub observation_entries: u64,
}

/// FHIR search escape (`\` before `\ , | $`), then percent-encoding of all but unreserved
/// characters: written here independently of the gateway's own.
pub fn push_token_part(out: &mut String, text: &str) {
    for c in text.chars() {
        if matches!(c, '\\' | ',' | '|' | '$') {
            out.push_str("%5C");
        }
        let mut buf = [0u8; 4];
        for b in c.encode_utf8(&mut buf).bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
