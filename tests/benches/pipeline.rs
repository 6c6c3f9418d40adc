//! Benchmark: MQTT → buffer (durable) → HTTPS mTLS upstream, end to end, with the real
//! gateway binary. Prints figures; asserts nothing about speed.
//!
//! ```sh
//! cargo build --release -p vitalbridge --features alloc-counter   # counts allocations
//! cargo bench -p vitalbridge-tests --bench pipeline
//! # the same run beside another build (e.g. before a change), scenario by scenario:
//! BENCH_BASELINE=/path/to/old/vitalbridge cargo bench -p vitalbridge-tests --bench pipeline
//! ```
//!
//! Scenarios:
//! - **full speed**: `BENCH_READINGS` (100,000) readings published as fast as the broker takes
//!   them; the gateway's CPU per reading, throughput, peak RSS.
//! - **steady**: `BENCH_STEADY_RATE` (1,000) readings/s for `BENCH_STEADY_SECONDS` (30), as a
//!   busy ward or a fleet of hubs would send them; CPU per reading, FHIR requests per 10k
//!   readings, and publish → stored-at-the-server latency (p50, p99); once to the project's
//!   upstream and once, in the same run, to the real engine (Medplum's fhir-router,
//!   `vitalbridge_tests::engine`, `batch` Bundles of `BENCH_ENGINE_BATCH` (50) readings, a
//!   120 s request timeout). A server that cannot keep up gets
//!   `BENCH_STEADY_DRAIN_SECONDS` (120) after the last publish; what it stored by then is
//!   reported. `BENCH_SCENARIOS=steady,no-engine` leaves the engine out.
//!
//! - **uplinks**: `BENCH_UPLINK_READINGS` (30,000) readings at full speed through each uplink
//!   alone, in the same run: the FHIR server (HTTPS, mTLS), an MQTT broker (MQTT 5 over mTLS,
//!   QoS 1, the client-certificate-only sink broker of the tests) and Kafka (the tests' tansu
//!   broker, if `tests/.venv-kafka` is installed); readings/s and gateway CPU per reading,
//!   counted to each destination's acknowledgement (`vitalbridge_readings_out_total`).
//!
//! Other knobs: `BENCH_BATCH` / `BENCH_IN_FLIGHT` (uplink.batch_size / in_flight),
//! `BENCH_MQTT_COMMIT_LINGER_MS` / `BENCH_COMMIT_LINGER_MS` / `BENCH_BATCH_LINGER_MS`
//! (sources.mqtt.commit_linger_ms / buffer.commit_linger_ms, also for the HL7 section /
//! uplink.batch_linger_ms; the defaults when unset), `BENCH_WORKER_THREADS`
//! (gateway.worker_threads), `BENCH_SCENARIOS=full,steady,uplinks,hl7`,
//! `BENCH_VERBOSE=1`.
//!
//! Everything runs on this machine: mosquitto, the publisher, the FHIR test upstream (in this
//! process) and the gateway. The gateway's CPU time, peak RSS, context switches (all its
//! threads') and bytes written to disk are read from `/proc/<pid>`; allocations from its `/metrics` (`vitalbridge_allocations_total`, only in builds with the
//! `alloc-counter` feature).
//!
//! - **hl7**: the HL7 v2 source: `BENCH_HL7_SENDERS` connections (default 8) each send PCD-01
//!   ORU^R01 messages (8 OBX, 6 readings each) one at a time and wait for the AA, which the
//!   gateway sends only after the commit (`synchronous=FULL`); the default NDJSON uplink runs
//!   meanwhile. `BENCH_HL7_MESSAGES` (default 20,000).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use vitalbridge_tests::engine::Engine;
use vitalbridge_tests::fixture;
use vitalbridge_tests::gateway::GatewayProcess;
use vitalbridge_tests::mosquitto::{free_port, publish_qos1, Mosquitto, MosquittoOptions};
use vitalbridge_tests::pki::TestPki;
use vitalbridge_tests::scenario;
use vitalbridge_tests::upstream::{Upstream, UpstreamConfig};

/// CPU seconds and peak RSS (KiB) of a process.
fn proc_figures(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" of the command name: utime is field 14, stime 15 (1-based).
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let hz = 100.0; // USER_HZ on Linux
    let cpu = (ticks(11) + ticks(12)) as f64 / hz;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kib = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu, hwm_kib)
}

