//! `vitalbridge decode ble` and `vitalbridge ble scan`, run as a technician runs them.

use std::process::Command;

use serde_json::Value;

fn vitalbridge(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
        .args(args)
        .output()
        .expect("run vitalbridge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn decode(characteristic: &str, hex: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["decode", "ble", "--characteristic", characteristic, hex];
    args.extend(extra);
    vitalbridge(&args)
}

/// Blood pressure with a NaN mean arterial pressure (GSS layout: flags 0x1E, 122/80/NaN
/// mmHg, 2020-12-25 08:30:00, pulse 72, user 1, irregular pulse).
const BP: &str = "1E 7A 00 50 00 FF 07 E4 07 0C 19 08 1E 00 48 00 01 04 00";

#[test]
fn decode_prints_the_documented_report_with_absent_values_and_precision() {
    let (code, stdout, stderr) = decode("2A35", BP, &[]);
    assert_eq!(code, 0, "{stderr}");
    // Numbers are printed as the device sent them: no float round trip.
    assert!(stdout.contains("\"value\": 122"), "{stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let readings = report["readings"].as_array().unwrap();
    assert_eq!(readings.len(), 2);
    let bp = &readings[0];
    assert_eq!(bp["metric"]["mdc"], 150020);
    assert_eq!(bp["metric"]["loinc"], "85354-9");
    assert!(
        bp.get("value").is_none(),
        "a panel has components, no value"
    );
    let components = bp["components"].as_array().unwrap();
    assert_eq!(components[0]["metric"]["loinc"], "8480-6");
    assert_eq!(components[0]["value"], 122);
    assert_eq!(components[0]["unit"], "mm[Hg]");
    assert_eq!(components[2]["value"], Value::Null);
    assert_eq!(components[2]["data_absent_reason"], "not-a-number");
    assert_eq!(bp["time"], "2020-12-25T08:30:00Z");
    assert_eq!(bp["status"], serde_json::json!(["irregular-pulse"]));
    assert_eq!(bp["device_user"], 1);
    assert_eq!(readings[1]["metric"]["loinc"], "8867-4");
    assert_eq!(readings[1]["unit"], "/min");
}

#[test]
fn decode_keeps_decimal_precision_and_transcodes_glucose_exactly() {
    // Temperature 37.60 °C: FLOAT mantissa 3760, exponent -2 (Nordic HT test vector).
    let (code, stdout, _) = decode("0x2A1C", "06 B0 0E 00 FE DC 07 0C 05 0B 32 1B 04", &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("\"value\": 37.60"), "{stdout}");
    assert!(stdout.contains("\"unit\": \"Cel\""), "{stdout}");
    // Glucose 0.0063 mol/L → 6.3 mmol/L; the 128-bit UUID form works too.
    let (code, stdout, _) = decode(
        "00002a18-0000-1000-8000-00805f9b34fb",
        "06 2A 00 E8 07 03 0F 0E 1E 2D 3F C0 F1",
        &[],
    );
    assert_eq!(code, 0);
    assert!(stdout.contains("\"value\": 6.3"), "{stdout}");
    assert!(stdout.contains("\"unit\": \"mmol/L\""), "{stdout}");
    assert!(stdout.contains("\"sequence\": 42"), "{stdout}");
}

#[test]
fn malformed_input_exits_2_with_the_error_on_stderr_and_nothing_on_stdout() {
    let cases: &[(&str, &str, &str)] = &[
        // Too short for its flags: the error names the field.
        ("2A35", "1E 7A 00", "missing field `diastolic` at offset 3"),
        // A reserved value where the specification forbids it.
        (
            "2A1C",
            "04 6E 01 00 FF 0A",
            "reserved value 10 in field `temperature type`",
        ),
        ("2A35", "1E 7G", "not a hex digit"),
        ("2A35", "1E 7", "odd number of hex digits"),
        ("2A19", "64", "no decoder for 0x2A19"),
        ("battery", "64", "not a Bluetooth characteristic UUID"),
    ];
    for (characteristic, hex, message) in cases {
        let (code, stdout, stderr) = decode(characteristic, hex, &[]);
        assert_eq!(code, 2, "{characteristic} {hex}: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(stderr.contains(message), "{characteristic} {hex}: {stderr}");
    }
}

#[test]
fn decode_fhir_prints_one_observation_per_reading() {
    let (code, stdout, stderr) = decode(
        "2A35",
        BP,
        &[
            "--fhir",
            "--device",
            "A1:B2:C3:D4:E5:F6",
            "--patient",
            "urn:oid:1.2.3|p1",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let observations: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(observations.len(), 2);
    let bp = &observations[0];
    assert_eq!(bp["resourceType"], "Observation");
    assert_eq!(bp["code"]["coding"][0]["code"], "85354-9");
    assert_eq!(
        bp["component"][2]["dataAbsentReason"]["coding"][0]["code"],
        "not-a-number"
    );
    assert_eq!(bp["subject"]["identifier"]["value"], "p1");
    let identifier = bp["identifier"][0]["value"].as_str().unwrap();
    assert!(identifier.starts_with("A1B2C3D4E5F6-p1-"), "{identifier}");
    assert!(stdout.contains("\"value\":122"), "{stdout}");
}

#[test]
fn ble_scan_lists_devices_or_fails_fast_with_a_clear_message() {
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = vitalbridge(&["ble", "scan", "--seconds", "1"]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    if code == 0 {
        // A machine with a Bluetooth controller: a table with its header.
        assert!(stdout.starts_with("address"), "{stdout}");
    } else {
        // No controller, no bluetoothd or no system D-Bus (CI), or a build without the `ble`
        // feature: say so, exit non-zero.
        assert!(
            stderr.contains("no usable Bluetooth adapter")
                || stderr.contains("built without Bluetooth support"),
            "{stderr}"
        );
    }
    // It must not hang (the command's own limit is the listen time + 15 s).
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn check_config_names_the_bad_ble_and_shared_device_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ble = "[sources.ble]\n[[sources.ble.devices]]\n";
    let bind = |id: &str, user: &str, patient: &str| {
        format!("[[devices]]\nid = \"{id}\"\n{user}patient_reference = \"Patient/{patient}\"\n")
    };
    // (config text, text the error must contain)
    let cases: Vec<(String, &str)> = vec![
        ("[sources.ble]\n".into(), "sources.ble.devices: list at least one"),
        (format!("{ble}address = \"A1:B2:C3\"\n"), "sources.ble.devices[0].address: not a Bluetooth address"),
        (format!("{ble}service = \"heart\"\n"), "sources.ble.devices[0].service: not a 16-bit service UUID"),
        (format!("{ble}address = \"A1:B2:C3:D4:E5:F6\"\nservice = \"1810\"\n"), "sources.ble.devices[0]: give exactly one of `address` or `service`"),
        (format!("{ble}address = \"A1:B2:C3:D4:E5:F6\"\nprofile = \"ble-toaster\"\n"), "sources.ble.devices[0].profile: no profile \"ble-toaster\""),
        (format!("{ble}address = \"A1:B2:C3:D4:E5:F6\"\nadress = \"x\"\n"), "sources.ble.devices[0].adress: unknown field `adress`"),
        (format!("{ble}address = \"A1:B2:C3:D4:E5:F6\"\n[[sources.ble.devices]]\naddress = \"a1b2c3d4e5f6\"\n"), "sources.ble.devices[1].address: listed twice"),
        ("[sources.ble]\nprofiles_dir = \"/no/such/dir\"\n".into(), "sources.ble.profiles_dir: cannot read directory /no/such/dir"),
        ("[sources.ble]\nconnect_timeout_s = 0\n".into(), "sources.ble.connect_timeout_s: must be between 1 and 300"),
        (bind("A1B2C3D4E5F6", "user = 255\n", "1"), "devices[0].user: 255 means \"unknown user\""),
        (bind("A1B2C3D4E5F6", "user = 300\n", "1"), "devices[0].user: invalid value"),
        (bind("A1B2C3D4E5F6", "user = 1\n", "1") + &bind("A1:B2:C3:D4:E5:F6", "user = 1\n", "2"), "devices[1].id: device \"A1:B2:C3:D4:E5:F6\" user 1 is bound twice"),
        (bind("A1B2C3D4E5F6", "user = 1\n", "1") + &bind("A1:B2:C3:D4:E5:F6", "", "2"), "devices[1].user: device \"A1:B2:C3:D4:E5:F6\" has bindings with and without `user`"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (code, _, stderr) = vitalbridge(&["check-config", "-c", path.to_str().unwrap()]);
        assert_eq!(code, 2, "accepted:\n{text}");
        assert!(
            stderr.contains(expected),
            "for:\n{text}\nexpected {expected:?} in:\n{stderr}"
        );
    }
    // Two users of one shared scale, and a BLE device list that is right.
    let good = format!(
        "{ble}address = \"A1:B2:C3:D4:E5:F6\"\nprofile = \"ble-weight-scale\"\n[[sources.ble.devices]]\nservice = \"1808\"\n{}{}",
        bind("A1:B2:C3:D4:E5:F6", "user = 1\n", "1"),
        bind("A1B2C3D4E5F6", "user = 2\n", "2"),
    );
    let path = dir.path().join("good.toml");
    std::fs::write(&path, &good).unwrap();
    let (code, stdout, stderr) = vitalbridge(&["check-config", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{good}\n{stderr}");
    assert!(stdout.ends_with(": ok\n"), "{stdout}");
}

#[test]
fn a_gateway_without_a_bluetooth_adapter_keeps_running_its_other_sources() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"hub-test\"\ndata_dir = \"{}\"\n\
             [sources.sim]\ndevices = 1\ninterval_ms = 50\n\
             [sources.ble]\nreconnect_initial_ms = 100\n\
             [[sources.ble.devices]]\naddress = \"A1:B2:C3:D4:E5:F6\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let log = dir.path().join("gateway.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
        .args(["run", "-c", config.to_str().unwrap()])
        // The buffer key (./vitalbridge-buffer.key by default) is made here, not in the repo.
        .current_dir(dir.path())
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = dir.path().join("data/out/Observation-000001.ndjson");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut text = String::new();
    while std::time::Instant::now() < deadline {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        let adapter_reported =
            text.contains("BLE scan cannot start") || text.contains("BLE source scanning");
        if adapter_reported && out.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(still_running, "the gateway exited:\n{text}");
    assert!(
        out.exists(),
        "the simulator's readings did not flow:\n{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    if !text.contains("BLE source scanning") {
        // No adapter on this machine: said clearly, retried, not fatal.
        assert!(text.contains("no usable Bluetooth adapter"), "{text}");
    }
}
