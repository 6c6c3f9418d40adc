//! A directory that loses, on a simulated power cut, every write that was not fsync'ed.
//!
//! [`PowerLossFs::mount`] mounts `tests/powerloss_fs.py` (a FUSE layer, Debian's
//! `python3-pyfuse3`, run with `/usr/bin/python3` or `$POWERLOSS_PYTHON`) on a temporary
//! directory, over a temporary backing directory that plays the disk. Writes are held in
//! the layer's memory (visible to every reader, as the page cache would be) until the file
//! is fsync'ed or fdatasync'ed. [`PowerLossFs::cut`] cuts the power: the layer stops making
//! anything durable (an fsync under way never returns), the gateway is SIGKILLed, the layer
//! is killed (its memory is the page cache: gone) and the backing directory is mounted
//! again, so the directory shows exactly what was durable at the instant of the cut. Names (create, rename, unlink, mkdir) are
//! durable at once; see the Python file's header and `docs/testing-faults.md` for the whole
//! model, and how SQLite's memory-mapped `-shm` works on it.
//!
//! Needs root (or the right to mount FUSE) and `/dev/fuse`. Dropping the value unmounts.
//!
//! ```no_run
//! use vitalbridge_tests::powerloss::PowerLossFs;
//! let mut fs = PowerLossFs::mount().unwrap();
//! std::fs::write(fs.path().join("a"), b"not synced").unwrap();
//! fs.power_cut().unwrap();
//! assert_eq!(std::fs::read(fs.path().join("a")).unwrap(), b"");
//! ```

use std::ffi::CString;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tempfile::TempDir;

use crate::gateway::GatewayProcess;

/// How long the layer may take to mount, or to answer a command.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a clean unmount may take before the layer is killed and detached.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);

/// A file holding unsynced state, as the layer reported it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DirtyFile {
    /// Path relative to the mount.
    pub path: String,
    /// Unsynced data, in whole 4 KiB pages.
    pub dirty_bytes: u64,
    /// The size readers see now.
    pub size: u64,
    /// The size that survives a cut.
    pub durable_size: u64,
}

/// The layer's state and counters (since its last mount).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Status {
    /// Files with unsynced data or an unsynced size.
    pub files: Vec<DirtyFile>,
    /// `write` requests served.
    pub writes: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// `fsync`/`fdatasync` requests served.
    pub fsyncs: u64,
    /// Bytes made durable by them.
    pub bytes_synced: u64,
    /// fsyncs waiting out the configured delay (see [`PowerLossFs::mount_with_sync_delay`]).
    pub fsyncs_in_flight: u64,
}

impl Status {
    /// The unsynced state of the file at `path` (relative to the mount), if any.
    pub fn file(&self, path: &str) -> Option<&DirtyFile> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// What one cut threw away: the layer's state just before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The state that was lost (and the counters of the mount that ended).
    pub lost: Status,
}

impl Cut {
    /// Unsynced bytes (whole pages) lost in files whose name ends with `suffix`.
    pub fn lost_bytes(&self, suffix: &str) -> u64 {
        self.lost
            .files
            .iter()
            .filter(|f| f.path.ends_with(suffix))
            .map(|f| f.dirty_bytes + f.size.saturating_sub(f.durable_size))
            .sum()
    }
}

struct Daemon {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

/// A mounted power-loss layer. Unmounted on drop.
pub struct PowerLossFs {
    /// Mount point, backing directory (`disk/`) and the layer's log.
    dir: TempDir,
    daemon: Option<Daemon>,
    mounts: u32,
    sync_delay: Duration,
}

/// The Python interpreter with Debian's `python3-pyfuse3` (not a pyenv build).
fn python() -> PathBuf {
    std::env::var_os("POWERLOSS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/python3"))
}

/// `tests/powerloss_fs.py`.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("powerloss_fs.py")
}

impl PowerLossFs {
    /// Mounts a fresh, empty layer on a new temporary directory.
    pub fn mount() -> io::Result<PowerLossFs> {
        Self::mount_with_sync_delay(Duration::ZERO)
    }

    /// Like [`PowerLossFs::mount`], with every fsync taking `delay` before it writes (a slow
    /// SD card): the window in which a cut finds a commit half-way grows accordingly.
    pub fn mount_with_sync_delay(delay: Duration) -> io::Result<PowerLossFs> {
        let dir = tempfile::Builder::new()
            .prefix("vitalbridge-powerloss-")
            .tempdir()?;
        std::fs::create_dir(dir.path().join("disk"))?;
        std::fs::create_dir(dir.path().join("mnt"))?;
        let mut fs = PowerLossFs {
            dir,
            daemon: None,
            mounts: 0,
            sync_delay: delay,
        };
        fs.start_daemon()?;
        Ok(fs)
    }

