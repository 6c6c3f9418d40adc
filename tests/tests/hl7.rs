//! HL7 v2 end to end, with the real gateway binary, real sockets and real SQLite:
//! PCD-01 messages through the MLLP listener (right readings, right ACKs, each Observation
//! once), malformed input and framing faults, ACK after commit across a `kill -9`, the HL7
//! uplink against an independent receiver (Python `hl7` package) that answers AA, AE, AR or
//! nothing while both sides are killed, and the round trip PCD-01 in → ORU^R01 out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use vitalbridge_tests::gateway::{run_cli, GatewayProcess};
use vitalbridge_tests::mllp::{
    fixture, frame, ndjson_observations, send_until_aa, Receiver, Sender, START,
};
use vitalbridge_tests::mosquitto::free_port;
use vitalbridge_tests::validator;

const ACK_WAIT: Duration = Duration::from_secs(10);

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A gateway with the HL7 listener on a free port; `extra` is appended to the config.
fn start_gateway(dir: &Path, source_extra: &str, extra: &str) -> (GatewayProcess, u16) {
    let port = free_port().unwrap();
    let ops = free_port().unwrap();
    let config = format!(
        r#"[gateway]
data_dir = "{data}"

[sources.hl7]
listen = "127.0.0.1:{port}"
{source_extra}

[ops.http]
listen = "127.0.0.1:{ops}"

{extra}
"#,
        data = dir.join("data").display()
    );
    let gw = GatewayProcess::start(dir, &config).unwrap();
    assert!(
        gw.wait_for_log("HL7 v2 MLLP listener up", Duration::from_secs(20)),
        "{}",
        gw.log()
    );
    (gw, port)
}

fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the NDJSON output holds `n` Observations, then a little longer for a
/// would-be duplicate, and returns them.
fn observations(dir: &Path, n: usize, gw: &GatewayProcess) -> Vec<Value> {
    let out = dir.join("data/out");
    let got = wait_for(Duration::from_secs(30), || {
        let o = ndjson_observations(&out);
        (o.len() >= n).then_some(())
    });
    assert!(
        got.is_some(),
        "only {} of {n} Observations\n{}",
        ndjson_observations(&out).len(),
        tail(&gw.log())
    );
    std::thread::sleep(Duration::from_millis(1500));
    ndjson_observations(&out)
}

fn identifier(o: &Value) -> String {
    o["identifier"][0]["value"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn assert_each_once(obs: &[Value]) {
    let mut seen = BTreeSet::new();
    for o in obs {
        assert!(
            seen.insert(identifier(o)),
            "duplicate Observation {}",
            identifier(o)
        );
    }
}

fn mdc(o: &Value) -> String {
    o["code"]["coding"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["system"] == "urn:iso:std:iso:11073:10101")
                .map(|c| c["code"].as_str().unwrap_or_default().to_owned())
        })
        .unwrap_or_default()
}

fn loinc(o: &Value) -> Option<String> {
    o["code"]["coding"].as_array().and_then(|c| {
        c.iter()
            .find(|c| c["system"] == "http://loinc.org")
            .map(|c| c["code"].as_str().unwrap_or_default().to_owned())
    })
}

/// The one Observation with MDC code `code` whose identifier contains `part`.
fn find<'a>(obs: &'a [Value], code: &str, part: &str) -> &'a Value {
    let found: Vec<&Value> = obs
        .iter()
        .filter(|o| mdc(o) == code && identifier(o).contains(part))
        .collect();
    assert_eq!(found.len(), 1, "{code} {part}: {found:?}");
    found[0]
}

fn quantity(o: &Value) -> (String, String) {
    let q = &o["valueQuantity"];
    assert_eq!(q["system"], "http://unitsofmeasure.org", "{o}");
    (
        q["value"].to_string(),
        q["code"].as_str().unwrap_or_default().to_owned(),
    )
}

