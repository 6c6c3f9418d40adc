//! A serial cable made of two pseudo-terminals, with a hand on the plug.
//!
//! ```text
//!  simulator ── device link ─► pty A slave │ master A ═╗ relay thread ╔═ master B │ pty B slave ◄─ gateway link ── gateway
//!                                                      ╚═ noise ══════╝
//! ```
//!
//! [`SerialLink`] makes two ptys and a thread that copies bytes between their masters, as
//! `socat` would. Each end is reached through a stable symlink in a directory of the test's
//! choosing ([`SerialLink::device_path`], [`SerialLink::gateway_path`]), the way a real
//! device is reached through `/dev/serial/by-id/…`. The relay can:
//!
//! - **inject noise** into the device → gateway direction ([`SerialLink::set_noise`]): after
//!   a complete frame (a `00` delimiter) it may add random garbage, a truncated copy of the
//!   frame, a copy with one bit flipped, or an oversize run, each ended by `00` so that each
//!   costs the receiver exactly one bad frame, and counts what it injected ([`Injected`]);
//! - **unplug** the gateway end ([`SerialLink::unplug`]): close its pty (the gateway's reads
//!   fail with `EIO`, as for a pulled USB adapter) and remove its link; bytes from the
//!   device are lost meanwhile, as on a pulled cable; and **replug** it
//!   ([`SerialLink::replug`]): a new pty behind the same link.
//!
//! Both ptys are put in raw mode when made, so nothing is echoed or translated before the
//! programs under test open them.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::Rng;

/// Bytes waiting for a pty that is not being read before new ones are dropped.
const MAX_BACKLOG: usize = 256 * 1024;
/// Bytes longer than any firmware frame (402 with its delimiter), to trigger `Oversize`.
const OVERSIZE: std::ops::Range<usize> = 450..700;

/// One pseudo-terminal: its master, and the path of its slave.
struct Pty {
    master: OwnedFd,
    slave: PathBuf,
}

impl Pty {
    fn open() -> io::Result<Self> {
        // SAFETY: plain libc calls on a descriptor we own; ptsname_r writes into `buf`.
        unsafe {
            let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let master = OwnedFd::from_raw_fd(fd);
            if libc::grantpt(fd) != 0 || libc::unlockpt(fd) != 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = [0 as libc::c_char; 128];
            if libc::ptsname_r(fd, buf.as_mut_ptr(), buf.len()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let slave = PathBuf::from(CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned());
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            let pty = Self { master, slave };
            pty.make_raw()?;
            Ok(pty)
        }
    }

    /// Raw mode on the slave side (kept while the master is open).
    fn make_raw(&self) -> io::Result<()> {
        let slave = File::options().read(true).write(true).open(&self.slave)?;
        // SAFETY: termios is plain data; tcgetattr fills it before use.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(slave.as_raw_fd(), &mut t) != 0 {
                return Err(io::Error::last_os_error());
            }
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Points `link` at `target`, replacing what was there, atomically.
fn relink(target: &Path, link: &Path) -> io::Result<()> {
    let tmp = link.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}

/// Noise to inject after frames from the device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Noise {
    /// Chance, after each non-empty frame, of injecting one bad frame.
    pub probability: f64,
}

/// Bad frames injected, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Injected {
    /// Random non-zero bytes.
    pub garbage: u64,
    /// A prefix of the frame just sent.
    pub truncated: u64,
    /// The frame just sent with one bit flipped.
    pub flipped: u64,
    /// A run longer than any frame.
    pub oversize: u64,
}

impl Injected {
    /// All kinds together.
    pub fn total(&self) -> u64 {
        self.garbage + self.truncated + self.flipped + self.oversize
    }
}

#[derive(Default)]
struct State {
    /// The gateway end; `None` while unplugged.
    gateway: Option<Pty>,
    noise: Option<Noise>,
    injected: Injected,
    /// Valid frames passed from the device to the gateway end.
    frames_forwarded: u64,
    /// Device bytes lost because the gateway end was unplugged or not reading.
    dropped: u64,
}

/// Two ptys joined by a relay thread; see the module docs.
pub struct SerialLink {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    device_link: PathBuf,
    gateway_link: PathBuf,
}

