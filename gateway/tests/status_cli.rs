//! `vitalbridge status` against a running gateway whose operations port is HTTPS with a
//! token: the terminal shows the status page's facts; without the token nothing is shown.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vitalbridge");

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn status(dir: &Path, config: &str) -> std::process::Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(["status", "-c", config])
        .output()
        .unwrap()
}

#[test]
fn status_shows_the_running_gateways_facts_over_https_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    private(&d.join("ops.pem"), &cert.pem());
    private(&d.join("ops.key"), &key.serialize_pem());
    private(&d.join("ops-token"), "a-token-of-twenty-chars\n");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!(
        "[gateway]\ndata_dir = \"data\"\n[buffer]\nkey_file = \"buffer.key\"\n[sources.sim]\ndevices = 2\ninterval_ms = 100\n[uplink.file]\n[ops.http]\nlisten = \"127.0.0.1:{port}\"\n\
         token_file = \"ops-token\"\n[ops.http.tls]\ncert = \"ops.pem\"\nkey = \"ops.key\"\n"
    );
    std::fs::write(d.join("c.toml"), &base).unwrap();
    let _gateway = Gateway(
        Command::new(BIN)
            .current_dir(d)
            .args(["run", "-c", "c.toml"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let out = status(d, "c.toml");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains("SIM-") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    for want in [
        "Gateway ",
        "Ready",
        "Queue: ",
        "Uplink: ",
        "  file: ok",
        "Devices heard from: 2",
        "MDC_",
        "Certificates:",
        "Profile pack: none installed",
    ] {
        assert!(text.contains(want), "missing {want:?}:\n{text}");
    }
    // Without the token (another config naming a wrong one) the gateway says nothing.
    private(&d.join("wrong-token"), "not-the-token-at-all\n");
    std::fs::write(
        d.join("wrong.toml"),
        base.replace("\"ops-token\"", "\"wrong-token\""),
    )
    .unwrap();
    let out = status(d, "wrong.toml");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}
