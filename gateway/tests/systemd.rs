//! The `vitalbridge` binary as systemd runs it: `Type=notify` notifications and the watchdog
//! over a real Unix datagram socket standing in for systemd's, secrets from a credentials
//! directory laid out as `LoadCredential=` lays it out, the buffer key as the credential the
//! unit decrypts, and the unit's own command lines against the packaged configuration; and
//! the unit, its drop-in, the packaged config, the maintainer scripts and the docs naming each
//! credential alike.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

fn vitalbridge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vitalbridge"));
    for var in [
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "CREDENTIALS_DIRECTORY",
    ] {
        c.env_remove(var);
    }
    c
}

/// Kills the gateway if a test fails half-way.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Receives notifications until one starts with `prefix`; panics after 60 s.
fn until(sock: &UnixDatagram, prefix: &str, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 1024];
    loop {
        assert!(
            Instant::now() < deadline,
            "no {prefix:?} notification; got {seen:?}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen.push(m.clone());
            if m.starts_with(prefix) {
                return m;
            }
        }
    }
}

/// A stand-in for systemd's notification socket and a config with `data_dir` under `dir`
/// plus `extra` TOML, spawned as `vitalbridge run` with `NOTIFY_SOCKET` and `env` set.
fn start_notified(dir: &Path, extra: &str, env: &[(&str, &str)]) -> (UnixDatagram, Gateway) {
    let socket_path = dir.join("notify");
    let manager = UnixDatagram::bind(&socket_path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\ndata_dir = \"{}\"\n{extra}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let child = vitalbridge()
        .args(["run", "-c", config.to_str().unwrap()])
        // The buffer key (./vitalbridge-buffer.key by default) is made here, not in the repo.
        .current_dir(dir)
        .env("NOTIFY_SOCKET", &socket_path)
        .envs(env.iter().copied())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (manager, Gateway(child))
}

#[test]
fn under_systemd_the_gateway_reports_ready_pings_the_watchdog_and_reports_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let (manager, mut gateway) = start_notified(
        dir.path(),
        "[sources.sim]\ndevices = 2\ninterval_ms = 50\n",
        &[("WATCHDOG_USEC", "400000")], // pings every 200 ms
    );
    let mut seen = Vec::new();

    let ready = until(&manager, "READY=1", &mut seen);
    assert_eq!(ready, "READY=1\nSTATUS=running");
    assert_eq!(seen.len(), 1, "READY is the first notification: {seen:?}");
    for _ in 0..3 {
        assert_eq!(until(&manager, "WATCHDOG", &mut seen), "WATCHDOG=1");
    }

    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(gateway.0.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let stopping = until(&manager, "STOPPING=1", &mut seen);
    assert!(stopping.starts_with("STOPPING=1\nSTATUS="), "{stopping:?}");
    let status = gateway.0.wait().unwrap();
    assert!(status.success(), "clean exit after SIGTERM: {status}");
}

#[test]
fn the_watchdog_is_left_alone_when_it_belongs_to_another_process() {
    let dir = tempfile::tempdir().unwrap();
    // The variables were inherited from another service.
    let (manager, mut gateway) = start_notified(
        dir.path(),
        "",
        &[("WATCHDOG_USEC", "100000"), ("WATCHDOG_PID", "1")],
    );
    let mut seen = Vec::new();
    until(&manager, "READY=1", &mut seen);
    // Twenty watchdog intervals: a gateway that pinged would have done so by now.
    std::thread::sleep(Duration::from_secs(1));
    let mut buf = [0u8; 1024];
    while let Ok(n) = manager.recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(!seen.iter().any(|m| m.contains("WATCHDOG=1")), "{seen:?}");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(gateway.0.id() as libc::pid_t, libc::SIGTERM) };
    assert!(gateway.0.wait().unwrap().success());
}