/// Context switches of a process so far: the voluntary and involuntary ones of each of its
/// threads (`/proc/<pid>/task/*/status`). A thread that ends between two readings takes its
/// count with it, so a difference can only undercount; the gateway's threads (the runtime's,
/// SQLite's per connection) live as long as it does in these scenarios. Less noisy than CPU
/// time on a shared machine: each one is a wake-up, one task handing work to another.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches:")
                        || l.starts_with("nonvoluntary_ctxt_switches:")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Bytes a process has caused to be written to storage so far (`write_bytes` of
/// `/proc/<pid>/io`: counted when a page of the page cache turns dirty, so a commit that adds
/// a few bytes to a page written out before counts the whole page again — as the disk, an
/// SD card's flash above all, sees it).
fn disk_written(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one scenario measured.
#[derive(Debug, Default, Clone)]
struct Figures {
    /// Readings the server stored.
    readings: u64,
    /// Readings published (0: as many as stored).
    published: u64,
    elapsed: f64,
    cpu: f64,
    /// The gateway's context switches (0: not measured).
    switches: u64,
    /// Bytes the gateway wrote to disk (0: not measured).
    disk_bytes: u64,
    rss_kib: u64,
    allocations: Option<u64>,
    /// Buffer transactions committed (each one `fsync`).
    commits: Option<u64>,
    requests: usize,
    latency_ms: Option<(f64, f64)>,
    broker_cpu: f64,
    harness_cpu: f64,
}

/// The counters read before and after a scenario.
struct Sample {
    /// CPU seconds of the gateway, the broker, and this process (with the engine).
    gateway: f64,
    /// The gateway's context switches.
    switches: u64,
    /// Bytes the gateway wrote to disk.
    disk_bytes: u64,
    broker: f64,
    harness: f64,
    allocations: Option<u64>,
    commits: Option<u64>,
}

impl Figures {
    fn cpu_ms_per_reading(&self) -> f64 {
        self.cpu * 1000.0 / self.readings as f64
    }
}

/// Which FHIR server the gateway sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    /// The project's own test upstream (in this process).
    Upstream,
    /// The real engine: Medplum's fhir-router in Node, validating, behind mutual TLS
    /// (`batch` Bundles: its transactions with conditional creates stop at 8 entries).
    Engine,
}

/// A gateway under test, with its broker and upstream (and the real engine, when that is
/// the server).
struct Run {
    rig: fixture::Rig,
    gw: GatewayProcess,
    engine: Option<Engine>,
}

impl Drop for Run {
    fn drop(&mut self) {
        stop(&mut self.gw);
    }
}

/// Stops the gateway as an operator would (SIGTERM) once its figures are taken, not by the
/// harness's kill: a build instrumented for profile-guided optimisation writes its profile
/// only at an orderly exit (docs/benchmark.md).
fn stop(gw: &mut GatewayProcess) {
    let timeout = Duration::from_secs(30);
    if tokio::task::block_in_place(|| gw.terminate(timeout)).is_none() {
        eprintln!("the gateway did not stop within {timeout:?} of SIGTERM");
    }
}

impl Run {
    async fn start(binary: &PathBuf) -> Run {
        Run::start_to(binary, Server::Upstream).await
    }

    async fn start_to(binary: &PathBuf, server: Server) -> Run {
        let batch_size = env("BENCH_BATCH", 500);
        let in_flight = env("BENCH_IN_FLIGHT", 2);
        let rig = fixture::Rig::start().await;
        let mut config = rig
            .mqtt_to_fhir(&vitalbridge_tests::ops::ops_table(rig.ops_port, ""))
            .replace("batch_size = 500", &format!("batch_size = {batch_size}"))
            .replace("in_flight = 2", &format!("in_flight = {in_flight}"));
        if let Ok(ms) = std::env::var("BENCH_BATCH_LINGER_MS") {
            config = config.replace(
                &format!("in_flight = {in_flight}"),
                &format!("in_flight = {in_flight}\nbatch_linger_ms = {ms}"),
            );
        }
        if let Ok(ms) = std::env::var("BENCH_COMMIT_LINGER_MS") {
            config.push_str(&format!("\n[buffer]\ncommit_linger_ms = {ms}\n"));
        }
        config = with_worker_threads(config);
        if let Ok(ms) = std::env::var("BENCH_MQTT_COMMIT_LINGER_MS") {
            assert!(config.contains("[sources.mqtt]\n"), "{config}");
            config = config.replace(
                "[sources.mqtt]\n",
                &format!("[sources.mqtt]\ncommit_linger_ms = {ms}\n"),
            );
        }
        let engine = match server {
            Server::Upstream => None,
            Server::Engine => {
                let engine = Engine::start(&rig.pki, None).await;
                // Smaller Bundles: the engine validates each resource and runs its matching
                // in Node on one core, about 1 ms per entry, so 500 entries would hold a
                // reading back by half a second more.
                let batch = env("BENCH_ENGINE_BATCH", 50);
                config = config
                    .replace(&rig.upstream.url(), &engine.url())
                    .replace(
                        "timeout_s = 10\n",
                        "timeout_s = 120\nbundle_type = \"batch\"\n",
                    )
                    .replace(
                        &format!("batch_size = {batch_size}"),
                        &format!("batch_size = {batch}"),
                    );
                Some(engine)
            }
        };
        std::env::set_var("VITALBRIDGE_BIN", binary);
        let gw = rig.start_subscribed(&config);
        Run { rig, gw, engine }
    }

    /// Observations the server stored (or, at the engine, answered 2xx).
    async fn delivered(&self) -> u64 {
        match &self.engine {
            Some(e) => e.stats().await.observation_entries,
            None => self.rig.upstream.observation_count() as u64,
        }
    }

    /// Requests the server received.
    async fn requests(&self) -> usize {
        match &self.engine {
            Some(e) => e.stats().await.bundles as usize,
            None => self.rig.upstream.request_count(),
        }
    }

    /// `(effectiveDateTime, stored at)` of every stored Observation.
    async fn stored_times(&self) -> Vec<(String, OffsetDateTime)> {
        match &self.engine {
            Some(e) => e.created().await,
            None => self
                .rig
                .upstream
                .observations()
                .iter()
                .filter_map(|o| {
                    let stored = o["meta"]["lastUpdated"].as_str()?;
                    let stored = OffsetDateTime::parse(stored, &Rfc3339).ok()?;
                    Some((scenario::observed(o).time, stored))
                })
                .collect(),
        }
    }

    /// The gateway's counters `names` from its `/metrics`, in that order (`None`: not
    /// exposed, as the allocation counter in a build without `alloc-counter`).
    async fn counters<const N: usize>(&self, names: [&str; N]) -> [Option<u64>; N] {
        let text = match vitalbridge_tests::ops::get(self.rig.ops_addr(), "/metrics").await {
            Ok(m) => String::from_utf8(m.body.to_vec()).unwrap_or_default(),
            Err(_) => String::new(),
        };
        names.map(|name| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|v| v as u64)
        })
    }

    /// CPU of the gateway, the broker and this process (with the engine's Node process, when
    /// there is one); the gateway's allocations and buffer commits.
    async fn sample(&self) -> Sample {
        let (gateway, _) = proc_figures(self.gw.pid());
        let (broker, _) = proc_figures(self.rig.broker.pid().unwrap_or(0));
        let (mut harness, _) = proc_figures(std::process::id());
        if let Some(e) = &self.engine {
            harness += proc_figures(e.pid()).0;
        }
        let [allocations, commits] = self
            .counters([
                "vitalbridge_allocations_total",
                "vitalbridge_buffer_commits_total",
            ])
            .await;
        Sample {
            gateway,
            switches: context_switches(self.gw.pid()),
            disk_bytes: disk_written(self.gw.pid()),
            broker,
            harness,
            allocations,
            commits,
        }
    }

    /// Waits until `n` readings were delivered, or `give_up` passed (then returns how many
    /// were).
    async fn wait_delivered(&self, n: u64, start: Instant, give_up: Duration) -> u64 {
        let verbose = std::env::var_os("BENCH_VERBOSE").is_some();
        let mut last_report = Instant::now();
        let poll = if self.engine.is_some() { 200 } else { 10 };
        loop {
            let delivered = self.delivered().await;
            if delivered >= n || start.elapsed() >= give_up {
                return delivered;
            }
            tokio::time::sleep(Duration::from_millis(poll)).await;
            if verbose && last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                eprintln!(
                    "  t={:>5.1}s delivered={delivered}",
                    start.elapsed().as_secs_f64(),
                );
            }
        }
    }

    fn finish(&self, f: &mut Figures, before: Sample, after: Sample) {
        if self.engine.is_none() {
            self.rig.upstream.assert_no_duplicate_identifiers();
        }
        f.cpu = after.gateway - before.gateway;
        f.switches = after.switches.saturating_sub(before.switches);
        f.disk_bytes = after.disk_bytes.saturating_sub(before.disk_bytes);
        f.broker_cpu = after.broker - before.broker;
        f.harness_cpu = after.harness - before.harness;
        f.allocations = after
            .allocations
            .zip(before.allocations)
            .map(|(a, b)| a - b);
        f.commits = after.commits.zip(before.commits).map(|(a, b)| a - b);
        f.rss_kib = proc_figures(self.gw.pid()).1;
    }
}

