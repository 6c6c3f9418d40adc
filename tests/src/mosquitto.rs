//! A real mosquitto broker per test, plus QoS 1 publish/subscribe helpers.
//!
//! [`Mosquitto::start`] runs `/usr/sbin/mosquitto` (override with the `MOSQUITTO` environment
//! variable) with a generated config in a temporary directory it owns, on a free loopback
//! port, and waits until the port accepts connections. Dropping the [`Mosquitto`] kills and
//! reaps the process; [`Mosquitto::stop`] / [`Mosquitto::restart`] stop it gracefully (so it
//! writes its persistence file) and start it again on the same port with the same
//! persistence, for "broker restarted while the gateway had an offline session" tests.
//! [`Mosquitto::kill`] is a hard kill (anything not yet autosaved is lost).
//!
//! `start`, `stop`, `restart` are blocking (bounded: 10 s each); they can be called from
//! async tests directly (they block the runtime thread briefly).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use vitalbridge_tests::mosquitto::{publish_qos1, Mosquitto, MosquittoOptions};
//! let broker = Mosquitto::start(MosquittoOptions::default())?;
//! let payloads = (0..10_000).map(|i| format!("{{\"seq\":{i}}}").into_bytes());
//! let acked = publish_qos1(broker.port(), "devices/demo/readings", payloads).await?;
//! assert_eq!(acked, 10_000);
//! # Ok(()) }
//! ```
//!
//! The generated config (see [`Mosquitto::config_text`]) is:
//!
//! ```text
//! listener PORT 127.0.0.1
//! allow_anonymous true
//! persistence true
//! persistence_location DIR/data/
//! max_queued_messages 0
//! max_queued_bytes 0
//! max_inflight_messages 1000
//! log_dest file DIR/mosquitto.log
//! ```
//!
//! plus, with [`MosquittoOptions::tls`], a second listener requiring a client certificate
//! from the given CA (mutual TLS).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, Transport};
use tempfile::TempDir;

use crate::pki::{ServerIdentity, TestPki};

/// Default for [`MosquittoOptions::max_inflight_messages`].
///
/// mosquitto's own default is 20: at most 20 unacknowledged QoS 1 messages are sent to a
/// subscriber at once. The gateway acknowledges (manual acks) only after its group commit,
/// so with 20 in flight the broker stalls for one commit latency per 20 messages; 1000 lets a
/// whole commit group be outstanding.
pub const DEFAULT_MAX_INFLIGHT: u32 = 1000;

/// How long [`Mosquitto::start`] waits for the port to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a graceful stop may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Attempts at finding a free port when another process grabs ours between probe and bind.
const PORT_ATTEMPTS: usize = 5;

/// Capacity of rumqttc's request channel in the helpers below.
const CLIENT_CHANNEL_CAPACITY: usize = 1000;

/// Largest MQTT packet the helper clients send or accept.
const CLIENT_MAX_PACKET: usize = 16 * 1024 * 1024;

/// Certificates for the optional mutual-TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MosquittoTls {
    /// CA that client certificates must chain to (`cafile`).
    pub ca: PathBuf,
    /// Server certificate (`certfile`).
    pub cert: PathBuf,
    /// Server key (`keyfile`).
    pub key: PathBuf,
}

impl MosquittoTls {
    /// The test CA for clients, and `identity`'s server certificate.
    pub fn from_pki(pki: &TestPki, identity: ServerIdentity) -> MosquittoTls {
        let files = pki.server_files(identity);
        MosquittoTls {
            ca: pki.ca_cert_path().to_path_buf(),
            cert: files.cert.clone(),
            key: files.key.clone(),
        }
    }
}

/// Options for [`Mosquitto::start`]. `Default` gives a plain listener only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MosquittoOptions {
    /// `max_inflight_messages`: QoS 1/2 messages sent to one client and not yet acknowledged.
    /// See [`DEFAULT_MAX_INFLIGHT`] for why it is raised from mosquitto's 20.
    pub max_inflight_messages: u32,
    /// When set, a second listener on another free port with `require_certificate true`.
    pub tls: Option<MosquittoTls>,
    /// `autosave_interval` in seconds; `None` keeps mosquitto's default (1800 s, i.e. the
    /// persistence file is in practice written only on a graceful stop).
    pub autosave_interval: Option<u32>,
    /// Log every packet (`log_type all`). Slow with many messages; off by default.
    pub verbose_log: bool,
    /// Extra config lines appended verbatim.
    pub extra_config: Vec<String>,
}

impl Default for MosquittoOptions {
    fn default() -> Self {
        MosquittoOptions {
            max_inflight_messages: DEFAULT_MAX_INFLIGHT,
            tls: None,
            autosave_interval: None,
            verbose_log: false,
            extra_config: Vec::new(),
        }
    }
}