#[test]
fn pcd01_messages_through_the_listener_give_the_right_readings_and_acks_and_each_observation_once()
{
    let dir = tempfile::tempdir().unwrap();
    let (gw, port) = start_gateway(
        dir.path(),
        "time_zone = \"Europe/Berlin\"\nno_value = [\"-999\"]",
        "[uplink]\nbatch_size = 100\nretry_initial_ms = 50\nretry_max_ms = 1000\n",
    );
    let messages = [
        (
            "monitor_vitals.hl7",
            "MON-0001",
            "2.6",
            "BEDMON^0012211839000001^EUI-64",
        ),
        ("nibp.hl7", "VSM-20260105-0001", "2.5", "VSM-GW"),
        ("spo2.hl7", "OXI-77", "2.6", "OXI-GW"),
        (
            "temperature.hl7",
            "T-9",
            "2.3.1",
            "THERMO^00A0B1FFFEC2D3E4^EUI-64",
        ),
        ("pump.hl7", "PUMP-31", "2.6", "PUMP-GW"),
        ("escaped.hl7", "ESC-1", "2.6", ""),
        (
            "latin1.hl7",
            "LAT-1",
            "2.6",
            "LAT-GW^0012211839000006^EUI-64",
        ),
    ];
    let mut s = Sender::connect(port).unwrap();
    // Everything twice: the second round is a sender that lost the ACKs and resends.
    for round in 0..2 {
        for (name, control_id, version, sender) in messages {
            let ack = s
                .send(&fixture(name), ACK_WAIT)
                .unwrap()
                .unwrap_or_else(|| panic!("{name}: no ACK\n{}", tail(&gw.log())));
            assert_eq!(ack.code, "AA", "{name} round {round}: {}", ack.text);
            assert_eq!(ack.control_id, control_id, "{name}");
            if name != "escaped.hl7" {
                // Sender and receiver swapped, the version echoed.
                assert_eq!(ack.field("MSH", 5), sender, "{name}");
                assert_eq!(ack.field("MSH", 12), version, "{name}");
            }
            if name == "latin1.hl7" {
                assert_eq!(ack.field("MSH", 18), "8859/1");
            }
        }
        // A batch: one answer frame, an ACK per message.
        s.write_raw(&frame(&fixture("batch.hl7"))).unwrap();
        let reply = s.read_frame(ACK_WAIT).unwrap().expect("batch ACK");
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("BHS|"), "{text}");
        assert!(
            text.contains("MSA|AA|B-1\r") && text.contains("MSA|AA|B-2\r"),
            "{text}"
        );
        assert!(text.contains("BTS|2"), "{text}");
    }
    // 10 + 2 + 3 + 1 + 1 + 1 + 1 + 2 readings; the pump's unknown metric is a dead letter.
    let obs = observations(dir.path(), 21, &gw);
    assert_eq!(obs.len(), 21, "{}", tail(&gw.log()));
    assert_each_once(&obs);

    let spo2 = find(&obs, "150456", "0012211839000001");
    assert_eq!(quantity(spo2), ("97".into(), "%".into()));
    assert_eq!(loinc(spo2).as_deref(), Some("2708-6"));
    assert_eq!(spo2["status"], "final");
    assert_eq!(spo2["effectiveDateTime"], "2026-01-05T10:15:00+01:00");
    assert_eq!(
        spo2["subject"]["identifier"]["system"],
        "urn:oid:1.2.840.99999.1"
    );
    assert_eq!(spo2["subject"]["identifier"]["value"], "MRN-4711");
    let art = find(&obs, "150032", "0012211839000001");
    let parts: Vec<(String, String)> = art["component"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["code"]["coding"][0]["code"].to_string(),
                c["valueQuantity"]["value"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        parts,
        [
            ("\"8480-6\"".into(), "118".into()),
            ("\"8462-4\"".into(), "76".into()),
            ("\"8478-0\"".into(), "90".into())
        ]
    );
    // Two temperatures of one metric in two channels stay two Observations.
    assert_eq!(
        quantity(find(&obs, "150344", "-c1.4.1")),
        ("37.2".into(), "Cel".into())
    );
    assert_eq!(
        quantity(find(&obs, "150344", "-c1.4.2")),
        ("36.4".into(), "Cel".into())
    );
    let bp = find(&obs, "150020", "0012211839000002");
    assert_eq!(bp["status"], "preliminary");
    // No offset in the message: Europe/Berlin.
    assert_eq!(bp["effectiveDateTime"], "2026-01-05T08:29:45+01:00");
    assert_eq!(
        bp["subject"]["identifier"]["system"],
        "https://hospital.example/mrn"
    );
    let pr = find(&obs, "149530", "0012211839000003");
    assert_eq!(pr["dataAbsentReason"]["coding"][0]["code"], "error");
    assert!(pr.get("valueQuantity").is_none());
    let temp = find(&obs, "188424", "00A0B1FFFEC2D3E4");
    assert_eq!(quantity(temp), ("98.6".into(), "[degF]".into()));
    assert_eq!(temp["status"], "corrected");
    assert_eq!(temp["effectiveDateTime"], "2026-01-05T13:55:00-05:00");
    assert_eq!(
        quantity(find(&obs, "157784", "00A0B1FFFEC2D3E5")),
        ("12.5".into(), "mL/h".into())
    );
    let escaped = find(&obs, "150456", "0012211839000005");
    assert_eq!(escaped["subject"]["identifier"]["value"], "X:77");
    assert_eq!(
        quantity(find(&obs, "188736", "0012211839000006")),
        ("72.5".into(), "kg".into())
    );
    // The pump's metric the catalog lacks: one dead letter, kept once over both rounds.
    let (code, out, err) = run_cli(dir.path(), &["queue", "dead-letters", "-c", "gateway.toml"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert!(rows[0].contains("157884"), "{out}");
    // An independent FHIR R4 validator accepts every Observation.
    validator::assert_valid_fhir(&obs);
}

/// A good message with its own control id, value and minute.
fn good(i: u32) -> Vec<u8> {
    format!(
        "MSH|^~\\&|MON^0012211839000007^EUI-64|ICU|||20260105101500+0100||ORU^R01^ORU_R01|G-{i}|P|2.6\rPID|||77^^^HOSP&1.2.3&ISO\rOBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.1.1.1|{}|262688^MDC_DIM_PERCENT^MDC|||||F|||202601051{:03}00+0100\r",
        80 + i % 20,
        i % 60
    )
    .into_bytes()
}

fn err_code(ack: &vitalbridge_tests::mllp::Ack) -> String {
    ack.field("ERR", 3)
        .split('^')
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn malformed_input_and_framing_faults_get_their_answer_and_the_connection_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let (mut gw, port) = start_gateway(
        dir.path(),
        "max_message_bytes = 4096\nread_timeout_s = 2",
        "[uplink]\nretry_initial_ms = 50\nretry_max_ms = 1000\n",
    );
    let mut s = Sender::connect(port).unwrap();
    let send = |s: &mut Sender, m: &[u8]| s.send(m, ACK_WAIT).unwrap().expect("an ACK");
    // Bytes outside a frame are discarded, never a message.
    s.write_raw(b"GET / HTTP/1.1\r\n\r\nnoise").unwrap();
    assert_eq!(send(&mut s, &good(1)).code, "AA");

    let good_text = String::from_utf8(good(2)).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("not HL7", b"this is not HL7".to_vec(), "AR", ""),
        ("truncated MSH", b"MSH|^~\\&|".to_vec(), "AR", ""),
        (
            "other type",
            good_text.replace("ORU^R01^ORU_R01", "ADT^A01").into_bytes(),
            "AR",
            "200",
        ),
        (
            "old version",
            good_text.replace("|P|2.6", "|P|2.2").into_bytes(),
            "AR",
            "203",
        ),
        (
            "non-numeric NM",
            good_text.replace("|82|", "|8x2|").into_bytes(),
            "AE",
            "102",
        ),
        (
            "wrong escape",
            good_text.replace("|82|", "|8\\Z\\2|").into_bytes(),
            "AE",
            "102",
        ),
        (
            "unclosed escape",
            good_text.replace("|82|", "|82\\|").into_bytes(),
            "AE",
            "102",
        ),
        (
            "missing OBX-3",
            good_text
                .replace("150456^MDC_PULS_OXIM_SAT_O2^MDC", "")
                .into_bytes(),
            "AE",
            "101",
        ),
        (
            "bad charset",
            good_text
                .replace("|P|2.6", "|P|2.6||||||UNICODE UTF-8")
                .replace("ICU", "IC\u{0}")
                .into_bytes()
                .into_iter()
                .map(|b| if b == 0 { 0xff } else { b })
                .collect(),
            "AR",
            "",
        ),
    ];
    for (what, message, code, hl7_code) in cases {
        let ack = send(&mut s, &message);
        assert_eq!(ack.code, code, "{what}: {}", ack.text);
        if !hl7_code.is_empty() {
            assert_eq!(err_code(&ack), hl7_code, "{what}: {}", ack.text);
        }
    }
    // The AE names where: OBX 1, field 5.
    let ack = send(&mut s, good_text.replace("|82|", "|8x2|").as_bytes());
    assert_eq!(ack.field("ERR", 2), "OBX^1^5");
    assert_eq!(ack.control_id, "G-2");

    // Over the size limit: AR with the control id, and the connection stays usable.
    let mut big = good(3);
    big.extend(format!("NTE|1||{}\r", "x".repeat(10_000)).into_bytes());
    let ack = send(&mut s, &big);
    assert_eq!(ack.code, "AR", "{}", ack.text);
    assert_eq!(ack.control_id, "G-3");
    assert_eq!(send(&mut s, &good(4)).code, "AA");

    // A partial frame gets no ACK; a new start block abandons it.
    let partial = &good(5)[..60];
    let mut raw = vec![START];
    raw.extend_from_slice(partial);
    s.write_raw(&raw).unwrap();
    assert!(s.read_frame(Duration::from_millis(700)).unwrap().is_none());
    assert_eq!(send(&mut s, &good(6)).code, "AA");

    // Random frames (no framing bytes inside): an answer each, never a crash.
    let mut seed: u64 = 0x5eed;
    for i in 0..40 {
        let len = 1 + (i * 37) % 300;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let b = (seed >> 33) as u8;
                if b == 0x0b || b == 0x1c {
                    b'x'
                } else {
                    b
                }
            })
            .collect();
        let mut m = if i % 2 == 0 {
            b"MSH|^~\\&|".to_vec()
        } else {
            Vec::new()
        };
        m.extend(bytes);
        let ack = send(&mut s, &m);
        assert!(ack.code == "AR" || ack.code == "AE", "{}", ack.text);
    }
    assert_eq!(send(&mut s, &good(7)).code, "AA");

    // A message that never ends: the connection is closed after read_timeout_s.
    s.write_raw(&[START, b'M', b'S', b'H']).unwrap();
    let closed = s.read_frame(Duration::from_secs(6));
    assert!(closed.is_err(), "{closed:?}");
    let mut s = Sender::connect(port).unwrap();
    assert_eq!(send(&mut s, &good(8)).code, "AA");
    assert!(gw.try_wait().is_none(), "the gateway died\n{}", gw.log());

    // Only the good messages were stored, each once.
    let obs = observations(dir.path(), 5, &gw);
    assert_eq!(obs.len(), 5, "{obs:?}");
    assert_each_once(&obs);
    let log = gw.log();
    assert!(
        log.contains("bytes outside an MLLP frame discarded"),
        "{}",
        tail(&log)
    );
    // No patient identifier or value in the log.
    assert!(
        !log.contains("G-77") && !log.contains("|77^"),
        "{}",
        tail(&log)
    );
}

