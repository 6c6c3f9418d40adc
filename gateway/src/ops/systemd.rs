//! systemd's service notification protocol (`sd_notify`), and the watchdog keep-alive.
//!
//! ## The protocol (sd_notify(3), systemd.service(5))
//!
//! A service started with `Type=notify` finds in `$NOTIFY_SOCKET` the address of a Unix
//! datagram socket owned by the service manager: a file-system path (`/run/systemd/notify`),
//! or, when the value starts with `@`, a name in the abstract namespace (the `@` stands for
//! the leading NUL byte of the address). It sends one datagram per state change, made of
//! newline-separated `KEY=VALUE` assignments:
//!
//! | message       | sent when                                  | what systemd does                          |
//! | ------------- | ------------------------------------------ | ------------------------------------------ |
//! | `READY=1`     | `lib::run` has started every stage         | the unit becomes `active`; `systemctl start` returns |
//! | `WATCHDOG=1`  | every half `$WATCHDOG_USEC`, while healthy | resets the unit's watchdog timer           |
//! | `STOPPING=1`  | SIGTERM/SIGINT arrived, shutdown begins    | the unit shows `deactivating`              |
//! | `STATUS=…`    | with the above                             | shown by `systemctl status` (no PHI: counts and states only) |
//!
//! With `WatchdogSec=` the manager also sets `$WATCHDOG_USEC` (the timeout, in µs) and
//! `$WATCHDOG_PID` (the process the watchdog is for; a child that inherited the variables
//! must not ping). A service that stays silent for longer is killed with SIGABRT and, under
//! `Restart=on-failure`, started again. Pings go out at half the timeout, as sd_watchdog_enabled(3)
//! advises, so one late tick does not kill a healthy gateway.
//!
//! Without `$NOTIFY_SOCKET` (run from a shell, a test, another supervisor) nothing is sent.
//!
//! ## What "healthy" means for the watchdog
//!
//! [`Watchdog::keep_alive`] pings only while the caller's health check passes; `lib::run`
//! checks that the buffer writer and every uplink worker task are still running (see there).
//! A stage that died, or an async runtime too wedged to run the keep-alive task at all, stops
//! the pings, and systemd restarts the gateway; a restart loses nothing, since readings are
//! acknowledged upstream only once durable and leases are in memory only.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error_chain::Chain;

/// How long one notification may block when the manager's queue is full. systemd reads its
/// socket promptly; this only bounds the worst case for the async runtime's thread.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// The shortest watchdog interval honoured; anything below is treated as this (a
/// misconfigured `WatchdogSec=1ms` must not turn the gateway into a ping loop).
const MIN_PING_INTERVAL: Duration = Duration::from_millis(50);

/// A connection-less sender of notifications to the service manager.
#[derive(Debug)]
pub struct Notifier {
    /// The manager's socket address, parsed from `$NOTIFY_SOCKET`.
    addr: SocketAddr,
    /// An unbound datagram socket; each notification is one `send_to`.
    socket: UnixDatagram,
}

impl Notifier {
    /// A notifier for the address in `$NOTIFY_SOCKET`, or `None` when the variable is unset or
    /// empty (not started by systemd). An unusable address is logged and treated as unset.
    pub fn from_env() -> Option<Self> {
        let spec = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty())?;
        match Self::new(&spec) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(error = %e, "NOTIFY_SOCKET is unusable; not notifying systemd");
                None
            }
        }
    }

    /// A notifier for `spec`: an absolute path, or `@name` for the abstract namespace.
    pub fn new(spec: &OsStr) -> io::Result<Self> {
        let addr = parse_address(spec)?;
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(Self { addr, socket })
    }

    /// Sends one datagram of newline-separated `KEY=VALUE` assignments.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let sent = self.socket.send_to_addr(state.as_bytes(), &self.addr)?;
        if sent != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "notification datagram truncated",
            ));
        }
        Ok(())
    }

    /// `READY=1`: start-up is complete.
    pub fn ready(&self, status: &str) {
        self.send_logged(&format!("READY=1\nSTATUS={status}"));
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self, status: &str) {
        self.send_logged(&format!("STOPPING=1\nSTATUS={status}"));
    }

    fn send_logged(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

/// Parses a `$NOTIFY_SOCKET` value. `@name` is the abstract name `\0name`; anything else must
/// be an absolute path (systemd never hands out relative ones, and a relative path would be
/// resolved against whatever the working directory happens to be).
fn parse_address(spec: &OsStr) -> io::Result<SocketAddr> {
    let bytes = spec.as_bytes();
    match bytes.first() {
        Some(b'@') => abstract_address(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(spec),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor an @abstract name",
        )),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &[u8]) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract Unix socket names exist only on Linux",
    ))
}

