//! Serial end to end: the device simulator (`vitalbridge sim serial`) on one end of a
//! pseudo-terminal cable ([`SerialLink`]), the gateway binary on the other, real SQLite, and
//! the FHIR test upstream over mutual TLS.

use std::time::{Duration, Instant};

use vitalbridge_tests::gateway::{run_cli, GatewayProcess};
use vitalbridge_tests::mosquitto::free_port;
use vitalbridge_tests::ops::{self as ops_http, ops_table, parse_prometheus};
use vitalbridge_tests::pki::TestPki;
use vitalbridge_tests::serial_link::{Noise, SerialLink};
use vitalbridge_tests::serial_scenario::{
    check_firmware_readings, final_stat, serial_to_fhir, SimProcess,
};
use vitalbridge_tests::upstream::{Fault, Upstream, UpstreamConfig};
use vitalbridge_tests::validator;

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Waits (without blocking the runtime) until the gateway has logged `needle` `times` times.
async fn wait_log(gw: &GatewayProcess, needle: &str, times: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if gw.log().matches(needle).count() >= times {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

struct Setup {
    _pki: TestPki,
    upstream: Upstream,
    link: SerialLink,
    dir: tempfile::TempDir,
    gw: GatewayProcess,
}

/// The upstream, the cable, and a gateway reading its end with `protocol_toml`, port open.
async fn setup(protocol_toml: &str) -> Setup {
    setup_with(protocol_toml, "").await
}

/// [`setup`], with `extra` appended to the config at top level (e.g. an `[ops.http]` table).
async fn setup_with(protocol_toml: &str, extra: &str) -> Setup {
    let pki = TestPki::generate();
    let upstream = Upstream::start(UpstreamConfig::new(&pki)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let link = SerialLink::new(dir.path()).unwrap();
    let config = serial_to_fhir(
        &dir.path().join("data"),
        link.gateway_path(),
        protocol_toml,
        &upstream.url(),
        &pki,
    ) + extra;
    let gw = GatewayProcess::start(dir.path(), &config).unwrap();
    assert!(
        wait_log(&gw, "serial port open", 1, Duration::from_secs(30)).await,
        "{}",
        tail(&gw.log())
    );
    Setup {
        _pki: pki,
        upstream,
        link,
        dir,
        gw,
    }
}

const FIRMWARE: &str = "protocol = \"firmware\"";

/// Runs the simulator as a Masimo Rad-8 printing `count` trend lines into `link`, to the end;
/// returns its log.
async fn send_rad8_lines(dir: &std::path::Path, link: &SerialLink, count: usize) -> String {
    let count = count.to_string();
    let mut sim = SimProcess::start(
        dir,
        link.device_path(),
        &[
            "--protocol",
            "line",
            "--profile",
            "line-masimo-rad8",
            "--count",
            &count,
            "--interval-ms",
            "10",
        ],
    )
    .unwrap();
    let (status, summary) = sim
        .wait(Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("simulator did not finish\n{}", sim.log()));
    assert!(status.success(), "{summary}");
    assert!(summary.contains(&format!("lines: {count}")), "{summary}");
    sim.log()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_readings_over_a_serial_cable_arrive_exactly_once_and_right() {
    let s = setup(FIRMWARE).await;
    let mut sim = SimProcess::start(
        s.dir.path(),
        s.link.device_path(),
        &["--count", "400", "--interval-ms", "2", "--first-seq", "1"],
    )
    .unwrap();
    let (status, summary) = sim.wait(Duration::from_secs(90)).await.unwrap_or_else(|| {
        panic!(
            "simulator did not finish\n{}\n{}",
            sim.log(),
            tail(&s.gw.log())
        )
    });
    assert!(status.success(), "{summary}\n{}", sim.log());
    assert!(
        summary.contains("readings: 400, acknowledged: 400"),
        "{summary}"
    );
    assert!(
        s.upstream
            .wait_for_observations(400, Duration::from_secs(60))
            .await,
        "only {} arrived\n{}",
        s.upstream.observation_count(),
        tail(&s.gw.log())
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.upstream.assert_no_duplicate_identifiers();
    let observations = s.upstream.observations();
    let problems = check_firmware_readings(&observations, 1, 400);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Devices: the simulated one (identified by its Hello) and the gateway.
    let devices = s.upstream.devices();
    assert!(
        devices
            .iter()
            .any(|d| d["identifier"][0]["value"] == "SIM-SERIAL-0001"),
        "{devices:#?}"
    );
    validator::assert_valid_fhir(&observations[..8]);
    validator::assert_valid_fhir(&devices);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_between_frames_costs_only_the_bad_frames_and_each_is_counted() {
    let ops_port = free_port().unwrap();
    let mut s = setup_with(FIRMWARE, &ops_table(ops_port, "")).await;
    s.link.set_noise(Some(Noise { probability: 0.4 }));
    let mut sim = SimProcess::start(
        s.dir.path(),
        s.link.device_path(),
        &["--count", "300", "--interval-ms", "3"],
    )
    .unwrap();
    let (status, summary) = sim
        .wait(Duration::from_secs(90))
        .await
        .unwrap_or_else(|| panic!("simulator did not finish\n{}", tail(&s.gw.log())));
    assert!(status.success(), "{summary}\n{}", sim.log());
    assert!(
        s.upstream
            .wait_for_observations(300, Duration::from_secs(60))
            .await,
        "only {} arrived\n{}",
        s.upstream.observation_count(),
        tail(&s.gw.log())
    );
    let injected = s.link.injected();
    assert!(
        injected.garbage > 0
            && injected.truncated > 0
            && injected.flipped > 0
            && injected.oversize > 0,
        "every kind of noise was injected: {injected:?}"
    );
    // The operations endpoint counts the same discarded frames for monitoring.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ops_port));
    let metrics = ops_http::get(addr, "/metrics").await.expect("GET /metrics");
    let metrics = parse_prometheus(&String::from_utf8_lossy(&metrics.body)).unwrap();
    assert_eq!(
        metrics.value(
            "vitalbridge_input_discarded_total",
            &[("source", "serial:bed-1")]
        ),
        Some(injected.total() as f64),
        "{injected:?}"
    );
    let exit =
        s.gw.terminate(Duration::from_secs(20))
            .expect("the gateway exits on SIGTERM");
    assert!(
        exit.success(),
        "no panic, clean exit\n{}",
        tail(&s.gw.log())
    );
    let log = s.gw.log();
    assert!(!log.contains("panicked"), "{}", tail(&log));
    assert_eq!(
        final_stat(&log, "bad_frames"),
        Some(injected.total()),
        "every injected bad frame counted, nothing else: {injected:?}\n{}",
        tail(&log)
    );
    assert_eq!(
        final_stat(&log, "oversize"),
        Some(injected.oversize),
        "{}",
        tail(&log)
    );
    assert_eq!(
        final_stat(&log, "frames"),
        Some(s.link.frames_forwarded()),
        "every valid frame decoded"
    );
    s.upstream.assert_no_duplicate_identifiers();
    let problems = check_firmware_readings(&s.upstream.observations(), 1, 300);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_gateway_mid_stream_loses_and_duplicates_nothing() {
    let mut s = setup(FIRMWARE).await;
    let mut sim = SimProcess::start(
        s.dir.path(),
        s.link.device_path(),
        &[
            "--count",
            "1200",
            "--interval-ms",
            "4",
            "--ack-timeout-ms",
            "500",
        ],
    )
    .unwrap();
    let mut kills = 0;
    while kills < 6 {
        let wait = rand::random::<u64>() % 600 + 300;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        s.gw.kill9();
        kills += 1;
        s.gw.restart().unwrap();
        assert!(
            wait_log(
                &s.gw,
                "serial port open",
                kills + 1,
                Duration::from_secs(30)
            )
            .await,
            "{}",
            tail(&s.gw.log())
        );
    }
    let (status, summary) = sim.wait(Duration::from_secs(120)).await.unwrap_or_else(|| {
        panic!(
            "simulator did not finish\n{}\n{}",
            sim.log(),
            tail(&s.gw.log())
        )
    });
    assert!(
        status.success(),
        "every reading acknowledged in the end: {summary}"
    );
    assert!(
        s.upstream
            .wait_for_observations(1200, Duration::from_secs(90))
            .await,
        "only {} of 1200 arrived after {kills} kills\n{}",
        s.upstream.observation_count(),
        tail(&s.gw.log())
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.upstream.assert_no_duplicate_identifiers();
    let problems = check_firmware_readings(&s.upstream.observations(), 1, 1200);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(s.gw.starts, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplugging_and_replugging_the_cable_reconnects_and_carries_on() {
    let s = setup(FIRMWARE).await;
    let mut sim = SimProcess::start(
        s.dir.path(),
        s.link.device_path(),
        &[
            "--count",
            "600",
            "--interval-ms",
            "5",
            "--ack-timeout-ms",
            "500",
        ],
    )
    .unwrap();
    for round in 1..=2 {
        assert!(
            s.upstream
                .wait_for_observations(150 * round, Duration::from_secs(60))
                .await,
            "{}",
            tail(&s.gw.log())
        );
        s.link.unplug();
        assert!(
            wait_log(
                &s.gw,
                "serial device disconnected",
                round,
                Duration::from_secs(10)
            )
            .await,
            "the gateway notices the pulled cable\n{}",
            tail(&s.gw.log())
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        s.link.replug().unwrap();
        assert!(
            wait_log(
                &s.gw,
                "serial port open",
                round + 1,
                Duration::from_secs(10)
            )
            .await,
            "the gateway reopens the port behind the same path\n{}",
            tail(&s.gw.log())
        );
    }
    let (status, summary) = sim
        .wait(Duration::from_secs(90))
        .await
        .unwrap_or_else(|| panic!("simulator did not finish\n{}", tail(&s.gw.log())));
    assert!(status.success(), "{summary}");
    assert!(
        s.upstream
            .wait_for_observations(600, Duration::from_secs(60))
            .await,
        "only {}\n{}",
        s.upstream.observation_count(),
        tail(&s.gw.log())
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        s.link.dropped() > 0,
        "the unplugged cable really lost bytes"
    );
    s.upstream.assert_no_duplicate_identifiers();
    let problems = check_firmware_readings(&s.upstream.observations(), 1, 600);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_protocol_device_is_decoded_by_its_profile_with_its_clock_offset() {
    let s = setup(
        "protocol = \"line\"\nprofile = \"line-masimo-rad8\"\ndevice_id = \"R8-0001\"\ndevice_utc_offset = \"+01:00\"",
    )
    .await;
    let sim = send_rad8_lines(s.dir.path(), &s.link, 40).await;
    // Every simulated line is a normal one: SpO2, pulse rate and perfusion index.
    assert!(
        s.upstream
            .wait_for_observations(120, Duration::from_secs(60))
            .await,
        "only {}\n{}\n{}",
        s.upstream.observation_count(),
        tail(&s.gw.log()),
        sim
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.upstream.assert_no_duplicate_identifiers();
    let observations = s.upstream.observations();
    assert_eq!(observations.len(), 120);
    let mut per_code =
        std::collections::HashMap::<String, std::collections::HashSet<String>>::new();
    for o in &observations {
        let time = o["effectiveDateTime"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            time.ends_with("+01:00"),
            "the device clock's offset is kept: {time}"
        );
        let code = o["code"]["coding"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            per_code.entry(code).or_default().insert(time),
            "one reading per metric and time"
        );
        assert!(o["identifier"][0]["value"]
            .as_str()
            .unwrap_or_default()
            .starts_with("R8-0001-"));
    }
    let mut codes: Vec<&String> = per_code.keys().collect();
    codes.sort();
    // LOINC SpO2, LOINC pulse rate, and the perfusion index (MDC only).
    assert_eq!(codes, ["150448", "2708-6", "8867-4"]);
    assert!(per_code.values().all(|times| times.len() == 40));
    validator::assert_valid_fhir(&observations[..6]);
}

/// A line device on a gateway whose buffer (30 readings) fills because the upstream answers
/// 503: 20 lines of 3 readings, so 10 lines are stored and 10 wait for room when SIGTERM
/// comes. `recover` lets the upstream answer again at that moment. Returns the gateway's
/// log, the readings stored (pending plus delivered), and the audit log.
async fn stop_with_a_line_device_waiting_for_room(recover: bool) -> (String, u64, String) {
    let pki = TestPki::generate();
    let upstream = Upstream::start(UpstreamConfig::new(&pki)).await.unwrap();
    upstream
        .faults()
        .push_n(Fault::ServiceUnavailable, 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let link = SerialLink::new(dir.path()).unwrap();
    let config = serial_to_fhir(
        &dir.path().join("data"),
        link.gateway_path(),
        "protocol = \"line\"\nprofile = \"line-masimo-rad8\"\ndevice_id = \"R8-0002\"",
        &upstream.url(),
        &pki,
    )
    // Retry the upstream often, so a recovered upstream makes room at once.
    .replace("retry_max_ms = 2000", "retry_max_ms = 200")
        + "\n[buffer]\ncapacity = 30\n";
    let mut gw = GatewayProcess::start(dir.path(), &config).unwrap();
    assert!(
        wait_log(&gw, "serial port open", 1, Duration::from_secs(30)).await,
        "{}",
        tail(&gw.log())
    );
    send_rad8_lines(dir.path(), &link, 20).await;
    assert!(
        wait_log(&gw, "buffer full", 1, Duration::from_secs(30)).await,
        "{}",
        tail(&gw.log())
    );
    // Every line has been read: 10 stored, 10 waiting for room.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(upstream.observation_count(), 0);
    if recover {
        upstream.faults().clear();
    }
    let status = gw
        .terminate(Duration::from_secs(30))
        .expect("the gateway stops");
    assert!(status.success(), "{}", tail(&gw.log()));
    let (_, stats, _) = run_cli(dir.path(), &["queue", "stats", "-c", "gateway.toml"]);
    let pending: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("pending: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{stats}"));
    upstream.assert_no_duplicate_identifiers();
    let stored = pending + upstream.observation_count() as u64;
    let audit = std::fs::read_to_string(dir.path().join("data/audit.log")).unwrap();
    (gw.log(), stored, audit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_readings_waiting_for_room_at_shutdown_are_stored_before_the_port_stops() {
    let (log, stored, audit) = stop_with_a_line_device_waiting_for_room(true).await;
    assert_eq!(
        stored,
        60,
        "every reading of the 20 lines is stored or delivered\n{}",
        tail(&log)
    );
    assert!(!audit.contains("input_lost"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_readings_that_find_no_room_by_the_shutdown_deadline_are_counted_and_audited() {
    let (log, stored, audit) = stop_with_a_line_device_waiting_for_room(false).await;
    assert_eq!(stored, 30, "{}", tail(&log));
    let lost: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["kind"] == "input_lost")
        .collect();
    assert_eq!(lost.len(), 1, "{audit}");
    assert_eq!(lost[0]["origin"], "serial:bed-1");
    assert_eq!(lost[0]["readings"], 30, "the 10 waiting lines");
    assert_eq!(lost[0]["payloads"], 0);
    assert!(
        log.lines()
            .any(|l| l.contains("they are lost") && l.contains("readings=30")),
        "{}",
        tail(&log)
    );
}

#[test]
fn check_config_names_the_bad_serial_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"
[[sources.serial]]
name = "bed 1"
usb = "0403-6001"
protocol = "line"
profile = "line-no-such-device"
parity = "even"
baud = 10

[[sources.serial]]
name = "fw"
path = "/dev/ttyUSB9"
protocol = "firmware"
device_utc_offset = "+01:00"
"#;
    std::fs::write(dir.path().join("gateway.toml"), config).unwrap();
    let (code, _, stderr) =
        vitalbridge_tests::gateway::run_cli(dir.path(), &["check-config", "-c", "gateway.toml"]);
    assert_eq!(code, 2, "{stderr}");
    for expected in [
        "sources.serial[0].name: must be 1 to 64 ASCII letters",
        "sources.serial[0].usb: must be VVVV:PPPP",
        "sources.serial[0].profile: unknown line profile \"line-no-such-device\" (known: line-masimo-rad8, line-nonin-ascii)",
        "sources.serial[0].baud: must be between 50 and 4000000",
        "sources.serial[1].device_utc_offset: only for `line` ports",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    let typo = "[[sources.serial]]\nname = \"x\"\npath = \"/dev/ttyS0\"\nprotocol = \"firmware\"\nflow = \"none\"\n";
    std::fs::write(dir.path().join("gateway.toml"), typo).unwrap();
    let (code, _, stderr) =
        vitalbridge_tests::gateway::run_cli(dir.path(), &["check-config", "-c", "gateway.toml"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("sources.serial[0]") && stderr.contains("unknown field `flow`"),
        "{stderr}"
    );
}