#[test]
fn no_aa_before_the_commit_and_a_resend_after_kill9_is_stored_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    // The writer lingers a second before committing a small group: the window to kill in.
    let (mut gw, port) = start_gateway(
        dir.path(),
        "",
        "[buffer]\ncommit_linger_ms = 1000\n[uplink]\nretry_initial_ms = 50\nretry_max_ms = 1000\n",
    );
    let message = good(11);
    let mut s = Sender::connect(port).unwrap();
    s.write_raw(&frame(&message)).unwrap();
    // Read, not yet committed: no ACK.
    assert!(s.read_frame(Duration::from_millis(300)).unwrap().is_none());
    gw.kill9();
    // The sender never got an AA.
    let after = s.read_frame(Duration::from_millis(500));
    assert!(!matches!(after, Ok(Some(_))), "an ACK arrived: {after:?}");

    gw.restart().unwrap();
    assert!(gw.wait_for_log("HL7 v2 MLLP listener up", Duration::from_secs(20)));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        ndjson_observations(&dir.path().join("data/out")).is_empty(),
        "the message was stored without its AA"
    );
    // The sender resends until it gets its AA, then once more (a lost ACK): stored once.
    send_until_aa(port, &message, Duration::from_secs(20));
    send_until_aa(port, &message, Duration::from_secs(20));
    let obs = observations(dir.path(), 1, &gw);
    assert_eq!(obs.len(), 1, "{obs:?}");
    assert_eq!(obs[0]["valueQuantity"]["value"], 91);
}