/// How often to ping, from the values of `$WATCHDOG_USEC` and `$WATCHDOG_PID`: half the
/// timeout, or `None` when there is no watchdog for this process (unset, unparsable or zero
/// timeout; a `$WATCHDOG_PID` that is not `own_pid`).
pub fn ping_interval(
    watchdog_usec: Option<&OsStr>,
    watchdog_pid: Option<&OsStr>,
    own_pid: u32,
) -> Option<Duration> {
    if let Some(pid) = watchdog_pid {
        let pid: u32 = pid.to_str()?.trim().parse().ok()?;
        if pid != own_pid {
            return None;
        }
    }
    let usec: u64 = watchdog_usec?.to_str()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    Some((Duration::from_micros(usec) / 2).max(MIN_PING_INTERVAL))
}

/// The systemd watchdog of this process: where to ping and how often.
#[derive(Debug)]
pub struct Watchdog {
    /// Where `WATCHDOG=1` goes.
    notifier: Notifier,
    /// Half the watchdog timeout.
    interval: Duration,
}

impl Watchdog {
    /// The watchdog systemd set up for this process (`WatchdogSec=` in the unit), if any.
    pub fn from_env() -> Option<Self> {
        let interval = ping_interval(
            std::env::var_os("WATCHDOG_USEC").as_deref(),
            std::env::var_os("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )?;
        Some(Self::new(Notifier::from_env()?, interval))
    }

    /// A watchdog pinging `notifier` every `interval`.
    pub fn new(notifier: Notifier, interval: Duration) -> Self {
        Self { notifier, interval }
    }

    /// How often [`keep_alive`](Self::keep_alive) pings.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Sends `WATCHDOG=1` every interval while `health()` is `Ok`, until `shutdown` is
    /// cancelled. While it is `Err(reason)` no ping goes out and the reason (with its causes)
    /// is logged once and shown in `STATUS=` (so systemd's watchdog fires and restarts the
    /// gateway).
    pub async fn keep_alive<F, E>(&self, shutdown: &CancellationToken, mut health: F)
    where
        F: FnMut() -> Result<(), E>,
        E: std::error::Error + 'static,
    {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match health() {
                Ok(()) => {
                    if failing {
                        tracing::info!("gateway healthy again; watchdog pings resume");
                        failing = false;
                    }
                    if let Err(e) = self.notifier.notify("WATCHDOG=1") {
                        tracing::warn!(error = %e, "cannot ping the systemd watchdog");
                    }
                }
                Err(e) => {
                    let reason = Chain(&e);
                    if !failing {
                        tracing::error!(
                            %reason,
                            "gateway unhealthy: withholding watchdog pings so systemd restarts it"
                        );
                        failing = true;
                    }
                    // Tell the operator why; STATUS is not a ping.
                    let _ = self.notifier.notify(&format!("STATUS=unhealthy: {reason}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::linux::net::SocketAddrExt;

    /// A stand-in for systemd's notification socket: a real bound datagram socket.
    fn manager_socket(dir: &std::path::Path) -> (UnixDatagram, OsString) {
        let path = dir.join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (sock, path.into_os_string())
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn ready_and_stopping_reach_a_path_socket_as_one_datagram_each() {
        let dir = tempfile::tempdir().unwrap();
        let (manager, spec) = manager_socket(dir.path());
        let n = Notifier::new(&spec).unwrap();
        n.ready("running");
        n.stopping("shutting down");
        assert_eq!(recv(&manager), "READY=1\nSTATUS=running");
        assert_eq!(recv(&manager), "STOPPING=1\nSTATUS=shutting down");
    }

    #[test]
    fn an_at_sign_means_the_abstract_namespace() {
        let name = format!(
            "vitalbridge-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let manager = UnixDatagram::bind_addr(&addr).unwrap();
        manager
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::new(OsStr::new(&format!("@{name}"))).unwrap();
        n.notify("WATCHDOG=1").unwrap();
        assert_eq!(recv(&manager), "WATCHDOG=1");
    }

    #[test]
    fn relative_and_empty_addresses_are_refused() {
        for bad in ["", "notify", "./notify"] {
            assert!(Notifier::new(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sending_to_a_socket_nobody_listens_on_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("gone").into_os_string();
        let n = Notifier::new(&spec).unwrap();
        assert!(n.notify("READY=1").is_err());
        n.ready("running"); // logged, not raised
    }

    #[test]
    fn the_ping_interval_is_half_the_watchdog_timeout_for_this_process_only() {
        let s = |v: &str| Some(OsString::from(v));
        let me = 4242;
        let cases: &[(Option<OsString>, Option<OsString>, Option<Duration>)] = &[
            (s("30000000"), None, Some(Duration::from_secs(15))),
            (s("30000000"), s("4242"), Some(Duration::from_secs(15))),
            (s("30000000"), s("1"), None),
            (s("30000000"), s("not-a-pid"), None),
            (None, None, None),
            (s("0"), None, None),
            (s("-5"), None, None),
            (s("soon"), None, None),
            (s("10"), None, Some(MIN_PING_INTERVAL)),
        ];
        for (usec, pid, expected) in cases {
            assert_eq!(
                ping_interval(usec.as_deref(), pid.as_deref(), me),
                *expected,
                "WATCHDOG_USEC={usec:?} WATCHDOG_PID={pid:?}"
            );
        }
    }

    /// Collects notifications until one equals `wanted` (or fails after 10 s).
    async fn until(manager: &UnixDatagram, wanted: &str) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            match manager.recv(&mut buf) {
                Ok(n) => {
                    let m = String::from_utf8(buf[..n].to_vec()).unwrap();
                    let done = m == wanted;
                    got.push(m);
                    if done {
                        return got;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no {wanted:?} within 10 s; got {got:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn keep_alive_pings_while_healthy_and_goes_silent_while_not() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let (manager, spec) = manager_socket(dir.path());
        manager.set_nonblocking(true).unwrap();
        let watchdog = Watchdog::new(Notifier::new(&spec).unwrap(), Duration::from_millis(20));
        /// A stage's end, as a health check reports it.
        #[derive(Debug, thiserror::Error)]
        #[error("buffer writer stopped")]
        struct Stopped;
        let healthy = std::sync::Arc::new(AtomicBool::new(true));
        let shutdown = CancellationToken::new();
        let task = {
            let healthy = healthy.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                watchdog
                    .keep_alive(&shutdown, || {
                        if healthy.load(Ordering::SeqCst) {
                            Ok(())
                        } else {
                            Err(Stopped)
                        }
                    })
                    .await
            })
        };
        const UNHEALTHY: &str = "STATUS=unhealthy: buffer writer stopped";

        // Healthy: pings.
        until(&manager, "WATCHDOG=1").await;
        until(&manager, "WATCHDOG=1").await;

        // Unhealthy: between two health checks that failed, no ping.
        healthy.store(false, Ordering::SeqCst);
        until(&manager, UNHEALTHY).await;
        let between = until(&manager, UNHEALTHY).await;
        assert_eq!(between, [UNHEALTHY], "only the status, no WATCHDOG=1");
        let between = until(&manager, UNHEALTHY).await;
        assert_eq!(between, [UNHEALTHY]);

        // Healthy again: pings resume.
        healthy.store(true, Ordering::SeqCst);
        until(&manager, "WATCHDOG=1").await;

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("keep_alive returns on shutdown")
            .unwrap();
    }
}