    /// The directory to use (the mount point).
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// The backing directory: what is durable.
    pub fn backing(&self) -> PathBuf {
        self.dir.path().join("disk")
    }

    /// How many times the layer has been mounted (1 + the number of cuts).
    pub fn mounts(&self) -> u32 {
        self.mounts
    }

    /// The layer's log (its stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("layer.log")).unwrap_or_default()
    }

    fn start_daemon(&mut self) -> io::Result<()> {
        if !Path::new("/dev/fuse").exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "/dev/fuse is missing: the power-loss layer needs FUSE",
            ));
        }
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("layer.log"))?;
        let mut child = Command::new(python())
            .arg(script())
            .arg("--sync-delay-ms")
            .arg(self.sync_delay.as_millis().to_string())
            .arg(self.backing())
            .arg(self.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("spawn {} {}: {e}", python().display(), script().display()),
                )
            })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut daemon = Daemon {
            child,
            stdin,
            lines,
        };
        match daemon.lines.recv_timeout(ANSWER_TIMEOUT) {
            Ok(line) if line.contains("\"ready\": true") => {}
            other => {
                let _ = daemon.child.kill();
                let _ = daemon.child.wait();
                let _ = unmount(&self.path(), true);
                return Err(io::Error::other(format!(
                    "the power-loss layer did not mount ({other:?}); is python3-pyfuse3 installed \
                     (bash tests/setup.sh)?\n--- layer log ---\n{}",
                    self.log()
                )));
            }
        }
        self.daemon = Some(daemon);
        self.mounts += 1;
        Ok(())
    }

    /// The layer's current state: which files hold unsynced data, and counters.
    pub fn status(&mut self) -> io::Result<Status> {
        self.command("status")
    }

    fn command(&mut self, command: &str) -> io::Result<Status> {
        let log = self.log();
        let daemon = self
            .daemon
            .as_mut()
            .ok_or_else(|| io::Error::other("not mounted"))?;
        let stdin = daemon.stdin.as_mut().expect("stdin kept while mounted");
        stdin.write_all(format!("{command}\n").as_bytes())?;
        stdin.flush()?;
        let line = daemon.lines.recv_timeout(ANSWER_TIMEOUT).map_err(|e| {
            io::Error::other(format!(
                "the power-loss layer did not answer {command:?}: {e}\n--- layer log ---\n{log}"
            ))
        })?;
        serde_json::from_str(&line).map_err(|e| io::Error::other(format!("{e}: {line}")))
    }

    /// Power cut with the gateway running on this directory. The power goes first: from
    /// that instant nothing more becomes durable, and an fsync under way or asked for then
    /// never returns (see the layer's `freeze`). Then the gateway is SIGKILLed (and reaped),
    /// the layer with everything unsynced is killed, and the backing directory is mounted
    /// again. The gateway is left stopped; restart it with [`GatewayProcess::restart`].
    pub fn cut(&mut self, gateway: &mut GatewayProcess) -> io::Result<Cut> {
        let lost = self.command("freeze")?;
        // A SIGKILLed process runs no more of its own code, but a thread of it waiting for
        // an fsync the layer will never answer is reaped only once the layer is gone.
        gateway.send_sigkill();
        let cut = self.remount(lost);
        gateway.kill9();
        cut
    }

    /// Power cut without a gateway: as [`PowerLossFs::cut`]; whatever else uses the
    /// directory must be stopped by the caller (after this returns it would hang on I/O).
    pub fn power_cut(&mut self) -> io::Result<Cut> {
        let lost = self.command("freeze")?;
        self.remount(lost)
    }

    fn remount(&mut self, lost: Status) -> io::Result<Cut> {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.child.kill();
            let _ = daemon.child.wait();
        }
        unmount(&self.path(), false)?;
        self.start_daemon()?;
        Ok(Cut { lost })
    }
}

/// umount2(2); retried while busy, then detached lazily if `lazy_fallback`.
fn unmount(path: &Path, lazy_fallback: bool) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let deadline = Instant::now() + UNMOUNT_TIMEOUT;
    loop {
        // SAFETY: a valid NUL-terminated path; umount2 has no other preconditions.
        if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // Not mounted (any more): nothing to do.
            Some(libc::EINVAL) | Some(libc::ENOENT) => return Ok(()),
            Some(libc::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Some(libc::EBUSY) if lazy_fallback => {
                // SAFETY: as above.
                if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
                    return Ok(());
                }
                return Err(io::Error::last_os_error());
            }
            _ => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("umount {}: {e}", path.display()),
                ))
            }
        }
    }
}

impl Drop for PowerLossFs {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            // End of input: the layer unmounts itself and exits.
            drop(daemon.stdin.take());
            let deadline = Instant::now() + UNMOUNT_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = daemon.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = daemon.child.kill();
            let _ = daemon.child.wait();
        }
        let _ = unmount(&self.path(), true);
    }
}
