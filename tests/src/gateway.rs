//! Runs the real `vitalbridge` binary as a child process, for end-to-end and crash tests.
//!
//! The binary is found next to the test executable (`target/<profile>/vitalbridge`, built by
//! `cargo test --workspace`), or at `$VITALBRIDGE_BIN`. Its stderr (the logs) goes to a file
//! that tests read to check what an operator would see.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Path of the gateway binary under test.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VITALBRIDGE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary> → target/<profile>/vitalbridge
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("vitalbridge");
    assert!(
        bin.exists(),
        "{} not found: run the tests with `cargo test --workspace` (which builds the gateway binary) or set VITALBRIDGE_BIN",
        bin.display()
    );
    bin
}

/// A running gateway process. Killed (SIGKILL) on drop if still running.
pub struct GatewayProcess {
    child: Child,
    log: PathBuf,
    /// How many times this gateway has been started (the log file is appended to).
    pub starts: u32,
    config: PathBuf,
    cwd: PathBuf,
    /// Extra command-line arguments (before `run`), kept for restarts.
    args: Vec<String>,
    /// The file-creation mask the gateway runs with; `None`: the test process's.
    umask: Option<u32>,
}

impl GatewayProcess {
    /// Writes `config_toml` to `<dir>/gateway.toml` and starts `vitalbridge run -c` in `dir`.
    pub fn start(dir: &Path, config_toml: &str) -> io::Result<Self> {
        Self::start_with_args(dir, config_toml, &[])
    }

    /// Like [`GatewayProcess::start`], with global options before `run` (e.g.
    /// `--log-format json`).
    pub fn start_with_args(dir: &Path, config_toml: &str, args: &[&str]) -> io::Result<Self> {
        Self::start_inner(dir, config_toml, args, None)
    }

    /// Like [`GatewayProcess::start`], with the process's file-creation mask set to `umask`
    /// (e.g. the permissive 0o022 of a shell outside systemd), kept for restarts.
    pub fn start_with_umask(dir: &Path, config_toml: &str, umask: u32) -> io::Result<Self> {
        Self::start_inner(dir, config_toml, &[], Some(umask))
    }

    fn start_inner(
        dir: &Path,
        config_toml: &str,
        args: &[&str],
        umask: Option<u32>,
    ) -> io::Result<Self> {
        let config = dir.join("gateway.toml");
        std::fs::write(&config, config_toml)?;
        let log = dir.join("gateway.log");
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let child = spawn(dir, &config, &log, &args, umask)?;
        Ok(Self {
            child,
            log,
            starts: 1,
            config,
            cwd: dir.into(),
            args,
            umask,
        })
    }

    /// Starts the gateway again with the same config (after a kill).
    pub fn restart(&mut self) -> io::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.cwd, &self.config, &self.log, &self.args, self.umask)?;
        self.starts += 1;
        Ok(())
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGKILL without waiting for the process to go. For a process blocked on a
    /// file system that no longer answers (see [`crate::powerloss`]): it cannot run again,
    /// but it is reaped only once that file system lets go; [`GatewayProcess::kill9`] (or
    /// [`GatewayProcess::restart`]) waits for that.
    pub fn send_sigkill(&mut self) {
        let _ = self.child.kill();
    }

    /// SIGTERM, then wait up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        // SAFETY: sending a signal to our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The process id (for reading `/proc/<pid>` figures).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Everything the gateway logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; true if it did within `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }
}

fn spawn(
    cwd: &Path,
    config: &Path,
    log: &Path,
    args: &[String],
    umask: Option<u32>,
) -> io::Result<Child> {
    let log_file = File::options().create(true).append(true).open(log)?;
    let mut command = Command::new(binary());
    if let Some(mask) = umask {
        use std::os::unix::process::CommandExt;
        // SAFETY: umask(2) is async-signal-safe and touches no memory, as required between
        // fork and exec.
        unsafe {
            command.pre_exec(move || {
                libc::umask(mask as libc::mode_t);
                Ok(())
            });
        }
    }
    command
        .args(args)
        .args(["run", "-c"])
        .arg(config)
        .current_dir(cwd)
        .env(
            "RUST_LOG",
            std::env::var("GATEWAY_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `vitalbridge ARGS` to completion in `cwd`: (exit code, stdout, stderr).
pub fn run_cli(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
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

/// Polls `vitalbridge queue stats -c gateway.toml` in `cwd` until it reports `pending: n`, for
/// at most `timeout`. Returns the last stats printed (check it contains `pending: n`).
pub fn wait_for_pending(cwd: &Path, n: u64, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let want = format!("pending: {n}\n");
    loop {
        let (_, stats, _) = run_cli(cwd, &["queue", "stats", "-c", "gateway.toml"]);
        if stats.contains(&want) || Instant::now() >= deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
