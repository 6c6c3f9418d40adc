//! The streaming destinations' side of the tests: a mosquitto broker that takes only client
//! certificates (anonymous refused, an ACL per certificate), the independent paho-mqtt
//! subscriber (`tests/stream_subscriber.py`), and the gateway's `[uplink.mqtt]` table.
//!
//! The sink broker's ACL (`acl_file`): the gateway's certificate (CN
//! [`crate::pki::CLIENT_CN`]) may write `vitalbridge/#` and nothing else; the subscriber's
//! (CN [`SUBSCRIBER_CN`]) may read `vitalbridge/#`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::mosquitto::{Mosquitto, MosquittoOptions};
use crate::pki::{CertFiles, TestPki, CLIENT_CN};

/// The subscriber's certificate CN (its MQTT user name on the sink broker).
pub const SUBSCRIBER_CN: &str = "rpm-platform-subscriber";

/// Starts the sink broker: a mutual-TLS listener presenting the test PKI's server
/// certificate, anonymous clients refused, the certificate CN as user name, and the ACL above
/// with the gateway allowed to write `gateway_topics` (normally `vitalbridge/#`).
pub fn sink_broker(pki: &TestPki, gateway_topics: &str) -> Mosquitto {
    let acl = pki.dir().join("sink-broker.acl");
    write_acl(&acl, gateway_topics);
    let mut opts = MosquittoOptions::default().with_tls(pki);
    opts.autosave_interval = Some(1);
    opts.extra_config = vec![
        "use_identity_as_username true".into(),
        // After the generated `allow_anonymous true`: the later line wins.
        "allow_anonymous false".into(),
        format!("acl_file {}", acl.display()),
    ];
    Mosquitto::start(opts).expect("start the sink mosquitto")
}

fn write_acl(path: &Path, gateway_topics: &str) {
    std::fs::write(
        path,
        format!(
            "user {CLIENT_CN}\ntopic write {gateway_topics}\n\nuser {SUBSCRIBER_CN}\ntopic read vitalbridge/#\n"
        ),
    )
    .expect("write the ACL");
}

/// Lets the gateway write `gateway_topics` from now on: rewrites the sink broker's ACL and
/// makes it reload (SIGHUP), as an operator fixing a refused gateway would.
pub fn allow_gateway(broker: &Mosquitto, pki: &TestPki, gateway_topics: &str) {
    write_acl(&pki.dir().join("sink-broker.acl"), gateway_topics);
    let pid = broker.pid().expect("the sink broker runs") as libc::pid_t;
    // SAFETY: kill(2) on the broker process this test started, with a valid signal.
    unsafe { libc::kill(pid, libc::SIGHUP) };
}

/// The `[uplink.mqtt]` table publishing to `broker`'s TLS port with the test PKI's client
/// certificate; `extra` lines go inside the table.
pub fn mqtt_uplink(broker: &Mosquitto, pki: &TestPki, extra: &str) -> String {
    let client = pki.client_files();
    format!(
        r#"
[uplink.mqtt]
url = "mqtts://localhost:{port}"
topic = "vitalbridge/{{gateway}}/{{device}}/{{code}}"
timeout_s = 5
{extra}
[uplink.mqtt.tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
"#,
        port = broker
            .tls_port()
            .expect("the sink broker has a TLS listener"),
        ca = pki.ca_cert_path().display(),
        cert = client.cert.display(),
        key = client.key.display(),
    )
}

/// The paho-mqtt subscriber process; killed on drop.
pub struct StreamSubscriber {
    child: Child,
    out: PathBuf,
    /// Kept alive for the process's lifetime.
    _dir: tempfile::TempDir,
}

impl StreamSubscriber {
    /// Starts the subscriber on `broker`'s TLS port for `filter`, with a certificate of its
    /// own, and waits (up to 20 s) until its subscription is granted.
    pub fn start(broker: &Mosquitto, pki: &TestPki, filter: &str) -> StreamSubscriber {
        let dir = tempfile::Builder::new()
            .prefix("vitalbridge-subscriber-")
            .tempdir()
            .expect("tempdir");
        let cert: CertFiles = pki.issue_client_cert("subscriber", SUBSCRIBER_CN);
        let out = dir.path().join("messages.ndjson");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("stream_subscriber.py");
        let mut child = Command::new(crate::validator::python())
            .arg(&script)
            .arg("localhost")
            .arg(broker.tls_port().expect("TLS listener").to_string())
            .arg(pki.ca_cert_path())
            .arg(&cert.cert)
            .arg(&cert.key)
            .arg(filter)
            .arg("rpm-platform-consumer")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tests/stream_subscriber.py (paho-mqtt in tests/.venv)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line == "SUBSCRIBED" => break,
                Ok(line) => eprintln!("subscriber: {line}"),
                Err(_) => panic!("the subscriber did not subscribe within 20 s"),
            }
        }
        StreamSubscriber {
            child,
            out,
            _dir: dir,
        }
    }

    /// Every message received so far, one JSON object each (see the script's docs).
    pub fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until `done(messages)` holds or `timeout` passes; returns the messages.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.messages();
            if done(&m) || Instant::now() >= deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for StreamSubscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The effective times (one per reading in the scenarios) of the Observations in the
/// subscriber's messages, each with how often it arrived, and the identifiers seen for it.
pub fn arrivals(messages: &[Value]) -> std::collections::HashMap<String, (usize, Vec<String>)> {
    let mut seen: std::collections::HashMap<String, (usize, Vec<String>)> = Default::default();
    for m in messages {
        let times = m["times"].as_array().cloned().unwrap_or_default();
        let ids = m["identifiers"].as_array().cloned().unwrap_or_default();
        for (t, id) in times.iter().zip(ids.iter()) {
            let entry = seen.entry(t.as_str().unwrap_or("").to_owned()).or_default();
            entry.0 += 1;
            let id = id.as_str().unwrap_or("").to_owned();
            if !entry.1.contains(&id) {
                entry.1.push(id);
            }
        }
    }
    seen
}