/// `(code, sub-id, value, unit code, status, time)` of an OBX, as the receiver parsed it.
type Obx = (String, String, String, String, String, String);

fn obx_of(o: &Value) -> Obx {
    let s = |k: &str| o[k].as_str().unwrap_or_default().to_owned();
    (
        s("code"),
        s("sub_id"),
        s("value"),
        s("unit_code"),
        s("status"),
        s("time"),
    )
}

fn uplink_config(receiver_port: u16, connections: u32) -> String {
    format!(
        r#"[uplink]
batch_size = 50
in_flight = 2
retry_initial_ms = 50
retry_max_ms = 500

[uplink.hl7]
address = "127.0.0.1:{receiver_port}"
plaintext = true
sending_application = "VB-TEST"
sending_facility = "ICU"
receiving_application = "ENGINE"
receiving_facility = "HOSP"
connections = {connections}
timeout_s = 2
"#
    )
}

/// Source message `i` of the uplink run: SpO2 and heart rate, or (every 20th from 7) a
/// SpO2 of 55 alone, which the receiver answers AE.
fn uplink_message(i: u32) -> (Vec<u8>, Vec<Obx>, bool) {
    let refused = i % 20 == 7;
    let minute = format!("2026010511{:02}{:02}+0100", i / 60, i % 60);
    let spo2 = if refused { 55 } else { 85 + i % 14 };
    let mut m = format!(
        "MSH|^~\\&|MON^0012211839000008^EUI-64|ICU|||{minute}||ORU^R01^ORU_R01|U-{i}|P|2.6\rPID|||88^^^HOSP&1.2.3&ISO\rOBR|1|||182777000^monitoring of patient^SCT|||{minute}\rOBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|{spo2}|262688^MDC_DIM_PERCENT^MDC|||||F|||{minute}\r"
    );
    let mut expected = vec![(
        "150456".into(),
        "1.2.1.1".into(),
        spo2.to_string(),
        "262688".into(),
        "F".into(),
        minute.clone(),
    )];
    if !refused {
        let hr = 60 + i % 30;
        m.push_str(&format!(
            "OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|{hr}|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||F|||{minute}\r"
        ));
        expected.push((
            "147842".into(),
            "1.1.1.1".into(),
            hr.to_string(),
            "264864".into(),
            "F".into(),
            minute,
        ));
    }
    (m.into_bytes(), expected, refused)
}

