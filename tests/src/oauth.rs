//! A real OAuth 2.0 authorization server and a token-checking FHIR front end, for the auth
//! tests: `tests/oauth/server.mjs` in Node, with `oidc-provider` and `jose` from npm
//! (installed into `tests/oauth/node_modules` by `tests/setup.sh`).
//!
//! The front end serves `<fhir>/.well-known/smart-configuration`, checks every request's
//! bearer token against the provider's published JWKS (issuer, audience = the FHIR base,
//! expiry, `system/Observation.c` for a POST, revoked clients and tokens) or a static token,
//! and forwards what it accepts to the project's [`Upstream`](crate::upstream::Upstream)
//! over mutual TLS, so the upstream's checks (duplicates, contents) hold as in every other
//! test. [`AuthServer::command`] steers it while it runs: add or revoke a client, revoke the
//! tokens seen so far, take the token endpoint down, change the audience, shift its clock,
//! change the token lifetime, read its counters.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use crate::pki::{ServerIdentity, TestPki};

/// How long the Node process may take to start, or to answer a command.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The directory holding `server.mjs` and its `node_modules`.
pub fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oauth")
}

/// The running Node process.
pub struct AuthServer {
    child: Child,
    stdin: Mutex<ChildStdin>,
    lines: Mutex<Receiver<String>>,
    /// `https://127.0.0.1:PORT` — the provider's issuer.
    pub issuer: String,
    /// The provider's token endpoint.
    pub token_endpoint: String,
    /// The front end's FHIR base URL (`…/fhir`).
    pub fhir: String,
    _dir: tempfile::TempDir,
}

impl AuthServer {
    /// Starts the provider and the front end, forwarding to `upstream_url` with the PKI's
    /// client certificate; `static_tokens` are accepted as they are.
    pub fn start(pki: &TestPki, upstream_url: &str, static_tokens: &[&str]) -> AuthServer {
        let modules = node_dir().join("node_modules/oidc-provider");
        assert!(
            modules.exists(),
            "{} is missing: run tests/setup.sh (it installs oidc-provider and jose with npm)",
            modules.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let server = pki.server_files(ServerIdentity::Trusted);
        let client = pki.client_files();
        let settings = json!({
            "tls": {"cert": server.cert, "key": server.key, "ca": pki.ca_cert_path()},
            "client": {"cert": client.cert, "key": client.key},
            "upstream": upstream_url,
            "static_tokens": static_tokens,
        });
        let settings_path = dir.path().join("settings.json");
        std::fs::write(&settings_path, settings.to_string()).expect("write settings");
        let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());
        let mut child = Command::new(node)
            .env("NODE_EXTRA_CA_CERTS", pki.ca_cert_path())
            .arg(node_dir().join("server.mjs"))
            .arg(&settings_path)
            .current_dir(node_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node (is it installed? tests/setup.sh)");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take().expect("stdin");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready: Value = serde_json::from_str(
            &rx.recv_timeout(TIMEOUT)
                .expect("the auth servers did not start"),
        )
        .expect("a JSON ready line");
        let text = |k: &str| ready[k].as_str().expect("ready line").to_owned();
        AuthServer {
            issuer: text("issuer"),
            token_endpoint: text("token_endpoint"),
            fhir: text("fhir"),
            child,
            stdin: Mutex::new(stdin),
            lines: Mutex::new(rx),
            _dir: dir,
        }
    }

    /// Where the front end publishes the key set `name` (`host_jwks`): a client's `jku` and
    /// `jwks_uri`.
    pub fn jwks_url(&self, name: &str) -> String {
        format!("{}/jwks/{name}", self.fhir.trim_end_matches("/fhir"))
    }

    /// Sends one command (a JSON object with `cmd`) and returns the answer; panics unless it
    /// says `ok`.
    pub fn command(&self, command: Value) -> Value {
        let lines = self.lines.lock().unwrap();
        {
            let mut stdin = self.stdin.lock().unwrap();
            writeln!(stdin, "{command}").expect("write a command");
            stdin.flush().expect("flush");
        }
        let answer: Value = serde_json::from_str(
            &lines
                .recv_timeout(TIMEOUT)
                .expect("the auth servers did not answer"),
        )
        .expect("a JSON answer");
        assert_eq!(answer["ok"], true, "{command} → {answer}");
        answer
    }

    /// The counters: `token_requests`, `token_refused`, `fhir_ok`, `fhir_401`, `fhir_403`,
    /// `discovery`, and the last refusal `reasons`.
    pub fn stats(&self) -> Value {
        self.command(json!({"cmd": "stats"}))
    }

    /// One counter of [`Self::stats`].
    pub fn count(&self, name: &str) -> u64 {
        self.stats()[name].as_u64().unwrap_or(0)
    }

    /// Registers a client (oidc-provider client metadata, `client_id` included) that may use
    /// the client_credentials grant.
    pub fn add_client(&self, metadata: Value) {
        self.command(json!({"cmd": "add_client", "client": with_defaults(metadata)}));
    }
}

/// Client metadata for a client_credentials-only client.
pub fn with_defaults(mut metadata: Value) -> Value {
    let m = metadata.as_object_mut().expect("an object");
    m.insert("grant_types".into(), json!(["client_credentials"]));
    m.insert("redirect_uris".into(), json!([]));
    m.insert("response_types".into(), json!([]));
    metadata
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