/// Writes `text` to `dir/name` with `mode`.
fn file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// Gives `uid` read access to `path` through a POSIX ACL, as systemd does for a credential
/// (`user:<service uid>:r--`, mask `r--`), so that `stat` shows the mask as group bits.
fn add_acl_read(path: &Path, uid: u32) {
    use std::os::unix::ffi::OsStrExt;
    let mut value = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 4u16, u32::MAX),
        (0x02, 4, uid),
        (0x04, 0, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        value.extend_from_slice(&tag.to_le_bytes());
        value.extend_from_slice(&perm.to_le_bytes());
        value.extend_from_slice(&id.to_le_bytes());
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated strings and a valid buffer of value.len() bytes.
    let r = unsafe {
        libc::setxattr(
            c_path.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
}

#[test]
fn check_config_reads_the_private_key_from_the_credentials_directory() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path();
    file(etc, "fhir-ca.pem", "-----BEGIN CERTIFICATE-----\n", 0o644);
    file(etc, "gateway.pem", "-----BEGIN CERTIFICATE-----\n", 0o644);
    let config = file(
        etc,
        "config.toml",
        &format!(
            "[gateway]\ndata_dir = \"{0}/data\"\n[uplink.fhir]\nbase_url = \"https://fhir.example.org/r4\"\n\
             ca = \"{0}/fhir-ca.pem\"\ncert = \"{0}/gateway.pem\"\nkey = \"${{CREDENTIALS_DIRECTORY}}/vitalbridge.key\"\n",
            etc.display()
        ),
        0o644,
    );
    let check = |credentials: Option<&Path>| {
        let mut c = vitalbridge();
        c.args(["check-config", "-c", config.to_str().unwrap()]);
        if let Some(d) = credentials {
            c.env("CREDENTIALS_DIRECTORY", d);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Not started by systemd: the operator is told what the path means.
    let (code, stderr) = check(None);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("uplink.fhir.key: ${CREDENTIALS_DIRECTORY}/vitalbridge.key names a systemd credential, but $CREDENTIALS_DIRECTORY is not set"),
        "{stderr}"
    );

    // The directory systemd makes: a root-owned 0400 copy with an ACL for the service user,
    // which `stat` shows as mode 0440. Accepted.
    let creds = tempfile::tempdir().unwrap();
    let key = file(
        creds.path(),
        "vitalbridge.key",
        "-----BEGIN PRIVATE KEY-----\n",
        0o400,
    );
    // SAFETY: geteuid cannot fail.
    add_acl_read(&key, unsafe { libc::geteuid() });
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o440
    );
    let (code, stderr) = check(Some(creds.path()));
    assert_eq!(code, Some(0), "{stderr}");

    // The same ACL for somebody else, and a plainly group-readable key: refused.
    // SAFETY: as above.
    add_acl_read(&key, unsafe { libc::geteuid() } + 1);
    let (code, stderr) = check(Some(creds.path()));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("through its POSIX ACL"), "{stderr}");
    std::fs::remove_file(&key).unwrap();
    file(creds.path(), "vitalbridge.key", "x", 0o640);
    let (code, stderr) = check(Some(creds.path()));
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("is readable by group or others (mode 0640)"),
        "{stderr}"
    );
}

/// The `vitalbridge …` part of the unit's `KEY=` command lines.
fn unit_command(key: &str) -> Vec<String> {
    let unit = std::fs::read_to_string(repo().join("systemd/vitalbridge.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"));
    let mut words = line.split_whitespace().map(str::to_owned);
    assert_eq!(words.next().as_deref(), Some("/usr/bin/vitalbridge"));
    words.collect()
}

#[test]
fn the_units_commands_accept_the_packaged_config() {
    let packaged = repo().join("packaging/deb/config.toml");
    let pre = unit_command("ExecStartPre");
    assert_eq!(pre, ["check-config", "-c", "/etc/vitalbridge/config.toml"]);
    let start = unit_command("ExecStart");
    assert_eq!(start, ["run", "-c", "/etc/vitalbridge/config.toml"]);

    // Run by hand, the check cannot find the buffer key and says why ...
    let out = vitalbridge()
        .args(["check-config", "-c", packaged.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "buffer.key_file: ${{CREDENTIALS_DIRECTORY}}/{BUFFER_KEY} names a systemd credential, but $CREDENTIALS_DIRECTORY is not set"
        )),
        "{stderr}"
    );
    // ... and, as the unit runs it (the buffer key decrypted into its credentials directory),
    // passes.
    let creds = tempfile::tempdir().unwrap();
    buffer_key_credential(creds.path());
    let out = vitalbridge()
        .args(["check-config", "-c", packaged.to_str().unwrap()])
        .env("CREDENTIALS_DIRECTORY", creds.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The packaged config keeps its data in the unit's StateDirectory, reads nothing and
    // sends nothing off the machine until a technician configures it.
    let config =
        vitalbridge::config::Config::from_toml(&std::fs::read_to_string(&packaged).unwrap())
            .unwrap();
    assert_eq!(
        config.gateway.data_dir,
        Path::new("/var/lib/vitalbridge"),
        "StateDirectory=vitalbridge"
    );
    assert!(config.sources.sim.is_none() && config.sources.mqtt.is_none());
    assert!(config.uplink.fhir.is_none());
}