/// Everything as fast as the broker takes it.
async fn full_speed(binary: &PathBuf) -> Figures {
    let n = env("BENCH_READINGS", 100_000);
    let run = Run::start(binary).await;
    let (payloads, _): (Vec<_>, Vec<_>) = (0..n).map(|i| scenario::reading(i, 100)).unzip();
    let before = run.sample().await;
    let requests_before = run.rig.upstream.request_count();
    let start = Instant::now();
    let publish = tokio::spawn(publish_qos1(
        run.rig.broker.port(),
        "vitals/bench",
        payloads,
    ));
    let delivered = run
        .wait_delivered(n, start, Duration::from_secs(1800))
        .await;
    assert_eq!(delivered, n, "not all readings arrived");
    let elapsed = start.elapsed().as_secs_f64();
    publish.await.unwrap().expect("published");
    let after = run.sample().await;
    let mut f = Figures {
        readings: n,
        elapsed,
        requests: run.rig.upstream.request_count() - requests_before,
        ..Figures::default()
    };
    run.finish(&mut f, before, after);
    f
}

/// A steady rate, one reading at a time, with each reading's publish time kept.
async fn steady(binary: &PathBuf, server: Server) -> Figures {
    let rate = env("BENCH_STEADY_RATE", 1_000);
    let seconds = env("BENCH_STEADY_SECONDS", 30);
    let n = rate * seconds;
    let run = Run::start_to(binary, server).await;
    let readings: Vec<(Vec<u8>, scenario::Expected)> =
        (0..n).map(|i| scenario::reading(i, 100)).collect();
    let mut options = MqttOptions::new("bench-steady", "127.0.0.1", run.rig.broker.port());
    options
        .set_inflight(1000)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let poller = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Disconnect)) | Err(_) => return,
                _ => {}
            }
        }
    });
    let before = run.sample().await;
    let requests_before = run.requests().await;
    let start = Instant::now();
    let mut published_at: HashMap<String, OffsetDateTime> = HashMap::with_capacity(n as usize);
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    for (i, (payload, expected)) in readings.into_iter().enumerate() {
        tokio::time::sleep_until((start + period * i as u32).into()).await;
        published_at.insert(expected.time, OffsetDateTime::now_utc());
        client
            .publish("vitals/bench", QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }
    // A server that cannot keep up gets `BENCH_STEADY_DRAIN_SECONDS` (120) after the last
    // publish; what it stored by then is what is reported.
    let give_up = Duration::from_secs(seconds + env("BENCH_STEADY_DRAIN_SECONDS", 120));
    let delivered = run.wait_delivered(n, start, give_up).await;
    let elapsed = start.elapsed().as_secs_f64();
    let after = run.sample().await;
    let _ = client.disconnect().await;
    poller.abort();
    let stored = run.stored_times().await;
    let distinct: HashSet<&str> = stored.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        distinct.len(),
        stored.len(),
        "a reading was stored twice (each published reading has its own time)"
    );
    let mut latencies: Vec<f64> = stored
        .iter()
        .filter_map(|(effective, stored)| {
            let sent = published_at.get(effective)?;
            Some((*stored - *sent).as_seconds_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let mut f = Figures {
        readings: delivered,
        published: n,
        elapsed,
        requests: run.requests().await - requests_before,
        latency_ms: (!latencies.is_empty()).then(|| (pick(0.5), pick(0.99))),
        ..Figures::default()
    };
    run.finish(&mut f, before, after);
    f
}

/// Which destination the `uplinks` scenario sends through.
#[derive(Debug, Clone, Copy)]
enum Through {
    Fhir,
    Mqtt,
    Kafka,
}

/// `n` readings at full speed through one uplink; `None` when its broker is not installed.
async fn through(binary: &PathBuf, uplink: Through) -> Option<Figures> {
    let n = env("BENCH_UPLINK_READINGS", 30_000);
    let pki = TestPki::generate();
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ops_port = free_port().unwrap();
    let client = pki.client_files();
    let mut upstream = None;
    let mut sink = None;
    let mut kafka = None;
    let (name, table) = match uplink {
        Through::Fhir => {
            let u = Upstream::start(UpstreamConfig::new(&pki)).await.unwrap();
            let table = format!(
                "[uplink.fhir]\nbase_url = \"{}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                u.url(),
                pki.ca_cert_path().display(),
                client.cert.display(),
                client.key.display()
            );
            upstream = Some(u);
            ("fhir", table)
        }
        Through::Mqtt => {
            let b = vitalbridge_tests::streams::sink_broker(&pki, "vitalbridge/#");
            let table = vitalbridge_tests::streams::mqtt_uplink(&b, &pki, "");
            sink = Some(b);
            ("mqtt", table)
        }
        Through::Kafka => {
            if !vitalbridge_tests::kafka::venv()
                .join("bin/python3")
                .exists()
            {
                return None;
            }
            let k = vitalbridge_tests::kafka::KafkaBroker::start();
            k.create_topic("bench", 4);
            let table = format!(
                "[uplink.kafka]\nbootstrap = [\"{}\"]\ntopic = \"bench\"\n",
                k.bootstrap()
            );
            kafka = Some(k);
            ("kafka", table)
        }
    };
    let config = format!(
        "[gateway]\nid = \"bench-gw\"\ndata_dir = \"{data}\"\n[sources.mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\ntopics = [\"vitals/#\"]\n[default_patient]\nsystem = \"{psys}\"\nid = \"{pid}\"\n[uplink]\nbatch_size = {batch}\nin_flight = {in_flight}\n{table}{ops}",
        data = dir.path().join("data").display(),
        psys = scenario::PATIENT_SYSTEM,
        pid = scenario::PATIENT_ID,
        port = broker.port(),
        batch = env("BENCH_BATCH", 500),
        in_flight = env("BENCH_IN_FLIGHT", 2),
        ops = vitalbridge_tests::ops::ops_table(ops_port, ""),
    );
    let config = with_worker_threads(config);
    std::env::set_var("VITALBRIDGE_BIN", binary);
    let mut gw = GatewayProcess::start(dir.path(), &config).unwrap();
    assert!(
        gw.wait_for_log("subscribed to MQTT topics", Duration::from_secs(30)),
        "{}",
        gw.log()
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ops_port));
    let delivered = || async move {
        let m = vitalbridge_tests::ops::get(addr, "/metrics").await.ok()?;
        let text = String::from_utf8(m.body.to_vec()).ok()?;
        let prefix = format!("vitalbridge_readings_out_total{{uplink=\"{name}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let (payloads, _): (Vec<_>, Vec<_>) = (0..n).map(|i| scenario::reading(i, 100)).unzip();
    let (cpu_before, _) = proc_figures(gw.pid());
    let start = Instant::now();
    let publish = tokio::spawn(publish_qos1(broker.port(), "vitals/bench", payloads));
    while delivered().await.unwrap_or(0.0) < n as f64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "not all readings arrived: {}",
            gw.log()
        );
    }
    let elapsed = start.elapsed().as_secs_f64();
    publish.await.unwrap().expect("published");
    let (cpu_after, rss_kib) = proc_figures(gw.pid());
    stop(&mut gw);
    drop((upstream, sink, kafka));
    Some(Figures {
        readings: n,
        elapsed,
        cpu: cpu_after - cpu_before,
        rss_kib,
        ..Figures::default()
    })
}

fn print(title: &str, runs: &[(&str, Figures)]) {
    println!("\n{title}");
    let row = |label: &str, value: &dyn Fn(&Figures) -> String| {
        let cells: Vec<String> = runs
            .iter()
            .map(|(_, f)| format!("{:>16}", value(f)))
            .collect();
        println!("  {label:<34}{}", cells.join(""));
    };
    let names: Vec<String> = runs.iter().map(|(n, _)| format!("{n:>16}")).collect();
    println!("  {:<34}{}", "", names.join(""));
    row("readings stored", &|f| f.readings.to_string());
    row("readings published", &|f| {
        if f.published == 0 {
            f.readings.to_string()
        } else {
            f.published.to_string()
        }
    });
    row("end-to-end time (s)", &|f| format!("{:.2}", f.elapsed));
    row("throughput (readings/s)", &|f| {
        format!("{:.0}", f.readings as f64 / f.elapsed)
    });
    row("gateway CPU (s)", &|f| format!("{:.2}", f.cpu));
    row("gateway CPU-ms per reading", &|f| {
        if f.readings == 0 {
            "-".into()
        } else {
            format!("{:.4}", f.cpu_ms_per_reading())
        }
    });
    if runs.iter().any(|(_, f)| f.switches > 0) {
        row("context switches per reading", &|f| {
            if f.readings == 0 || f.switches == 0 {
                "-".into()
            } else {
                format!("{:.2}", f.switches as f64 / f.readings as f64)
            }
        });
    }
    row("allocations per reading", &|f| {
        f.allocations.map_or("n/a".into(), |a| {
            format!("{:.1}", a as f64 / f.readings as f64)
        })
    });
    row("buffer commits per 10k readings", &|f| match f.commits {
        Some(c) if f.readings > 0 => format!("{:.0}", c as f64 * 10_000.0 / f.readings as f64),
        _ => "n/a".into(),
    });
    if runs.iter().any(|(_, f)| f.disk_bytes > 0) {
        row("disk KiB written per reading", &|f| {
            if f.readings == 0 || f.disk_bytes == 0 {
                "-".into()
            } else {
                format!("{:.2}", f.disk_bytes as f64 / 1024.0 / f.readings as f64)
            }
        });
    }
    row("gateway peak RSS (MiB)", &|f| {
        format!("{:.1}", f.rss_kib as f64 / 1024.0)
    });
    // The `uplinks` scenario measures only the gateway: leave out what it did not count.
    if runs.iter().any(|(_, f)| f.requests > 0) {
        row("FHIR requests per 10k readings", &|f| {
            if f.readings == 0 {
                format!("{} requests", f.requests)
            } else {
                format!("{:.0}", f.requests as f64 * 10_000.0 / f.readings as f64)
            }
        });
    }
    if runs.iter().any(|(_, f)| f.latency_ms.is_some()) {
        row("latency p50 / p99 (ms)", &|f| {
            f.latency_ms
                .map_or("-".into(), |(p50, p99)| format!("{p50:.0} / {p99:.0}"))
        });
    }
    if runs
        .iter()
        .any(|(_, f)| f.broker_cpu > 0.0 || f.harness_cpu > 0.0)
    {
        row("mosquitto CPU (s)", &|f| format!("{:.2}", f.broker_cpu));
        row("publisher+server CPU (s)", &|f| {
            format!("{:.2}", f.harness_cpu)
        });
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks benches to list their tests
    }
    let current = vitalbridge_tests::gateway::binary();
    let mut binaries = vec![("this build", current)];
    if let Some(baseline) = std::env::var_os("BENCH_BASELINE") {
        binaries.insert(0, ("baseline", PathBuf::from(baseline)));
    }
    let scenarios =
        std::env::var("BENCH_SCENARIOS").unwrap_or_else(|_| "full,steady,uplinks,hl7".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "vitalbridge pipeline benchmark (MQTT QoS1 -> SQLite synchronous=FULL, sealed -> HTTPS mTLS FHIR transaction Bundles); \
         batch_size {} / in_flight {}; {} cores shared by broker, publisher, upstream and gateway",
        env("BENCH_BATCH", 500),
        env("BENCH_IN_FLIGHT", 2),
        std::thread::available_parallelism().map(|p| p.get()).unwrap_or(0)
    );
    for (label, bin) in &binaries {
        println!("  {label}: {}", bin.display());
    }
    rt.block_on(async {
        if scenarios.contains("full") {
            let mut runs = Vec::new();
            for (label, bin) in &binaries {
                runs.push((*label, full_speed(bin).await));
            }
            print("full speed", &runs);
        }
        if scenarios.contains("steady") {
            // Beside the project's upstream, the real engine in the same run.
            let mut runs = Vec::new();
            for (label, bin) in &binaries {
                runs.push((*label, steady(bin, Server::Upstream).await));
                if !scenarios.contains("no-engine") {
                    let engine_label = if binaries.len() > 1 {
                        format!("{label}, Medplum")
                    } else {
                        "Medplum engine".to_owned()
                    };
                    let figures = steady(bin, Server::Engine).await;
                    runs.push((Box::leak(engine_label.into_boxed_str()), figures));
                }
            }
            print(
                &format!(
                    "steady {} readings/s for {} s",
                    env("BENCH_STEADY_RATE", 1_000),
                    env("BENCH_STEADY_SECONDS", 30)
                ),
                &runs,
            );
        }
        if scenarios.contains("uplinks") {
            for (label, bin) in &binaries {
                let mut runs = Vec::new();
                for (name, uplink) in [
                    ("FHIR", Through::Fhir),
                    ("MQTT", Through::Mqtt),
                    ("Kafka", Through::Kafka),
                ] {
                    match through(bin, uplink).await {
                        Some(f) => runs.push((name, f)),
                        None => println!("  (Kafka skipped: tests/.venv-kafka not installed)"),
                    }
                }
                print(&format!("through each uplink alone ({label})"), &runs);
            }
        }
    });
    if scenarios.contains("hl7") {
        for (label, bin) in &binaries {
            println!("\n{label}:");
            std::env::set_var("VITALBRIDGE_BIN", bin);
            hl7_section(
                env("BENCH_HL7_MESSAGES", 20_000),
                env("BENCH_HL7_SENDERS", 8) as usize,
            );
        }
    }
}

/// One PCD-01 message of sender `sender`: 8 OBX (heart rate, SpO2, pulse rate, respiration,
/// temperature, and the cuff's systolic/diastolic/mean, one panel), so 6 readings.
fn hl7_message(sender: usize, i: u64) -> Vec<u8> {
    let t = 1_767_600_000 + i as i64;
    let when = time::OffsetDateTime::from_unix_timestamp(t).unwrap();
    let stamp = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}+0000",
        when.year(),
        u8::from(when.month()),
        when.day(),
        when.hour(),
        when.minute(),
        when.second()
    );
    let v = |base: u64, spread: u64| base + (i * 7 + sender as u64) % spread;
    format!(
        "MSH|^~\\&|BENCH^00122118390{sender:05}^EUI-64|ICU|||{stamp}||ORU^R01^ORU_R01|B{sender}-{i}|P|2.6|||NE|AL||UNICODE UTF-8\r\
         PID|||MRN-{sender}^^^HOSP&1.2.840.99999.1&ISO^MR\r\
         PV1||I|ICU^{sender}^A\r\
         OBR|1|||182777000^monitoring of patient^SCT|||{stamp}\r\
         OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|{}|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||F|||{stamp}\r\
         OBX|2|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|{}|262688^MDC_DIM_PERCENT^MDC|||||F|||{stamp}\r\
         OBX|3|NM|149530^MDC_PULS_OXIM_PULS_RATE^MDC|1.2.1.2|{}|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||F|||{stamp}\r\
         OBX|4|NM|151562^MDC_RESP_RATE^MDC|1.5.1.1|{}|264928^MDC_DIM_RESP_PER_MIN^MDC|||||F|||{stamp}\r\
         OBX|5|NM|150344^MDC_TEMP^MDC|1.4.1.1|36.{}|268192^MDC_DIM_DEGC^MDC|||||F|||{stamp}\r\
         OBX|6|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.3.1.1|{}|266016^MDC_DIM_MMHG^MDC|||||F|||{stamp}\r\
         OBX|7|NM|150022^MDC_PRESS_BLD_NONINV_DIA^MDC|1.3.1.2|{}|266016^MDC_DIM_MMHG^MDC|||||F|||{stamp}\r\
         OBX|8|NM|150023^MDC_PRESS_BLD_NONINV_MEAN^MDC|1.3.1.3|{}|266016^MDC_DIM_MMHG^MDC|||||F|||{stamp}\r",
        v(60, 40),
        v(90, 10),
        v(60, 40),
        v(12, 10),
        v(0, 10),
        v(110, 30),
        v(70, 20),
        v(85, 20),
    )
    .into_bytes()
}

