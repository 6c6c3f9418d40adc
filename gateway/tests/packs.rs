//! `vitalbridge profiles …` as a technician runs it: one pack accepted, every kind of bad
//! pack refused with a message, a non-zero exit and an audit line; installs killed with
//! SIGKILL at each step leave one whole pack active; `profiles test` on every shipped
//! profile's example.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_vitalbridge");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run vitalbridge")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn profiles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../device-profiles")
}

/// A hub directory with a config trusting key `k1`, and a signing key for it (and one it
/// does not trust).
struct Hub {
    root: tempfile::TempDir,
}

impl Hub {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let p = root.path();
        let public = ok(&["profiles", "keygen", p.join("k1.pk8").to_str().unwrap()]);
        ok(&[
            "profiles",
            "keygen",
            p.join("stranger.pk8").to_str().unwrap(),
        ]);
        std::fs::write(
            p.join("config.toml"),
            format!(
                "[gateway]\ndata_dir = {:?}\n[profiles]\nmax_pack_bytes = 65536\n[[profiles.trusted_keys]]\nid = \"k1\"\ned25519 = \"{}\"\n",
                p.join("data"),
                public.trim()
            ),
        )
        .unwrap();
        std::fs::create_dir(p.join("src")).unwrap();
        std::fs::copy(
            profiles_dir().join("json-dexcom-egv.toml"),
            p.join("src/json-dexcom-egv.toml"),
        )
        .unwrap();
        Hub { root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn config(&self) -> String {
        self.path("config.toml").display().to_string()
    }

    /// Makes and signs (with `key`) pack `name` at `version` from `src/`.
    fn pack(&self, dir: &str, version: &str, key_id: &str, key: &str) -> PathBuf {
        let out = self.path(dir);
        ok(&[
            "profiles",
            "pack",
            self.path("src").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--name",
            "site-a",
            "--pack-version",
            version,
            "--key-id",
            key_id,
        ]);
        ok(&[
            "profiles",
            "sign",
            out.to_str().unwrap(),
            "--key",
            self.path(key).to_str().unwrap(),
        ]);
        out
    }

    fn profiles(&self, args: &[&str]) -> Output {
        let config = self.config();
        let mut all = vec!["profiles", "-c", config.as_str()];
        all.extend_from_slice(args);
        run(&all)
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("data/audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn active(&self) -> String {
        let list = String::from_utf8(self.profiles(&["list"]).stdout).unwrap();
        list.lines()
            .find(|l| l.starts_with('*'))
            .map(|l| l.split('\t').nth(2).unwrap().to_owned())
            .unwrap_or_default()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn one_pack_is_accepted_and_every_bad_one_is_refused_and_audited() {
    let hub = Hub::new();
    let good = hub.pack("good", "1.0.0", "k1", "k1.pk8");
    let out = hub.profiles(&["install", good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("installed and active: site-a 1.0.0"));
    assert_eq!(hub.active(), "1.0.0");

    // Each bad pack: made from a good 2.0.0 one, then broken one way.
    let base = hub.pack("base", "2.0.0", "k1", "k1.pk8");
    let name = "json-dexcom-egv.toml";
    type Break = Box<dyn Fn(&Hub, &Path)>;
    let cases: Vec<(&str, &str, Break)> = vec![
        (
            "unsigned",
            "unsigned: no manifest.sig",
            Box::new(|_, p| std::fs::remove_file(p.join("manifest.sig")).unwrap()),
        ),
        (
            "changed_after_signing",
            "changed after signing",
            Box::new(move |_, p| {
                let t = std::fs::read_to_string(p.join(name)).unwrap();
                std::fs::write(p.join(name), t.replace("mg/dL\" }", "mmol/L\" }")).unwrap();
            }),
        ),
        (
            "extra_file",
            "extra file \"json-extra.toml\"",
            Box::new(move |_, p| {
                std::fs::copy(p.join(name), p.join("json-extra.toml"))
                    .map(|_| ())
                    .unwrap()
            }),
        ),
        (
            "missing_file",
            "missing file \"json-dexcom-egv.toml\"",
            Box::new(move |_, p| std::fs::remove_file(p.join(name)).unwrap()),
        ),
        (
            "unknown_key",
            "signed with key \"stranger\", which this hub does not trust",
            Box::new(|hub, p| {
                let m = std::fs::read_to_string(p.join("manifest.toml")).unwrap();
                std::fs::write(
                    p.join("manifest.toml"),
                    m.replace("key_id = \"k1\"", "key_id = \"stranger\""),
                )
                .unwrap();
                ok(&[
                    "profiles",
                    "sign",
                    p.to_str().unwrap(),
                    "--key",
                    hub.path("stranger.pk8").to_str().unwrap(),
                ]);
            }),
        ),
        (
            "bad_signature",
            "the signature does not match the manifest",
            Box::new(|hub, p| {
                // The signature of another (the 1.0.0) manifest.
                std::fs::copy(hub.path("good/manifest.sig"), p.join("manifest.sig")).unwrap();
            }),
        ),
        (
            "bad_signature",
            "the signature does not match the manifest",
            Box::new(|hub, p| {
                // A key the hub trusts under another id: signed by the stranger as k1.
                ok(&[
                    "profiles",
                    "sign",
                    p.to_str().unwrap(),
                    "--key",
                    hub.path("stranger.pk8").to_str().unwrap(),
                ]);
            }),
        ),
        (
            "older_version",
            "version 0.9 is not newer than the installed 1.0.0",
            Box::new(|hub, p| {
                std::fs::remove_dir_all(p).unwrap();
                let older = hub.pack("older-src", "0.9", "k1", "k1.pk8");
                copy_dir(&older, p);
            }),
        ),
        (
            "oversized",
            "oversized: ",
            Box::new(move |hub, p| {
                std::fs::remove_dir_all(p).unwrap();
                let big = hub.path("big-src");
                std::fs::create_dir(&big).unwrap();
                let t = std::fs::read_to_string(hub.path("src").join(name)).unwrap();
                // 70 KB of comment lines in a valid profile: more than max_pack_bytes.
                let padded = format!(
                    "{}{t}",
                    "# padding padding padding padding padding\n".repeat(1700)
                );
                std::fs::write(big.join(name), padded).unwrap();
                let out = hub.path("big-pack");
                ok(&[
                    "profiles",
                    "pack",
                    big.to_str().unwrap(),
                    "--out",
                    out.to_str().unwrap(),
                    "--name",
                    "site-a",
                    "--pack-version",
                    "3",
                    "--key-id",
                    "k1",
                ]);
                ok(&[
                    "profiles",
                    "sign",
                    out.to_str().unwrap(),
                    "--key",
                    hub.path("k1.pk8").to_str().unwrap(),
                ]);
                copy_dir(&out, p);
            }),
        ),
        (
            "path_escapes",
            "escapes the pack directory",
            Box::new(move |hub, p| {
                let m = std::fs::read_to_string(p.join("manifest.toml")).unwrap();
                let m = m.replace(
                    &format!("path = \"{name}\""),
                    &format!("path = \"../{name}\""),
                );
                std::fs::write(p.join("manifest.toml"), &m).unwrap();
                // `profiles sign` refuses such a manifest: sign its bytes directly.
                let key = vitalbridge::packs::read_key(&hub.path("k1.pk8")).unwrap();
                let signature = vitalbridge::packs::hex(key.sign(m.as_bytes()).as_ref());
                std::fs::write(p.join("manifest.sig"), signature).unwrap();
            }),
        ),
        (
            "unreadable_file",
            "not a regular file",
            Box::new(move |hub, p| {
                // A file swapped for a link to one with the same content, outside the pack.
                std::fs::rename(p.join(name), hub.path("outside.toml")).unwrap();
                std::os::unix::fs::symlink(hub.path("outside.toml"), p.join(name)).unwrap();
            }),
        ),
    ];
    for (i, (kind, says, breaks)) in cases.iter().enumerate() {
        let dir = hub.path(&format!("bad-{i}"));
        copy_dir(&base, &dir);
        breaks(&hub, &dir);
        let before = hub.audit().len();
        for command in ["verify", "install"] {
            let out = hub.profiles(&[command, dir.to_str().unwrap()]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "{kind} {command}: {err}");
            assert!(
                err.contains(says),
                "{kind} {command}: {err}\n wanted: {says}"
            );
        }
        let audit = hub.audit();
        assert_eq!(
            audit.len(),
            before + 2,
            "{kind}: verify and install audited"
        );
        for line in &audit[before..] {
            assert_eq!(line["kind"], "pack_refused");
            assert_eq!(line["refusal"], *kind);
            assert_eq!(line["pack"], dir.display().to_string());
        }
        assert_eq!(
            hub.active(),
            "1.0.0",
            "{kind}: the installed pack stays active"
        );
    }

    // The good 2.0.0 installs; rollback goes back to 1.0.0, audited.
    assert!(hub
        .profiles(&["install", base.to_str().unwrap()])
        .status
        .success());
    assert_eq!(hub.active(), "2.0.0");
    let out = hub.profiles(&["rollback"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hub.active(), "1.0.0");
    let kinds: Vec<String> = hub
        .audit()
        .iter()
        .map(|l| l["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "pack_installed").count(), 2);
    let last = hub.audit().pop().unwrap();
    assert_eq!(last["kind"], "pack_rolled_back");
    assert_eq!(last["from"], "site-a 2.0.0");
    assert_eq!(last["to"], "site-a 1.0.0");
}

#[test]
fn an_install_killed_at_any_step_leaves_the_old_or_the_new_pack_whole() {
    let hub = Hub::new();
    let v1 = hub.pack("v1", "1", "k1", "k1.pk8");
    assert!(hub
        .profiles(&["install", v1.to_str().unwrap()])
        .status
        .success());
    let v2 = hub.pack("v2", "2", "k1", "k1.pk8");
    let steps = [
        ("file-written", "1"),
        ("incoming-synced", "1"),
        ("stored", "1"),
        ("link-written", "1"),
        ("switched", "2"),
    ];
    for (step, active) in steps {
        let mut child = Command::new(BIN)
            .args([
                "profiles",
                "-c",
                &hub.config(),
                "install",
                v2.to_str().unwrap(),
            ])
            .env("VITALBRIDGE_TEST_INSTALL_STOP", step)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the install to say it reached the step, then SIGKILL it there.
        let mut stderr = child.stderr.take().unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 256];
        while !seen.contains("stopping at") {
            use std::io::Read;
            let n = stderr.read(&mut buf).unwrap();
            assert!(n > 0, "{step}: the install ended before the step: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(hub.active(), active, "after a kill at {step}");
        // Whatever is active verifies whole.
        let current = hub.path("data/packs/current");
        let out = hub.profiles(&["verify", current.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // And the next install (or rollback, once 2 is active) finishes.
        if active == "1" {
            let out = hub.profiles(&["install", v2.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{step}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(hub.active(), "2");
        }
        assert!(hub.profiles(&["rollback", "--to", "1"]).status.success());
        assert_eq!(hub.active(), "1");
        // Nothing an interrupted install left behind is taken for a pack.
        let leftovers: Vec<String> = std::fs::read_dir(hub.path("data/packs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "store" && n != "current")
            .collect();
        assert!(leftovers.is_empty(), "{step}: {leftovers:?}");
    }
}

#[test]
fn profiles_test_decodes_every_shipped_profiles_example() {
    let dir = tempfile::tempdir().unwrap();
    let mut tested = 0;
    for entry in std::fs::read_dir(profiles_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("json-") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: toml::Value = toml::from_str(&text).unwrap();
        for example in doc["examples"].as_array().unwrap() {
            let sample = dir.path().join("sample.json");
            std::fs::write(&sample, example["payload"].as_str().unwrap()).unwrap();
            let out = ok(&[
                "profiles",
                "test",
                path.to_str().unwrap(),
                sample.to_str().unwrap(),
                "--topic",
                example["topic"].as_str().unwrap(),
            ]);
            for reading in example["readings"].as_array().unwrap() {
                assert!(out.contains(reading.as_str().unwrap()), "{name}: {out}");
            }
            let observations: Vec<serde_json::Value> = out
                .lines()
                .skip_while(|l| *l != "observations:")
                .skip(1)
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(
                observations.len(),
                example["readings"].as_array().unwrap().len()
            );
            for o in &observations {
                assert_eq!(o["resourceType"], "Observation");
                let tag = &o["meta"]["tag"][0];
                assert_eq!(
                    tag["code"],
                    format!("{}@1", name.trim_end_matches(".toml")),
                    "{o}"
                );
            }
            tested += 1;
        }
    }
    assert!(tested >= 3);
    // A line profile and a bad sample.
    let lines = dir.path().join("lines.txt");
    std::fs::write(&lines, "SPO2=097 HR=072\n").unwrap();
    let out = ok(&[
        "profiles",
        "test",
        "line-nonin-ascii",
        lines.to_str().unwrap(),
    ]);
    assert!(out.contains("MDC_PULS_OXIM_SAT_O2 97 %"), "{out}");
    std::fs::write(&lines, "{\"recordType\": \"egv\", \"records\": 7}").unwrap();
    let out = run(&[
        "profiles",
        "test",
        "json-dexcom-egv",
        lines.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`records` (/records): is not an array"));
}
