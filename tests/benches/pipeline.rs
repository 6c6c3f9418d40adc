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
//!
//! A second section measures the HL7 v2 source: `BENCH_HL7_SENDERS` connections (default 8)
//! each send PCD-01 ORU^R01 messages (8 OBX, 6 readings each) one at a time and wait for the
//! AA, which the gateway sends only after the commit (`synchronous=FULL`); the default NDJSON
//! uplink runs meanwhile. `BENCH_HL7_MESSAGES` (default 20,000); `BENCH_SECTION=mqtt` or
//! `hl7` runs one section only.

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
    let section = std::env::var("BENCH_SECTION").unwrap_or_default();
    if section != "mqtt" {
        hl7_section(
            env("BENCH_HL7_MESSAGES", 20_000),
            env("BENCH_HL7_SENDERS", 8) as usize,
        );
    }
    if section == "hl7" {
        return;
    }
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

/// The HL7 v2 source: messages per second with the ACK after a durable commit, and the
/// gateway's CPU per message.
fn hl7_section(n: u64, senders: usize) {
    use vitalbridge_tests::mllp::Sender;
    let dir = tempfile::tempdir().unwrap();
    let port = vitalbridge_tests::mosquitto::free_port().unwrap();
    let config = format!(
        "[gateway]\ndata_dir = \"{}\"\n[sources.hl7]\nlisten = \"127.0.0.1:{port}\"\n",
        dir.path().join("data").display()
    );
    let gw = GatewayProcess::start(dir.path(), &config).unwrap();
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