impl MosquittoOptions {
    /// Adds the mutual-TLS listener presenting the trusted server certificate of `pki`.
    pub fn with_tls(mut self, pki: &TestPki) -> Self {
        self.tls = Some(MosquittoTls::from_pki(pki, ServerIdentity::Trusted));
        self
    }
}

/// A running mosquitto broker owned by a test. Killed and reaped on drop.
#[derive(Debug)]
pub struct Mosquitto {
    /// Config, persistence, log and stdout/stderr live here.
    dir: TempDir,
    /// The options it was started with (kept for restarts).
    opts: MosquittoOptions,
    /// Plain MQTT port on 127.0.0.1.
    port: u16,
    /// Mutual-TLS port on 127.0.0.1, when configured.
    tls_port: Option<u16>,
    /// The broker process; `None` while stopped.
    child: Option<Child>,
}

fn mosquitto_binary() -> PathBuf {
    std::env::var_os("MOSQUITTO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"))
}

pub use crate::ports::free_port;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Mosquitto {
    /// Starts a broker on a free loopback port (and a second one for TLS if configured) and
    /// waits until it accepts TCP connections.
    ///
    /// Errors carry mosquitto's stderr and log when it exits or does not come up in time.
    pub fn start(opts: MosquittoOptions) -> io::Result<Mosquitto> {
        let dir = tempfile::Builder::new()
            .prefix("vitalbridge-mosquitto-")
            .tempdir()?;
        fs::create_dir_all(dir.path().join("data"))?;
        let mut m = Mosquitto {
            dir,
            opts,
            port: 0,
            tls_port: None,
            child: None,
        };
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            m.port = free_port()?;
            m.tls_port = None;
            if m.opts.tls.is_some() {
                let mut p = free_port()?;
                while p == m.port {
                    p = free_port()?;
                }
                m.tls_port = Some(p);
            }
            match m.spawn_and_wait() {
                Ok(()) => return Ok(m),
                // Someone took the port between our probe and mosquitto's bind: try another.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("could not find a free port")))
    }

    /// Plain MQTT port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Mutual-TLS port on 127.0.0.1 (`None` without [`MosquittoOptions::tls`]).
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// `127.0.0.1:port` of the plain listener.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The broker's temporary directory (config, `data/` persistence, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the broker's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// The broker log so far (empty if none yet), for failure messages.
    pub fn log_contents(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// mosquitto's stderr so far.
    pub fn stderr_contents(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.txt")).unwrap_or_default()
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The config file text for the current ports.
    pub fn config_text(&self) -> String {
        let d = self.dir.path();
        let mut c = String::new();
        let _ = writeln!(c, "# generated by vitalbridge-tests");
        if is_root() {
            // Running as root mosquitto switches to user `mosquitto`, which cannot read our
            // 0700 tempdir or 0600 keys; `root` means "stay as is".
            let _ = writeln!(c, "user root");
        }
        let _ = writeln!(c, "per_listener_settings false");
        let _ = writeln!(c, "allow_anonymous true");
        let _ = writeln!(c, "persistence true");
        let _ = writeln!(c, "persistence_location {}/", d.join("data").display());
        if let Some(s) = self.opts.autosave_interval {
            let _ = writeln!(c, "autosave_interval {s}");
        }
        // 0 = unlimited. The default (1000) makes mosquitto silently DISCARD QoS 1 messages
        // beyond 1000 queued for a persistent session whose client is offline: a gateway that
        // is down for a while would lose readings without anyone noticing. Operators must set
        // the same on their broker (docs/mqtt.md says so).
        let _ = writeln!(c, "max_queued_messages 0");
        // Same reason, counted in bytes (0 = unlimited, also mosquitto's default: stated so a
        // changed default cannot bite).
        let _ = writeln!(c, "max_queued_bytes 0");
        // See DEFAULT_MAX_INFLIGHT: throughput with QoS 1 and manual (after-commit) acks.
        let _ = writeln!(
            c,
            "max_inflight_messages {}",
            self.opts.max_inflight_messages
        );
        let _ = writeln!(c, "log_dest file {}", self.log_path().display());
        if self.opts.verbose_log {
            let _ = writeln!(c, "log_type all");
        } else {
            for t in ["error", "warning", "notice", "information"] {
                let _ = writeln!(c, "log_type {t}");
            }
        }
        let _ = writeln!(c, "connection_messages true");
        let _ = writeln!(c, "log_timestamp_format %Y-%m-%dT%H:%M:%S");
        let _ = writeln!(c, "listener {} 127.0.0.1", self.port);
        if let (Some(tls), Some(port)) = (&self.opts.tls, self.tls_port) {
            let _ = writeln!(c, "listener {port} 127.0.0.1");
            let _ = writeln!(c, "cafile {}", tls.ca.display());
            let _ = writeln!(c, "certfile {}", tls.cert.display());
            let _ = writeln!(c, "keyfile {}", tls.key.display());
            let _ = writeln!(c, "require_certificate true");
        }
        for line in &self.opts.extra_config {
            let _ = writeln!(c, "{line}");
        }
        c
    }

    fn spawn_and_wait(&mut self) -> io::Result<()> {
        let conf = self.dir.path().join("mosquitto.conf");
        fs::write(&conf, self.config_text())?;
        let stdout = fs::File::create(self.dir.path().join("stdout.txt"))?;
        let stderr = fs::File::create(self.dir.path().join("stderr.txt"))?;
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("spawn {}: {e}", mosquitto_binary().display()),
                )
            })?;
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        let mut ports = vec![self.port];
        ports.extend(self.tls_port);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let detail = self.failure_detail();
                let kind = if detail.contains("Address already in use") {
                    io::ErrorKind::AddrInUse
                } else {
                    io::ErrorKind::Other
                };
                return Err(io::Error::new(
                    kind,
                    format!("mosquitto exited during start-up ({status}){detail}"),
                ));
            }
            let up = ports.iter().all(|p| {
                TcpStream::connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], *p)),
                    Duration::from_millis(200),
                )
                .is_ok()
            });
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill_now();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "mosquitto did not accept connections on {ports:?} within {START_TIMEOUT:?}{}",
                        self.failure_detail()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn failure_detail(&self) -> String {
        format!(
            "\n--- mosquitto stderr ---\n{}\n--- mosquitto log ({}) ---\n{}",
            self.stderr_contents(),
            self.log_path().display(),
            self.log_contents()
        )
    }

    fn kill_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Graceful stop: SIGTERM, wait (mosquitto saves its persistence file on the way out),
    /// SIGKILL after 10 s. The port and `data/` are kept for [`Mosquitto::restart`].
    pub fn stop(&mut self) -> io::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
        // SAFETY: plain kill(2) on the pid of a child we have not reaped yet, so it cannot
        // have been reused by another process.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                child.wait()?;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "mosquitto ignored SIGTERM; killed",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Hard kill (SIGKILL), like a crash or power loss: whatever mosquitto had not yet
    /// autosaved is lost. The port and `data/` are kept for [`Mosquitto::restart`].
    pub fn kill(&mut self) {
        self.kill_now();
    }

    /// [`Mosquitto::stop`] if running, then start again on the same port(s) with the same
    /// persistence directory. Retries for a few seconds if the port is still busy.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop()?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// How the helper clients connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Broker host; `127.0.0.1` by default (the test server certificates carry that IP SAN).
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// `Some` to connect with TLS using this rustls config (e.g. [`TestPki::client_config`]).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// MQTT client id; a random one by default.
    pub client_id: String,
    /// Clean session flag (true by default).
    pub clean_session: bool,
    /// Maximum unacknowledged outgoing QoS 1 publishes (rumqttc `inflight`).
    pub inflight: u16,
    /// Overall bound on a helper call (connect + publish + all acks). A call that exceeds
    /// it fails with `TimedOut` instead of hanging the test.
    pub timeout: Duration,
}