#[test]
fn the_hl7_uplink_delivers_every_reading_dead_letters_ae_and_survives_killing_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::start(
        &dir.path().join("receiver"),
        &serde_json::json!({"ae_values": ["55"], "ar_first": 3, "silent_first": 5}),
    )
    .unwrap();
    let (mut gw, port) = start_gateway(dir.path(), "", &uplink_config(receiver.port(), 2));
    let n = 100;
    let mut expected: BTreeSet<Obx> = BTreeSet::new();
    let mut refused = 0;
    for i in 0..n {
        let (m, obx, ae) = uplink_message(i);
        if ae {
            refused += 1;
        } else {
            expected.extend(obx);
        }
        send_until_aa(port, &m, Duration::from_secs(30));
        if i == 35 {
            gw.kill9();
            gw.restart().unwrap();
        }
        if i == 70 {
            receiver.kill();
            std::thread::sleep(Duration::from_millis(500));
            receiver.restart().unwrap();
        }
    }
    let delivered = wait_for(Duration::from_secs(60), || {
        let got: BTreeSet<Obx> = receiver
            .accepted()
            .iter()
            .flat_map(|m| m["obx"].as_array().cloned().unwrap_or_default())
            .map(|o| obx_of(&o))
            .collect();
        expected.is_subset(&got).then_some(got)
    });
    let Some(delivered) = delivered else {
        let got: BTreeSet<Obx> = receiver
            .accepted()
            .iter()
            .flat_map(|m| m["obx"].as_array().cloned().unwrap_or_default())
            .map(|o| obx_of(&o))
            .collect();
        let missing: Vec<&Obx> = expected.difference(&got).take(5).collect();
        panic!(
            "{} of {} readings missing, e.g. {missing:?}\n{}",
            expected.difference(&got).count(),
            expected.len(),
            tail(&gw.log())
        );
    };
    // Nothing arrived that was not sent (and no AE'd value was accepted).
    assert_eq!(delivered, expected);
    // Every message the receiver parsed is an ORU^R01 v2.6 with the patient.
    for m in receiver.received() {
        assert!(
            m.get("error").is_none(),
            "the receiver could not parse: {m}"
        );
        assert_eq!(m["type"], "ORU^R01^ORU_R01");
        assert_eq!(m["version"], "2.6");
        assert_eq!(m["pid3"], "88^^^&1.2.3&ISO");
    }
    // The receiver's answers included each kind.
    let answers: BTreeSet<String> = receiver
        .received()
        .iter()
        .map(|m| m["answer"].as_str().unwrap_or_default().to_owned())
        .collect();
    for a in ["AA", "AE", "AR", "none"] {
        assert!(answers.contains(a), "{answers:?}");
    }
    // AE rows are dead letters, with the engine's text; nothing else is.
    let dead = wait_for(Duration::from_secs(20), || {
        let (_, out, _) = run_cli(dir.path(), &["queue", "dead-letters", "-c", "gateway.toml"]);
        let rows: Vec<String> = out.lines().skip(1).map(str::to_owned).collect();
        (rows.len() == refused).then_some(rows)
    })
    .unwrap_or_else(|| {
        let (_, out, _) = run_cli(dir.path(), &["queue", "dead-letters", "-c", "gateway.toml"]);
        panic!("expected {refused} dead letters:\n{out}")
    });
    for row in &dead {
        assert!(row.contains("value refused by the engine"), "{row}");
    }
    let (_, stats, _) = run_cli(dir.path(), &["queue", "stats", "-c", "gateway.toml"]);
    assert!(stats.contains("pending: 0\n"), "{stats}");
}

