//! Benchmark: MQTT → buffer (durable) → HTTPS mTLS upstream, end to end, with the real
//! gateway binary. Prints figures; asserts nothing about speed.
//!
//! ```sh
//! cargo build --release -p vitalbridge
//! cargo bench -p vitalbridge-tests --bench pipeline            # 100k readings
//! BENCH_READINGS=20000 cargo bench -p vitalbridge-tests --bench pipeline
//! ```
//!
//! Everything runs on this machine: mosquitto, the publisher, the FHIR test upstream (in this
//! process) and the gateway. The gateway's own CPU time and peak RSS are read from
//! `/proc/<pid>` just before it is stopped.

use std::time::{Duration, Instant};

use vitalbridge_tests::gateway::GatewayProcess;
use vitalbridge_tests::mosquitto::{publish_qos1, Mosquitto, MosquittoOptions};
use vitalbridge_tests::pki::TestPki;
use vitalbridge_tests::scenario;
use vitalbridge_tests::upstream::{Upstream, UpstreamConfig};

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

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks benches to list their tests
    }
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n = env("BENCH_READINGS", 100_000);
    // The gateway's defaults unless overridden.
    let batch_size = env("BENCH_BATCH", 500);
    let in_flight = env("BENCH_IN_FLIGHT", 2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let pki = TestPki::generate();
        let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
        let upstream = Upstream::start(UpstreamConfig::new(&pki)).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = scenario::mqtt_to_fhir(&dir.path().join("data"), broker.port(), &upstream.url(), &pki, "")
            .replace("batch_size = 500", &format!("batch_size = {batch_size}"))
        .replace("in_flight = 2", &format!("in_flight = {in_flight}"));
        let (payloads, _) = (0..n).map(|i| scenario::reading(i, 100)).unzip::<_, _, Vec<_>, Vec<_>>();

        let gw = GatewayProcess::start(dir.path(), &config).unwrap();
        assert!(gw.wait_for_log("subscribed to MQTT topics", Duration::from_secs(30)), "{}", gw.log());
        let pid = gw.pid();
        let (cpu_before, _) = proc_figures(pid);
        let broker_pid = broker.pid().unwrap_or(0);
        let (broker_before, _) = proc_figures(broker_pid);
        let (harness_before, _) = proc_figures(std::process::id());

        let start = Instant::now();
        let publish = tokio::spawn(publish_qos1(broker.port(), "vitals/bench", payloads));
        // Progress every second: where the backlog sits tells ingest from uplink limits.
        // Polled every 10 ms so the end-to-end time is not rounded up to a whole second.
        let verbose = std::env::var_os("BENCH_VERBOSE").is_some();
        let mut last = 0;
        let mut last_report = Instant::now();
        while upstream.observation_count() < n as usize {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if verbose && last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                let delivered = upstream.observation_count();
                let (_, stats, _) = vitalbridge_tests::gateway::run_cli(dir.path(), &["queue", "stats", "-c", "gateway.toml"]);
                let pending = stats.lines().next().unwrap_or_default().to_owned();
                eprintln!("  t={:>5.1}s delivered={delivered} (+{}/s) buffer {pending}", start.elapsed().as_secs_f64(), delivered - last);
                last = delivered;
            }
            assert!(start.elapsed() < Duration::from_secs(1800), "not all readings arrived");
        }
        let elapsed = start.elapsed();
        let published_in = publish.await.unwrap().map(|_| ()).map_err(|e| e.to_string());
        let (cpu_after, rss_kib) = proc_figures(pid);
        let (broker_after, _) = proc_figures(broker_pid);
        let (harness_after, _) = proc_figures(std::process::id());
        upstream.assert_no_duplicate_identifiers();

        let rate = n as f64 / elapsed.as_secs_f64();
        let cpu = cpu_after - cpu_before;
        println!("vitalbridge pipeline benchmark (MQTT QoS1 -> SQLite synchronous=FULL -> HTTPS mTLS FHIR transaction Bundles)");
        println!("  readings:                 {n}");
        println!("  publisher:                {published_in:?}");
        println!("  end-to-end time:          {:.2} s", elapsed.as_secs_f64());
        println!("  throughput:               {rate:.0} readings/s");
        println!("  gateway CPU:              {cpu:.2} s ({:.2} CPU-s per 100k readings)", cpu * 100_000.0 / n as f64);
        println!("  gateway peak RSS (VmHWM): {:.1} MiB", rss_kib as f64 / 1024.0);
        println!("  gateway alone, per core:  {:.0} readings/s (readings / gateway CPU-s)", n as f64 / cpu);
        println!("  mosquitto CPU:            {:.2} s", broker_after - broker_before);
        println!("  publisher+upstream CPU:   {:.2} s (this process)", harness_after - harness_before);
        println!("  batch_size / in_flight:   {batch_size} / {in_flight}");
        println!("  machine:                  {} cores; broker, publisher and upstream share them", std::thread::available_parallelism().map(|p| p.get()).unwrap_or(0));
    });
}
