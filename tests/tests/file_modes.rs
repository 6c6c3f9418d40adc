//! What the gateway leaves on disk is its user's alone, whatever the umask: the real binary,
//! started with the permissive umask 0022 of a shell outside systemd, must create every
//! directory under its data directory 0700 and every file 0600 — the buffer, the lock, the
//! NDJSON output with its patient data, the audit log, the kept gateway id and the
//! configuration fingerprint. Files an older version left open to others are restricted on
//! the next start, and the log says so.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vitalbridge_tests::gateway::GatewayProcess;

/// Simulator in, NDJSON files out (the default uplink, `<data_dir>/out`), the audit log and
/// the generated gateway id in the data directory (both defaults). No operations server.
const CONFIG: &str = r#"
[gateway]
data_dir = "data"

[sources.sim]
devices = 2
interval_ms = 20
max_readings = 10
# Every reading plain and bound: this test counts output lines.
scenarios = false
"#;

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0)
}

/// Every directory (the data directory itself included) and file under `dir`.
fn walk(dir: &Path, out: &mut Vec<(PathBuf, bool)>) {
    out.push((dir.to_owned(), true));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&path, out),
            // A file SQLite removed between the listing and here is simply gone.
            Ok(_) if path.exists() => out.push((path, false)),
            _ => {}
        }
    }
}

/// Everything under `data` that is not owner-only: `path mode` lines, relative to `data`.
fn not_private(data: &Path) -> Vec<String> {
    let mut all = Vec::new();
    walk(data, &mut all);
    all.into_iter()
        .filter_map(|(path, is_dir)| {
            let want = if is_dir { 0o700 } else { 0o600 };
            let got = mode(&path);
            let name = path
                .strip_prefix(data)
                .unwrap_or(&path)
                .display()
                .to_string();
            (got != want).then(|| format!("{name:?} is {got:04o}, want {want:04o}"))
        })
        .collect()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    done()
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The output file the simulator's readings go to.
const OBSERVATIONS: &str = "out/Observation-000001.ndjson";

/// Starts the gateway in `dir` under umask 0022 and waits until the output holds `readings`
/// lines.
fn start(dir: &Path, readings: usize) -> GatewayProcess {
    let gw = GatewayProcess::start_with_umask(dir, CONFIG, 0o022).unwrap();
    wait_for_output(&gw, dir, readings);
    gw
}

fn wait_for_output(gw: &GatewayProcess, dir: &Path, readings: usize) {
    let observations = dir.join("data").join(OBSERVATIONS);
    assert!(
        wait_until(Duration::from_secs(60), || lines(&observations) >= readings),
        "the readings did not reach the output\n{}",
        tail(&gw.log())
    );
}

#[test]
fn everything_under_the_data_directory_is_owner_only_under_a_permissive_umask() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut gw = start(dir.path(), 10);
    // While it runs: the buffer's write-ahead log and shared memory exist now.
    let running = not_private(&data);
    assert!(gw
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    let stopped = not_private(&data);
    for expected in [
        "audit.log",
        "gateway-id",
        "config-fingerprint.json",
        "out/Device.ndjson",
        OBSERVATIONS,
    ] {
        assert!(data.join(expected).is_file(), "{expected} was written");
    }
    assert!(
        running.is_empty() && stopped.is_empty(),
        "not owner-only while running:\n  {}\nafter a clean stop:\n  {}",
        running.join("\n  "),
        stopped.join("\n  ")
    );
}

#[test]
fn files_an_older_version_left_open_to_others_are_restricted_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut gw = start(dir.path(), 10);
    assert!(gw
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));

    // What a gateway without explicit modes left behind.
    let loose = [
        "audit.log",
        "gateway-id",
        "config-fingerprint.json",
        "out/Device.ndjson",
        OBSERVATIONS,
    ];
    for name in loose {
        std::fs::set_permissions(data.join(name), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    gw.restart().unwrap();
    wait_for_output(&gw, dir.path(), 20);
    assert!(gw
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    let log = gw.log();
    for name in loose {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    for name in ["audit.log", OBSERVATIONS] {
        // The configured data directory is relative to the gateway's working directory.
        let path = format!("path=data/{name} ");
        assert!(
            log.lines()
                .any(|l| l.contains("restricted to its owner") && l.contains(&path)),
            "the log says {name} was restricted\n{}",
            tail(&log)
        );
    }
    let audit = std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert_eq!(
        audit.matches("\"kind\":\"gateway_started\"").count(),
        2,
        "appended to, not replaced:\n{audit}"
    );

    // A kept gateway id that is not one stops the start instead of being replaced.
    std::fs::write(data.join("gateway-id"), "not a gateway id!\n").unwrap();
    gw.restart().unwrap();
    let mut status = None;
    assert!(
        wait_until(Duration::from_secs(30), || {
            status = gw.try_wait();
            status.is_some()
        }),
        "the gateway exits by itself"
    );
    assert!(status.is_some_and(|s| !s.success()));
    let log = gw.log();
    assert!(
        log.contains("gateway-id: the kept gateway id must be 1 to 128 ASCII letters"),
        "{}",
        tail(&log)
    );
}