/// `(code, sub-id, value, unit code, status, time)` of every numeric OBX of a fixture,
/// read with plain string splitting, with the status and time the gateway should send:
/// R → P; the OBR-7 time when OBX-14 is empty; a time without offset in Europe/Berlin
/// (+0100 in January).
fn fixture_obx(name: &str) -> Vec<Obx> {
    let text = String::from_utf8_lossy(&fixture(name)).into_owned();
    let mut obr_time = String::new();
    let mut out = Vec::new();
    for seg in text.split('\r') {
        let f: Vec<&str> = seg.split('|').collect();
        let get = |i: usize| f.get(i).copied().unwrap_or("").to_owned();
        match f[0] {
            "OBR" => obr_time = get(7),
            "OBX" if get(2) == "NM" && get(11) != "X" => {
                let mut time = get(14);
                if time.is_empty() {
                    time = obr_time.clone();
                }
                if !time.contains(['+', '-']) {
                    time.push_str("+0100");
                }
                let status = match get(11).as_str() {
                    "R" => "P".to_owned(),
                    s => s.to_owned(),
                };
                let first = |s: String| s.split('^').next().unwrap_or("").to_owned();
                out.push((first(get(3)), get(4), get(5), first(get(6)), status, time));
            }
            _ => {}
        }
    }
    out
}

