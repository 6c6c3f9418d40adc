//! HL7 v2 over MLLP for the tests: a blocking sender (what a monitor gateway does: send a
//! frame, wait for the ACK frame) and the Python MLLP receiver process standing in for an
//! interface engine (`tests/mllp_receiver.py`, which parses with the independent `hl7`
//! package).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Start block, end block, carriage return.
pub const START: u8 = 0x0b;
/// End block.
pub const END: u8 = 0x1c;

/// `message` in an MLLP frame.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![START];
    out.extend_from_slice(message);
    out.extend_from_slice(&[END, b'\r']);
    out
}

/// A fixture message from `tests/fixtures/hl7/`, with CR segment ends.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/hl7")
        .join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .into_iter()
        .map(|b| if b == b'\n' { b'\r' } else { b })
        .collect()
}

trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

/// A blocking MLLP client, plain or over TLS.
pub struct Sender {
    stream: Box<dyn Io>,
    /// The socket under `stream`, for read timeouts.
    socket: TcpStream,
    buf: Vec<u8>,
}

/// What an ACK said (read with plain string splitting, independent of the gateway's parser).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// MSA-1.
    pub code: String,
    /// MSA-2.
    pub control_id: String,
    /// The whole ACK text (segments separated by `\r`).
    pub text: String,
}

impl Ack {
    /// Field `n` of the first segment `id` (MSH counted as HL7 does: MSH-1 is `|`).
    pub fn field(&self, id: &str, n: usize) -> String {
        let Some(seg) = self.text.split('\r').find(|s| s.starts_with(id)) else {
            return String::new();
        };
        let fields: Vec<&str> = seg.split('|').collect();
        let i = if id == "MSH" { n - 1 } else { n };
        fields.get(i).map(|s| (*s).to_owned()).unwrap_or_default()
    }

    /// Parses ACK bytes; `None` if there is no MSA.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let msa = text.split('\r').find(|s| s.starts_with("MSA|"))?;
        let f: Vec<&str> = msa.split('|').collect();
        Some(Self {
            code: f.get(1).copied().unwrap_or("").to_owned(),
            control_id: f.get(2).copied().unwrap_or("").to_owned(),
            text: text.clone(),
        })
    }
}

impl Sender {
    /// Connects to `127.0.0.1:port`.
    pub fn connect(port: u16) -> io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            socket: stream.try_clone()?,
            stream: Box::new(stream),
            buf: Vec::new(),
        })
    }

    /// Connects to `127.0.0.1:port` over TLS with `config` (the handshake happens at the
    /// first write or read).
    pub fn connect_tls(
        port: u16,
        config: std::sync::Arc<rustls::ClientConfig>,
    ) -> io::Result<Self> {
        let tcp = TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_nodelay(true)?;
        let name =
            rustls_pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
        let conn = rustls::ClientConnection::new(config, name)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self {
            socket: tcp.try_clone()?,
            stream: Box::new(rustls::StreamOwned::new(conn, tcp)),
            buf: Vec::new(),
        })
    }

    /// Writes raw bytes (framed or not).
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads the next whole frame's content, waiting at most `timeout`. `Ok(None)`: no frame
    /// in time; an error: the connection closed or failed.
    pub fn read_frame(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(start) = self.buf.iter().position(|&b| b == START) {
                if let Some(end) = self.buf[start..].windows(2).position(|w| w == [END, b'\r']) {
                    let frame = self.buf[start + 1..start + end].to_vec();
                    self.buf.drain(..start + end + 2);
                    return Ok(Some(frame));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.socket.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed",
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `message` framed and waits for its ACK.
    pub fn send(&mut self, message: &[u8], timeout: Duration) -> io::Result<Option<Ack>> {
        self.write_raw(&frame(message))?;
        Ok(self.read_frame(timeout)?.and_then(|f| Ack::parse(&f)))
    }
}

/// Sends `message` until it is answered AA, reconnecting as needed (the gateway may be
/// restarting), for at most `timeout`. Returns the number of attempts.
pub fn send_until_aa(port: u16, message: &[u8], timeout: Duration) -> u32 {
    let deadline = Instant::now() + timeout;
    let mut attempts = 0;
    while Instant::now() < deadline {
        attempts += 1;
        if let Ok(mut s) = Sender::connect(port) {
            if let Ok(Some(ack)) = s.send(message, Duration::from_secs(5)) {
                if ack.code == "AA" {
                    return attempts;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no AA within {timeout:?} after {attempts} attempts");
}

/// The Python receiver standing in for an interface engine.
pub struct Receiver {
    child: Option<Child>,
    port: u16,
    out: PathBuf,
    rules: PathBuf,
    tls: Option<(PathBuf, PathBuf, Option<PathBuf>)>,
}

impl Receiver {
    /// Starts it on a free port, writing under `out`, with `rules` (JSON, see the script).
    pub fn start(out: &Path, rules: &serde_json::Value) -> io::Result<Self> {
        Self::start_with_tls(out, rules, None)
    }

    /// Like [`Receiver::start`], serving TLS with `cert`/`key`, and requiring client
    /// certificates signed by `ca` when given.
    pub fn start_with_tls(
        out: &Path,
        rules: &serde_json::Value,
        tls: Option<(PathBuf, PathBuf, Option<PathBuf>)>,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(out)?;
        let rules_path = out.join("rules.json");
        std::fs::write(&rules_path, rules.to_string())?;
        let mut r = Self {
            child: None,
            port: crate::mosquitto::free_port()?,
            out: out.into(),
            rules: rules_path,
            tls,
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("mllp_receiver.py");
        let mut cmd = Command::new(crate::validator::python());
        cmd.arg(script)
            .args(["--port", &self.port.to_string()])
            .arg("--out")
            .arg(&self.out)
            .arg("--rules")
            .arg(&self.rules);
        if let Some((cert, key, ca)) = &self.tls {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
            if let Some(ca) = ca {
                cmd.arg("--ca").arg(ca);
            }
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        // The script prints one line once it listens.
        let mut line = [0u8; 10];
        let mut stdout = child.stdout.take().expect("stdout");
        stdout.read_exact(&mut line)?;
        self.child = Some(child);
        Ok(())
    }

    /// The port it listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Replaces the rules.
    pub fn set_rules(&self, rules: &serde_json::Value) {
        std::fs::write(&self.rules, rules.to_string()).expect("rules");
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn()
    }

    /// The messages answered AA so far.
    pub fn accepted(&self) -> Vec<serde_json::Value> {
        read_ndjson(&self.out.join("accepted.ndjson"))
    }

    /// Every message received so far, with the answer it got.
    pub fn received(&self) -> Vec<serde_json::Value> {
        read_ndjson(&self.out.join("received.ndjson"))
    }
}

fn read_ndjson(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every Observation in the file uplink's NDJSON output under `out`.
pub fn ndjson_observations(out: &Path) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    let Ok(entries) = std::fs::read_dir(out) else {
        return all;
    };
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("Observation-"))
        })
        .collect();
    names.sort();
    for p in names {
        all.extend(read_ndjson(&p));
    }
    all
}