/// The credential the unit loads has the name of its file in `/etc/credstore`, and the
/// packaged config and the README name it so: the README's check by hand
/// (`CREDENTIALS_DIRECTORY=/etc/credstore vitalbridge check-config`) then reads the very file
/// the service will get a copy of. It is named without a path: systemd then looks for it in
/// `/etc/credstore/` and a hub without a client key (no FHIR uplink yet) still starts, where
/// an absolute path that does not exist fails the start (status=243/CREDENTIALS).
#[test]
fn the_key_credential_has_one_name_in_the_unit_the_config_and_the_readme() {
    let unit = std::fs::read_to_string(repo().join("systemd/vitalbridge.service")).unwrap();
    let lines: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("LoadCredential="))
        .collect();
    assert_eq!(lines.len(), 1, "one LoadCredential= in the unit: {lines:?}");
    let id = lines[0];
    assert!(
        !id.contains(':') && !id.contains('/'),
        "LoadCredential={id}: a name without a path (searched in /etc/credstore, missing is no error)"
    );
    let source = Path::new("/etc/credstore").join(id);
    let source = source.to_str().unwrap();
    let in_config = format!("${{CREDENTIALS_DIRECTORY}}/{id}");
    let packaged = std::fs::read_to_string(repo().join("packaging/deb/config.toml")).unwrap();
    assert!(
        packaged.contains(&in_config),
        "packaged config: {in_config}"
    );
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(readme.contains(&in_config), "README: {in_config}");
    assert!(
        readme.contains(&format!("gateway.key {source}")),
        "README: install to {source}"
    );
    assert!(readme.contains("CREDENTIALS_DIRECTORY=/etc/credstore vitalbridge check-config"));
}

/// The buffer key's credential name.
const BUFFER_KEY: &str = "vitalbridge-buffer.key";

/// A new buffer key in `dir` as systemd gives a credential to the unit: mode 0400, readable by
/// the service's user through a POSIX ACL (here: the user running the tests).
fn buffer_key_credential(dir: &Path) -> PathBuf {
    let key = dir.join(BUFFER_KEY);
    let out = vitalbridge()
        .args(["buffer-key", "new", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    // SAFETY: geteuid cannot fail.
    add_acl_read(&key, unsafe { libc::geteuid() });
    key
}

/// The value of the one `KEY=` line of a systemd unit or drop-in.
fn unit_value<'a>(text: &'a str, key: &str) -> &'a str {
    let values: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .collect();
    assert_eq!(values.len(), 1, "one {key}= line: {values:?}");
    values[0]
}

/// The buffer key is one credential, `vitalbridge-buffer.key`, wherever it is named: sealed in
/// `/etc/credstore.encrypted/` for `LoadCredentialEncrypted=` in the unit; plain in
/// `/etc/credstore/` for `LoadCredential=` in the drop-in that replaces it where the package
/// could not seal it (the same name, so the config holds either way); the packaged config's
/// `buffer.key_file`; the postinst that makes it and links the drop-in; the postrm that purges
/// it; the manual and the docs a technician follows.
#[test]
fn the_buffer_key_credential_has_one_name_in_the_unit_the_drop_in_the_config_the_scripts_and_the_docs(
) {
    let read = |p: &str| std::fs::read_to_string(repo().join(p)).unwrap();
    let unit = read("systemd/vitalbridge.service");
    let (id, sealed) = unit_value(&unit, "LoadCredentialEncrypted")
        .split_once(':')
        .expect("LoadCredentialEncrypted=ID:PATH in the unit");
    assert_eq!(id, BUFFER_KEY);
    assert_eq!(
        Path::new(sealed),
        Path::new("/etc/credstore.encrypted").join(id),
        "the sealed key is its credential's name in /etc/credstore.encrypted"
    );
    let plain = format!("/etc/credstore/{id}");

    // The drop-in: the same name, from the plain file, in [Service].
    let dropin = read("systemd/buffer-key-plain.conf");
    let section = dropin
        .lines()
        .filter(|l| l.starts_with('['))
        .collect::<Vec<_>>();
    assert_eq!(section, ["[Service]"], "the drop-in's sections");
    assert_eq!(
        unit_value(&dropin, "LoadCredential"),
        format!("{id}:{plain}"),
        "the drop-in loads the plain key under the unit's credential name"
    );

    // The packaged config reads the credential, whichever line loaded it.
    let config =
        vitalbridge::config::Config::from_toml(&read("packaging/deb/config.toml")).unwrap();
    assert_eq!(
        config.buffer.key_file,
        Path::new(&format!("${{CREDENTIALS_DIRECTORY}}/{id}"))
    );

    // The maintainer scripts make, link and purge exactly these files.
    let postinst = read("packaging/deb/postinst");
    for needle in [
        format!("KEY_ID={id}\n"),
        "SEALED=/etc/credstore.encrypted/$KEY_ID\n".to_owned(),
        "PLAIN=/etc/credstore/$KEY_ID\n".to_owned(),
        "DROPIN=/etc/systemd/system/$NAME.service.d/buffer-key-plain.conf\n".to_owned(),
        "DROPIN_SOURCE=/usr/share/vitalbridge/buffer-key-plain.conf\n".to_owned(),
        "systemd-creds encrypt --name=\"$KEY_ID\"".to_owned(),
        "/usr/bin/vitalbridge buffer-key new".to_owned(),
    ] {
        assert!(postinst.contains(&needle), "postinst: {needle:?}");
    }
    let postrm = read("packaging/deb/postrm");
    for needle in [
        format!("{sealed} {plain}"),
        "/etc/systemd/system/vitalbridge.service.d/buffer-key-plain.conf".to_owned(),
    ] {
        assert!(postrm.contains(&needle), "postrm: {needle:?}");
    }
    assert!(read("packaging/deb/build.sh")
        .contains("systemd/buffer-key-plain.conf \"$stage/usr/share/vitalbridge/\""));

    // The manual lists both files; the technician's notes name the files, the drop-in, the
    // unit's line and the sealing command; the README points to them.
    let man = read("gateway/man/vitalbridge.1").replace("\\-", "-");
    for path in [sealed, plain.as_str()] {
        assert!(
            man.contains(&format!(".I {path}\n")),
            "man page FILES: {path}"
        );
    }
    let notes = read("systemd/README.md");
    for needle in [
        sealed.to_owned(),
        plain.clone(),
        "/etc/systemd/system/vitalbridge.service.d/buffer-key-plain.conf".to_owned(),
        format!("LoadCredentialEncrypted={id}:{sealed}"),
        format!("systemd-creds encrypt --name={id} --with-key=auto --tpm2-pcrs="),
        format!("key_file = \"${{CREDENTIALS_DIRECTORY}}/{id}\""),
        "status=243/CREDENTIALS".to_owned(),
    ] {
        assert!(notes.contains(&needle), "systemd/README.md: {needle:?}");
    }
    let readme = read("README.md");
    for needle in [
        sealed,
        plain.as_str(),
        "/usr/share/doc/vitalbridge/README.systemd.md",
    ] {
        assert!(readme.contains(needle), "README: {needle:?}");
    }
}