/// `gateway.worker_threads = BENCH_WORKER_THREADS` in a config that has a `[gateway]` table
/// (the config's default when unset).
fn with_worker_threads(config: String) -> String {
    match std::env::var("BENCH_WORKER_THREADS") {
        Ok(n) => {
            assert!(config.contains("[gateway]\n"), "{config}");
            config.replacen(
                "[gateway]\n",
                &format!("[gateway]\nworker_threads = {n}\n"),
                1,
            )
        }
        Err(_) => config,
    }
}

/// The HL7 v2 source: messages per second with the ACK after a durable commit, and the
/// gateway's CPU per message.
fn hl7_section(n: u64, senders: usize) {
    use vitalbridge_tests::mllp::Sender;
    let dir = tempfile::tempdir().unwrap();
    let port = vitalbridge_tests::mosquitto::free_port().unwrap();
    let mut config = format!(
        "[gateway]\ndata_dir = \"{}\"\n[sources.hl7]\nlisten = \"127.0.0.1:{port}\"\n",
        dir.path().join("data").display()
    );
    if let Ok(ms) = std::env::var("BENCH_COMMIT_LINGER_MS") {
        config.push_str(&format!("[buffer]\ncommit_linger_ms = {ms}\n"));
    }
    let config = with_worker_threads(config);
    let mut gw = GatewayProcess::start(dir.path(), &config).unwrap();
    assert!(
        gw.wait_for_log("HL7 v2 MLLP listener up", Duration::from_secs(30)),
        "{}",
        gw.log()
    );
    let pid = gw.pid();
    let (cpu_before, _) = proc_figures(pid);
    let (harness_before, _) = proc_figures(std::process::id());
    let per_sender = n / senders as u64;
    let start = Instant::now();
    let threads: Vec<_> = (0..senders)
        .map(|s| {
            std::thread::spawn(move || {
                let mut c = Sender::connect(port).unwrap();
                for i in 0..per_sender {
                    let ack = c
                        .send(&hl7_message(s, i), Duration::from_secs(30))
                        .unwrap()
                        .expect("an ACK");
                    assert_eq!(ack.code, "AA", "{}", ack.text);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = start.elapsed();
    let (cpu_after, rss_kib) = proc_figures(pid);
    let (harness_after, _) = proc_figures(std::process::id());
    stop(&mut gw);
    let sent = per_sender * senders as u64;
    let cpu = cpu_after - cpu_before;
    println!("vitalbridge HL7 v2 source benchmark (MLLP, PCD-01 ORU^R01 with 8 OBX / 6 readings, AA after commit with synchronous=FULL; NDJSON uplink running)");
    println!("  messages:                 {sent} over {senders} connections, one in flight each");
    println!("  time to the last AA:      {:.2} s", elapsed.as_secs_f64());
    println!(
        "  throughput:               {:.0} messages/s ({:.0} readings/s)",
        sent as f64 / elapsed.as_secs_f64(),
        6.0 * sent as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  gateway CPU:              {cpu:.2} s ({:.0} µs per message, uplink included)",
        cpu * 1e6 / sent as f64
    );
    println!(
        "  gateway peak RSS (VmHWM): {:.1} MiB",
        rss_kib as f64 / 1024.0
    );
    println!(
        "  senders CPU:              {:.2} s (this process)",
        harness_after - harness_before
    );
    println!(
        "  machine:                  {} cores, shared with the senders",
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(0)
    );
}