impl ClientOptions {
    /// Plain TCP to `127.0.0.1:port`, random client id, clean session, 500 in flight,
    /// 120 s overall timeout.
    pub fn new(port: u16) -> ClientOptions {
        ClientOptions {
            host: "127.0.0.1".to_string(),
            port,
            tls: None,
            client_id: format!("vb-test-{:016x}", rand::random::<u64>()),
            clean_session: true,
            inflight: 500,
            timeout: Duration::from_secs(120),
        }
    }

    fn mqtt_options(&self) -> MqttOptions {
        let mut o = MqttOptions::new(self.client_id.clone(), self.host.clone(), self.port);
        o.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(self.clean_session)
            .set_inflight(self.inflight.max(1))
            .set_max_packet_size(CLIENT_MAX_PACKET, CLIENT_MAX_PACKET);
        if let Some(tls) = &self.tls {
            o.set_transport(Transport::Tls(rumqttc::TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        o
    }
}

fn mqtt_err(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// Publishes every payload to `topic` on `127.0.0.1:port` with QoS 1 and returns once the
/// broker has acknowledged (PUBACK) all of them. Returns the number acknowledged.
///
/// At most 500 publishes are unacknowledged at once; no reconnects (a dropped connection
/// is an error, so counts stay exact). Fails with `TimedOut` after 120 s.
pub async fn publish_qos1(
    port: u16,
    topic: &str,
    payloads: impl IntoIterator<Item = Vec<u8>>,
) -> io::Result<usize> {
    publish_qos1_with(&ClientOptions::new(port), topic, payloads).await
}

/// [`publish_qos1`] with explicit [`ClientOptions`] (TLS, client id, in-flight bound, timeout).
pub async fn publish_qos1_with(
    opts: &ClientOptions,
    topic: &str,
    payloads: impl IntoIterator<Item = Vec<u8>>,
) -> io::Result<usize> {
    match tokio::time::timeout(opts.timeout, publish_inner(opts, topic, payloads)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("publish_qos1 did not finish within {:?}", opts.timeout),
        )),
    }
}

async fn publish_inner(
    opts: &ClientOptions,
    topic: &str,
    payloads: impl IntoIterator<Item = Vec<u8>>,
) -> io::Result<usize> {
    let (client, mut eventloop) = AsyncClient::new(opts.mqtt_options(), CLIENT_CHANNEL_CAPACITY);
    wait_connack(&mut eventloop).await?;

    let acked = Arc::new(AtomicUsize::new(0));
    let (ack_tx, mut ack_rx) = tokio::sync::watch::channel(0usize);
    let driver = {
        let acked = acked.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        let n = acked.fetch_add(1, Ordering::SeqCst) + 1;
                        let _ = ack_tx.send(n);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(mqtt_err("mqtt connection", e)),
                }
            }
        })
    };

    let mut sent = 0usize;
    for payload in payloads {
        if client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .is_err()
        {
            // The event loop ended: report its error.
            return Err(match driver.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => io::Error::other("mqtt event loop ended early"),
                Err(e) => io::Error::other(e),
            });
        }
        sent += 1;
    }

    let waited = ack_rx.wait_for(|n| *n >= sent).await.map(|_| ());
    if waited.is_err() {
        // Sender dropped: the driver ended before all acks arrived.
        return Err(match driver.await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => io::Error::other("mqtt event loop ended before all PUBACKs"),
            Err(e) => io::Error::other(e),
        });
    }
    let _ = client.disconnect().await;
    // Give the DISCONNECT a moment to go out; the broker has everything already.
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    Ok(acked.load(Ordering::SeqCst))
}