#[test]
fn round_trip_pcd01_in_oru_out_carries_the_same_codes_values_units_and_times() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&dir.path().join("receiver"), &serde_json::json!({})).unwrap();
    let (gw, port) = start_gateway(
        dir.path(),
        "time_zone = \"Europe/Berlin\"",
        &uplink_config(receiver.port(), 1),
    );
    let names = [
        "monitor_vitals.hl7",
        "nibp.hl7",
        "temperature.hl7",
        "latin1.hl7",
    ];
    let mut expected: BTreeMap<Obx, usize> = BTreeMap::new();
    for name in names {
        for o in fixture_obx(name) {
            *expected.entry(o).or_default() += 1;
        }
        let mut s = Sender::connect(port).unwrap();
        assert_eq!(
            s.send(&fixture(name), ACK_WAIT).unwrap().unwrap().code,
            "AA"
        );
    }
    assert_eq!(expected.values().sum::<usize>(), 14 + 4 + 1 + 1);
    let got = wait_for(Duration::from_secs(30), || {
        let mut got: BTreeMap<Obx, usize> = BTreeMap::new();
        for m in receiver.accepted() {
            for o in m["obx"].as_array().cloned().unwrap_or_default() {
                *got.entry(obx_of(&o)).or_default() += 1;
            }
        }
        (got.values().sum::<usize>() >= 20).then_some(got)
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", receiver.accepted(), tail(&gw.log())));
    assert_eq!(got, expected);
    // The device and patient and point of care made it too.
    let accepted = receiver.accepted();
    let monitor = accepted
        .iter()
        .find(|m| m["obx"][0]["device"] == "0012211839000001")
        .expect("the monitor's message");
    assert_eq!(monitor["pid3"], "MRN-4711^^^&1.2.840.99999.1&ISO");
    assert_eq!(monitor["pv1_3"], "ICU-EAST^12^A");
}

#[test]
fn the_minimal_config_runs_the_listener_into_ndjson_files() {
    let dir = tempfile::tempdir().unwrap();
    // [gateway] data_dir, [sources.hl7] listen and [ops.http] listen only.
    let (gw, port) = start_gateway(dir.path(), "", "");
    let mut s = Sender::connect(port).unwrap();
    let ack = s
        .send(&fixture("monitor_vitals.hl7"), ACK_WAIT)
        .unwrap()
        .unwrap();
    assert_eq!(ack.code, "AA", "{}", ack.text);
    let obs = observations(dir.path(), 10, &gw);
    assert_eq!(obs.len(), 10);
    assert_each_once(&obs);
}

#[test]
fn mutual_tls_on_the_listener_and_to_the_engine() {
    use vitalbridge_tests::pki::{ServerIdentity, TestPki};
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    let server = pki.server_files(ServerIdentity::Trusted);
    let client = pki.client_files();
    // The engine requires the gateway's client certificate too.
    let receiver = Receiver::start_with_tls(
        &dir.path().join("receiver"),
        &serde_json::json!({}),
        Some((
            server.cert.clone(),
            server.key.clone(),
            Some(pki.ca_cert_path().to_owned()),
        )),
    )
    .unwrap();
    let source_tls = format!(
        "[sources.hl7.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"",
        server.cert.display(),
        server.key.display(),
        pki.ca_cert_path().display()
    );
    let uplink = uplink_config(receiver.port(), 1).replace("plaintext = true\n", "")
        + &format!(
            "[uplink.hl7.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.ca_cert_path().display(),
            client.cert.display(),
            client.key.display()
        );
    let (gw, port) = start_gateway(dir.path(), &source_tls, &uplink);

    // A client without a certificate does not get in, and the refusal is audited.
    let mut anonymous = Sender::connect_tls(port, pki.client_config_without_cert()).unwrap();
    let refused = anonymous.send(&fixture("spo2.hl7"), Duration::from_secs(5));
    assert!(!matches!(refused, Ok(Some(_))), "{refused:?}");
    // A plain TCP client gets nothing either.
    let mut plain = Sender::connect(port).unwrap();
    assert!(!matches!(
        plain.send(&fixture("spo2.hl7"), Duration::from_secs(3)),
        Ok(Some(_))
    ));

    let mut s = Sender::connect_tls(port, pki.client_config()).unwrap();
    let ack = s
        .send(&fixture("nibp.hl7"), ACK_WAIT)
        .unwrap()
        .expect("an ACK over TLS");
    assert_eq!(ack.code, "AA", "{}", ack.text);
    let got = wait_for(Duration::from_secs(30), || {
        let n: usize = receiver
            .accepted()
            .iter()
            .map(|m| m["obx"].as_array().map_or(0, Vec::len))
            .sum();
        (n >= 4).then_some(n)
    });
    assert_eq!(got, Some(4), "{}", tail(&gw.log()));
    let audit = std::fs::read_to_string(dir.path().join("data/audit.log")).unwrap_or_default();
    assert!(audit.contains("source:hl7"), "{audit}");
}

#[test]
fn a_full_buffer_answers_ar_and_stores_nothing_of_the_message() {
    let dir = tempfile::tempdir().unwrap();
    // An engine that is not there: nothing leaves the buffer, which holds 12 readings.
    let nobody = free_port().unwrap();
    // The oximeter's -999 is its "no value" placeholder: a data-absent reading, not a value
    // the plausibility check would refuse.
    let (_gw, port) = start_gateway(
        dir.path(),
        "no_value = [\"-999\"]",
        &format!("[buffer]\ncapacity = 12\n{}", uplink_config(nobody, 1)),
    );
    let mut s = Sender::connect(port).unwrap();
    // 10 readings fit.
    let ack = s
        .send(&fixture("monitor_vitals.hl7"), ACK_WAIT)
        .unwrap()
        .unwrap();
    assert_eq!(ack.code, "AA", "{}", ack.text);
    // 2 more would, 3 would not: the NIBP message (2 readings) fits, the SpO2 one (3) does not.
    let ack = s.send(&fixture("spo2.hl7"), ACK_WAIT).unwrap().unwrap();
    assert_eq!(ack.code, "AR", "{}", ack.text);
    assert_eq!(ack.control_id, "OXI-77");
    assert!(ack.field("ERR", 3).starts_with("207^"), "{}", ack.text);
    assert!(ack.text.contains("buffer full"), "{}", ack.text);
    let ack = s.send(&fixture("nibp.hl7"), ACK_WAIT).unwrap().unwrap();
    assert_eq!(ack.code, "AA", "{}", ack.text);
    let (_, stats, _) = run_cli(dir.path(), &["queue", "stats", "-c", "gateway.toml"]);
    assert!(stats.contains("pending: 12\n"), "{stats}");
}

#[test]
fn a_client_certificate_on_the_listeners_crl_is_refused_until_the_crl_changes() {
    use std::sync::Arc;
    use vitalbridge_tests::pki::{load_certs, load_key, ring_provider, ServerIdentity, TestPki};
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    let server = pki.server_files(ServerIdentity::Trusted);
    let now = time::OffsetDateTime::now_utc();
    let monitor = pki.issue_leaf(
        "monitor-gateway",
        false,
        7301,
        now - time::Duration::days(1),
        now + time::Duration::days(30),
    );
    let crl = pki.write_crl("listener-crl", 1, &[7301]);
    let source_tls = format!(
        "[sources.hl7.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\ncrls = [\"{}\"]",
        server.cert.display(),
        server.key.display(),
        pki.ca_cert_path().display(),
        crl.display()
    );
    let (gw, port) = start_gateway(dir.path(), &source_tls, "");
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(pki.ca_roots())
            .with_client_auth_cert(
                load_certs(&monitor.cert).unwrap(),
                load_key(&monitor.key).unwrap(),
            )
            .unwrap(),
    );
    // Revoked: the handshake fails, nothing is stored.
    let mut revoked = Sender::connect_tls(port, client.clone()).unwrap();
    let refused = revoked.send(&fixture("spo2.hl7"), Duration::from_secs(5));
    assert!(!matches!(refused, Ok(Some(_))), "{refused:?}");
    // The CA lifts the revocation: the next connection is checked against the new list,
    // without a restart.
    pki.write_crl("listener-crl", 2, &[7399]);
    let mut s = Sender::connect_tls(port, client).unwrap();
    let ack = s
        .send(&fixture("spo2.hl7"), ACK_WAIT)
        .unwrap()
        .expect("an ACK over TLS");
    assert_eq!(ack.code, "AA", "{}", ack.text);
    assert!(gw.log().contains("CRL files changed: read again"));
}
