//! `vitalbridge decode hl7`, run as a technician runs it on a captured message.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

fn fixture(name: &str) -> String {
    format!(
        "{}/../tests/fixtures/hl7/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn vitalbridge(args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vitalbridge");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_captured_monitor_message_prints_its_readings_in_the_decode_ble_shape() {
    let (code, out, err) = vitalbridge(
        &[
            "decode",
            "hl7",
            "--time-zone",
            "Europe/Berlin",
            &fixture("nibp.hl7"),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let readings = report["readings"].as_array().unwrap();
    assert_eq!(readings.len(), 2);
    assert_eq!(readings[0]["metric"]["mdc"], 150020);
    assert_eq!(readings[0]["components"][0]["value"], 124);
    assert_eq!(readings[0]["components"][0]["unit"], "mm[Hg]");
    assert_eq!(readings[0]["time"], "2026-01-05T08:29:45+01:00");
    assert_eq!(readings[0]["device"], "0012211839000002");
    assert_eq!(readings[1]["value"], 68);
}

#[test]
fn fhir_output_is_one_observation_per_line_and_dead_letters_are_listed() {
    let (code, out, err) = vitalbridge(&["decode", "hl7", "--fhir", &fixture("pump.hl7")], None);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["resourceType"], "Observation");
    assert_eq!(lines[0]["valueQuantity"]["code"], "mL/h");
    assert!(err.contains("157884"), "{err}");
}

#[test]
fn a_message_the_listener_would_refuse_exits_2_with_the_reason_from_stdin_too() {
    let bad = b"MSH|^~\\&|A||||20260105||ORU^R01|X1|P|2.6\rPID|||7^^^H\rOBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.1.1.1|9x|262688^MDC_DIM_PERCENT^MDC|||||F\r";
    let (code, _, err) = vitalbridge(&["decode", "hl7", "-"], Some(bad));
    assert_eq!(code, 2);
    assert!(err.contains("AE OBX[1]-5"), "{err}");
    // Framed as captured off the wire, with LF line ends: the same.
    let mut framed = vec![0x0b];
    framed.extend(
        String::from_utf8_lossy(bad)
            .replace('\r', "\n")
            .into_bytes(),
    );
    framed.extend([0x1c, 0x0d]);
    let (code, _, err) = vitalbridge(&["decode", "hl7", "-"], Some(&framed));
    assert_eq!(code, 2);
    assert!(err.contains("AE OBX[1]-5"), "{err}");
}