impl SerialLink {
    /// Makes the ptys, their links `dir/device-tty` and `dir/gateway-tty`, and starts the relay.
    pub fn new(dir: &Path) -> io::Result<Self> {
        let device = Pty::open()?;
        let gateway = Pty::open()?;
        let device_link = dir.join("device-tty");
        let gateway_link = dir.join("gateway-tty");
        relink(&device.slave, &device_link)?;
        relink(&gateway.slave, &gateway_link)?;
        let state = Arc::new(Mutex::new(State {
            gateway: Some(gateway),
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::Builder::new()
                .name("serial-link".into())
                .spawn(move || relay(device, state, stop))?
        };
        Ok(Self {
            state,
            stop,
            thread: Some(thread),
            device_link,
            gateway_link,
        })
    }

    /// The path the device (simulator) opens.
    pub fn device_path(&self) -> &Path {
        &self.device_link
    }

    /// The path the gateway opens.
    pub fn gateway_path(&self) -> &Path {
        &self.gateway_link
    }

    /// Starts (or, with `None`, stops) injecting noise after device frames.
    pub fn set_noise(&self, noise: Option<Noise>) {
        self.lock().noise = noise;
    }

    /// What was injected so far.
    pub fn injected(&self) -> Injected {
        self.lock().injected
    }

    /// Valid device frames passed to the gateway end so far.
    pub fn frames_forwarded(&self) -> u64 {
        self.lock().frames_forwarded
    }

    /// Device bytes lost so far (unplugged, or the gateway end not reading).
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Pulls the gateway end: its pty closes and its link disappears.
    pub fn unplug(&self) {
        let mut state = self.lock();
        state.gateway = None;
        let _ = std::fs::remove_file(&self.gateway_link);
    }

    /// Plugs the gateway end back in: a new pty behind the same link.
    pub fn replug(&self) -> io::Result<()> {
        let pty = Pty::open()?;
        relink(&pty.slave, &self.gateway_link)?;
        self.lock().gateway = Some(pty);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for SerialLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.device_link);
        let _ = std::fs::remove_file(&self.gateway_link);
    }
}

/// Reads what is there without blocking: `Ok(0)` when nothing (or nobody on the slave).
fn read_some(fd: RawFd, buf: &mut [u8]) -> usize {
    // SAFETY: reading into a buffer we own from a descriptor we own.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).unwrap_or(0)
}

/// Writes as much of `pending` as the pty takes; keeps the rest.
fn flush(fd: RawFd, pending: &mut Vec<u8>) {
    while !pending.is_empty() {
        // SAFETY: writing from a buffer we own to a descriptor we own.
        let n = unsafe { libc::write(fd, pending.as_ptr().cast(), pending.len()) };
        match usize::try_from(n) {
            Ok(n) if n > 0 => {
                pending.drain(..n);
            }
            _ => return,
        }
    }
}

fn poll_readable(fds: &[RawFd], timeout_ms: i32) {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `polls` is a valid array of pollfd for its length.
    let ready = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, timeout_ms) };
    // A master whose slave is not open reports POLLHUP at once; do not spin on it.
    if ready > 0 && polls.iter().all(|p| p.revents & libc::POLLIN == 0) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn relay(device: Pty, state: Arc<Mutex<State>>, stop: Arc<AtomicBool>) {
    let mut rng = rand::thread_rng();
    let mut buf = vec![0u8; 8192];
    // The device frame in progress (bytes since the last 00, without it), for frame-aware
    // noise.
    let mut frame: Vec<u8> = Vec::new();
    let mut to_gateway: Vec<u8> = Vec::new();
    let mut to_device: Vec<u8> = Vec::new();
    let dev = device.master.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        let gw = state
            .lock()
            .map(|s| s.gateway.as_ref().map(|p| p.master.as_raw_fd()))
            .unwrap_or(None);
        let mut fds = vec![dev];
        fds.extend(gw);
        poll_readable(&fds, 10);
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        // The gateway end may have been unplugged while we waited.
        let gw = st.gateway.as_ref().map(|p| p.master.as_raw_fd());
        let n = read_some(dev, &mut buf);
        for &b in &buf[..n] {
            to_gateway.push(b);
            if b != 0 {
                // Bytes that are not frames (line devices) pass through untouched.
                if frame.len() < MAX_BACKLOG {
                    frame.push(b);
                }
                continue;
            }
            let complete = std::mem::take(&mut frame);
            if !complete.is_empty() {
                st.frames_forwarded += 1;
                if let Some(noise) = st.noise {
                    if rng.gen_bool(noise.probability.clamp(0.0, 1.0)) {
                        let bad = bad_frame(&mut rng, &complete, &mut st.injected);
                        to_gateway.extend_from_slice(&bad);
                    }
                }
            }
        }
        match gw {
            Some(fd) => {
                flush(fd, &mut to_gateway);
                if to_gateway.len() > MAX_BACKLOG {
                    st.dropped += to_gateway.len() as u64;
                    to_gateway.clear();
                }
                let n = read_some(fd, &mut buf);
                to_device.extend_from_slice(&buf[..n]);
            }
            None => {
                st.dropped += to_gateway.len() as u64;
                to_gateway.clear();
            }
        }
        flush(dev, &mut to_device);
        if to_device.len() > MAX_BACKLOG {
            to_device.clear();
        }
    }
}

/// One bad frame, ended by `00`, built from `frame` (the COBS bytes of a good frame, without
/// its delimiter). Each kind makes exactly one receive error.
fn bad_frame(rng: &mut impl Rng, frame: &[u8], injected: &mut Injected) -> Vec<u8> {
    let nonzero = |rng: &mut dyn rand::RngCore| rng.gen_range(1..=255u8);
    let mut bad: Vec<u8> = match rng.gen_range(0..4) {
        0 => {
            injected.garbage += 1;
            let len = rng.gen_range(1..64);
            (0..len).map(|_| nonzero(rng)).collect()
        }
        1 if frame.len() > 1 => {
            injected.truncated += 1;
            frame[..rng.gen_range(1..frame.len())].to_vec()
        }
        2 => {
            injected.flipped += 1;
            let mut copy = frame.to_vec();
            loop {
                let at = rng.gen_range(0..copy.len());
                let bit = 1u8 << rng.gen_range(0..8);
                if copy[at] ^ bit != 0 {
                    copy[at] ^= bit;
                    break;
                }
            }
            copy
        }
        _ => {
            injected.oversize += 1;
            let len = rng.gen_range(OVERSIZE);
            (0..len).map(|_| nonzero(rng)).collect()
        }
    };
    bad.push(0);
    bad
}