async fn wait_connack(eventloop: &mut EventLoop) -> io::Result<()> {
    match eventloop.poll().await {
        Ok(Event::Incoming(Packet::ConnAck(_))) => Ok(()),
        Ok(other) => Err(io::Error::other(format!("expected CONNACK, got {other:?}"))),
        Err(e) => Err(mqtt_err("mqtt connect", e)),
    }
}

/// A QoS 1 subscriber that collects messages in the background (acknowledged automatically).
#[derive(Debug)]
pub struct Subscriber {
    /// Received publishes, in arrival order.
    rx: tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>,
    /// To disconnect on drop.
    client: AsyncClient,
    /// Drives the connection.
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Connects to `127.0.0.1:port`, subscribes to `filter` with QoS 1 and waits for the
    /// SUBACK, so anything published after this returns is delivered.
    pub async fn connect(port: u16, filter: &str) -> io::Result<Subscriber> {
        Self::connect_with(&ClientOptions::new(port), filter).await
    }

    /// [`Subscriber::connect`] with explicit [`ClientOptions`].
    pub async fn connect_with(opts: &ClientOptions, filter: &str) -> io::Result<Subscriber> {
        let (client, mut eventloop) =
            AsyncClient::new(opts.mqtt_options(), CLIENT_CHANNEL_CAPACITY);
        // Messages of a resumed session can arrive before the SUBACK: keep them.
        let mut early = Vec::new();
        let setup = async {
            wait_connack(&mut eventloop).await?;
            client
                .subscribe(filter, QoS::AtLeastOnce)
                .await
                .map_err(|e| mqtt_err("subscribe", e))?;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        let ok = ack
                            .return_codes
                            .iter()
                            .all(|c| !matches!(c, rumqttc::SubscribeReasonCode::Failure));
                        return if ok {
                            Ok(())
                        } else {
                            Err(io::Error::other(format!("subscription refused: {ack:?}")))
                        };
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => early.push(p),
                    Ok(_) => {}
                    Err(e) => return Err(mqtt_err("mqtt subscribe", e)),
                }
            }
        };
        tokio::time::timeout(opts.timeout, setup)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "subscribe timed out"))??;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for p in early {
            let _ = tx.send(p);
        }
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        Ok(Subscriber { rx, client, task })
    }

    /// The next message, or `None` after `timeout` (or if the connection ended).
    pub async fn recv(&mut self, timeout: Duration) -> Option<rumqttc::Publish> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Up to `n` messages, waiting at most `timeout` in total.
    pub async fn collect(&mut self, n: usize, timeout: Duration) -> Vec<rumqttc::Publish> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(p)) => out.push(p),
                _ => break,
            }
        }
        out
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
        self.task.abort();
    }
}
