//! The `vitalbridge` binary's configuration commands, as an operator uses them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn vitalbridge(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run vitalbridge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// PEM-ish files whose contents do not matter to check-config; modes do.
fn files(dir: &Path) {
    for (name, mode) in [
        ("ca.pem", 0o644),
        ("cert.pem", 0o644),
        ("key.pem", 0o600),
        ("open.key", 0o644),
        ("group.key", 0o640),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, "-----BEGIN TEST-----\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

const FHIR_OK: &str = r#"
[uplink.fhir]
base_url = "https://fhir.example.org/r4"
ca = "ca.pem"
cert = "cert.pem"
key = "key.pem"
"#;

#[test]
fn check_config_names_the_bad_key_for_each_kind_of_mistake() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path());
    // (config text, text the error must contain)
    let cases: &[(&str, &str)] = &[
        ("[gateway]\ndata_dirr = \"x\"\n", "gateway.data_dirr: unknown field `data_dirr`"),
        ("[buffer]\ncapacity = \"lots\"\n", "buffer.capacity: invalid type: string"),
        ("[buffer]\ncapacity = 0\n", "buffer.capacity: must be at least 1"),
        ("[sources.mqtt]\nurl = \"not a url\"\n", "sources.mqtt.url: not a valid URL"),
        ("[sources.mqtt]\nurl = \"http://broker:1883\"\n", "sources.mqtt.url: scheme \"http\" is not mqtt or mqtts"),
        ("[sources.mqtt]\nurl = \"mqtts://broker:8883\"\n", "sources.mqtt.tls: mqtts:// needs"),
        ("[sources.mqtt]\nurl = \"mqtt://b\"\ntopic = \"x\"\n", "sources.mqtt.topic: unknown field `topic`"),
        ("[sources.sim]\ndevices = 0\n", "sources.sim.devices: must be between 1 and 10000"),
        (&FHIR_OK.replace("https://fhir.example.org/r4", "http://fhir.example.org/r4"), "uplink.fhir.base_url: scheme \"http\" is not https"),
        (&FHIR_OK.replace("https://fhir.example.org/r4", "https//nope"), "uplink.fhir.base_url: not a valid URL"),
        (&FHIR_OK.replace("key.pem", "missing.pem"), "uplink.fhir.key: cannot read missing.pem"),
        (&FHIR_OK.replace("key.pem", "open.key"), "uplink.fhir.key: private key open.key is readable by group or others (mode 0644)"),
        (&FHIR_OK.replace("key.pem", "group.key"), "uplink.fhir.key: private key group.key is readable by group or others (mode 0640)"),
        (&FHIR_OK.replace("ca.pem", "nope.pem"), "uplink.fhir.ca: cannot read nope.pem"),
        ("[uplink.fhir]\nbase_url = \"https://x\"\n", "uplink.fhir: missing field `ca`"),
        ("[uplink]\nbatch_size = 0\n", "uplink.batch_size: must be between 1 and 10000"),
        // Several destinations at once are fine; each is checked on its own.
        ("[uplink.file]\n[uplink.mqtt]\nurl = \"mqtts://b:8883\"\ntopic = \"x/{mrn}\"\n[uplink.mqtt.tls]\nca = \"ca.pem\"\n", "uplink.mqtt.topic: unknown field {mrn}"),
        ("[uplink.kafka]\nbootstrap = [\"kafka-1:9093\"]\n", "uplink.kafka.tls: a broker beyond this machine needs"),
        ("[[devices]]\nid = \"d1\"\npatient_id = \"p\"\n", "devices[0]: give either patient_system and patient_id"),
        ("[gateway\n", "TOML parse error"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (code, _, stderr) =
            vitalbridge(&["check-config", "-c", path.to_str().unwrap()], dir.path());
        assert_eq!(code, 2, "case {i} should fail: {text}");
        assert!(
            stderr.contains(expected),
            "case {i}: expected {expected:?} in:\n{stderr}"
        );
    }
}

/// `run` builds its runtime from `gateway.worker_threads` before the config is validated:
/// a bad count is reported as a configuration problem, not a panic.
#[test]
fn run_reports_a_bad_worker_thread_count_as_a_config_problem() {
    let dir = tempfile::tempdir().unwrap();
    for count in ["0", "65"] {
        let text = format!("[gateway]\ndata_dir = \"data\"\nworker_threads = {count}\n");
        std::fs::write(dir.path().join("threads.toml"), text).unwrap();
        let (code, _, stderr) = vitalbridge(&["run", "-c", "threads.toml"], dir.path());
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains("gateway.worker_threads: must be between 1 and 64"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// The new user's report: a file with three mistakes got one. Every unknown key, wrong
/// type and bad value is named, with its line, in the order of the file.
#[test]
fn check_config_names_every_bad_key_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[gateway]\ncolour = \"blue\"\n\n[uplink]\nbatchsize = 100\n\n[ops.http]\nlisten = \"localhost\"\n";
    std::fs::write(dir.path().join("new.toml"), text).unwrap();
    let (code, _, stderr) = vitalbridge(&["check-config", "-c", "new.toml"], dir.path());
    assert_eq!(code, 2, "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "new.toml: line 2: gateway.colour: unknown field `colour`, expected one of `id`, `data_dir`, `worker_threads`",
            "new.toml: line 5: uplink.batchsize: unknown field `batchsize`, expected one of `batch_size`, `in_flight`, `batch_linger_ms`, `retry_initial_ms`, `retry_max_ms`, `file`, `fhir`, `hl7`, `mqtt`, `kafka`",
            "new.toml: line 8: ops.http.listen: invalid socket address syntax",
        ]
    );
}

#[test]
fn a_good_config_and_the_printed_default_pass_check_config() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path());
    let good = dir.path().join("good.toml");
    std::fs::write(&good, FHIR_OK).unwrap();
    let (code, stdout, stderr) =
        vitalbridge(&["check-config", "-c", good.to_str().unwrap()], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok"));

    let (code, default, _) = vitalbridge(&["print-default-config"], dir.path());
    assert_eq!(code, 0);
    assert!(default.contains("[sources.sim]"));
    let printed = dir.path().join("default.toml");
    std::fs::write(&printed, default).unwrap();
    let (code, _, stderr) = vitalbridge(
        &["check-config", "-c", printed.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn version_is_printed() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = vitalbridge(&["--version"], dir.path());
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        format!("vitalbridge {}", env!("CARGO_PKG_VERSION"))
    );
}

/// The bug report: `check-config` accepted a 50 MB `gateway.id`. A file that large is refused
/// unread; a huge value in a file under the cap is refused by its key; neither is quoted.
#[test]
fn check_config_refuses_huge_files_and_huge_values_without_quoting_them() {
    let dir = tempfile::tempdir().unwrap();
    let id = "g".repeat(50 * 1024 * 1024);
    let huge = dir.path().join("huge.toml");
    std::fs::write(&huge, format!("[gateway]\nid = \"{id}\"\n")).unwrap();
    let (code, _, stderr) = vitalbridge(&["check-config", "-c", "huge.toml"], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("larger than 4194304 bytes"), "{stderr}");
    assert!(stderr.len() < 500, "{} bytes of errors", stderr.len());

    for (text, expected) in [
        (
            format!("[gateway]\nid = \"{}\"\n", &id[..1024 * 1024]),
            "gateway.id: longer than 128 bytes",
        ),
        (
            format!(
                "[[devices]]\nid = \"d\"\npatient_system = \"urn:x\"\npatient_id = \"{}\"\n",
                "Jane Doe ".repeat(100)
            ),
            "devices[0].patient_id: longer than 128 bytes",
        ),
    ] {
        std::fs::write(dir.path().join("long.toml"), text).unwrap();
        let (code, _, stderr) = vitalbridge(&["check-config", "-c", "long.toml"], dir.path());
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(
            !stderr.contains("ggg") && !stderr.contains("Jane"),
            "{stderr}"
        );
    }
}