/// The gateway as the unit runs it, with the buffer key in its credentials directory: it
/// seals its buffer with that key, and the errors a technician meets when the credential is
/// missing or another key are the ones `systemd/README.md` explains.
#[test]
fn the_buffer_key_comes_from_the_credentials_directory_and_its_errors_are_the_documented_ones() {
    let dir = tempfile::tempdir().unwrap();
    let creds = tempfile::tempdir().unwrap();
    let key = buffer_key_credential(creds.path());
    // The packaged config's [buffer] key_file, with the data in the temporary directory.
    let packaged = vitalbridge::config::Config::from_toml(
        &std::fs::read_to_string(repo().join("packaging/deb/config.toml")).unwrap(),
    )
    .unwrap();
    let key_file = packaged.buffer.key_file.to_str().unwrap().to_owned();
    let extra = format!("[buffer]\nkey_file = \"{key_file}\"\n");
    let creds_env = creds.path().to_str().unwrap();

    let (manager, mut gateway) =
        start_notified(dir.path(), &extra, &[("CREDENTIALS_DIRECTORY", creds_env)]);
    let mut seen = Vec::new();
    until(&manager, "READY=1", &mut seen);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(gateway.0.id() as libc::pid_t, libc::SIGTERM) };
    assert!(gateway.0.wait().unwrap().success());
    drop(manager);
    assert!(dir.path().join("data/buffer.db").exists());
    assert!(
        !dir.path().join("vitalbridge-buffer.key").exists(),
        "no key made in the working directory: the credential was used"
    );

    let config = dir.path().join("config.toml");
    let run = || {
        let out = vitalbridge()
            .args(["run", "-c", config.to_str().unwrap()])
            .current_dir(dir.path())
            .env("CREDENTIALS_DIRECTORY", creds.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "the gateway must not start");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let notes = std::fs::read_to_string(repo().join("systemd/README.md")).unwrap();

    // The credential is missing.
    std::fs::remove_file(&key).unwrap();
    let stderr = run();
    let missing = format!(
        "buffer.key_file {} does not exist, but the buffer in {} is sealed with a key",
        key.display(),
        dir.path().join("data").display()
    );
    assert!(stderr.contains(&missing), "{stderr}");
    assert!(notes.contains(
        "`buffer.key_file … does not exist, but the buffer in /var/lib/vitalbridge is sealed with a key`"
    ));

    // Another key.
    buffer_key_credential(creds.path());
    let stderr = run();
    assert!(
        stderr.contains(&format!("buffer.key_file {} (key id ", key.display()))
            && stderr.contains(") is not the key this buffer is sealed with (key id "),
        "{stderr}"
    );
    assert!(notes.contains(
        "`buffer.key_file … (key id …) is not the key this buffer is sealed with (key id …)`"
    ));
}
