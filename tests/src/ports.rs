//! Loopback ports for the servers a test starts and for the gateway's own listeners.
//!
//! Binding port 0 and releasing it hands out a port from the kernel's ephemeral range, and
//! the kernel hands that port out again: to the next `bind(0)` in a test running in
//! parallel, or as the local end of an outgoing connection, before the server it was meant
//! for has bound it. CI met exactly that (`ops.http.listen: cannot listen on 127.0.0.1:…:
//! Address already in use`). So [`free_port`] takes ports from below the ephemeral range,
//! which the kernel never picks by itself; hands each one out once per test process (the
//! walk starts at an offset from the process id, so two test processes on one machine
//! rarely walk the same ports); and returns a port only if binding it succeeds now, which
//! skips anything another program already listens on.

use std::fs;
use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The lowest port handed out.
const FLOOR: u16 = 10_000;

/// A loopback port that no other server of this test process has been given, that the kernel
/// does not hand out by itself, and that was free a moment ago.
pub fn free_port() -> io::Result<u16> {
    let Some((low, high)) = range() else {
        // The ephemeral range starts too low to leave room below it: fall back to the
        // kernel's choice.
        let l = TcpListener::bind("127.0.0.1:0")?;
        return Ok(l.local_addr()?.port());
    };
    let span = u32::from(high - low);
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new(std::process::id().wrapping_mul(7_919) % span));
    for _ in 0..span {
        let port = low + (next.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no free loopback port in {low}..{high}"),
    ))
}

/// `FLOOR..` the start of the kernel's ephemeral range, if that leaves at least 1,000 ports.
fn range() -> Option<(u16, u16)> {
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    (ephemeral_low >= FLOOR + 1_000).then_some((FLOOR, ephemeral_low))
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test, not two: a second test walking the whole range in parallel would wrap the
    // counter under the first one.
    #[test]
    fn ports_are_below_the_ephemeral_range_never_handed_out_twice_and_never_taken() {
        let (low, high) = range().expect("this machine's ephemeral range leaves room");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let port = free_port().unwrap();
            assert!((low..high).contains(&port), "{port} outside {low}..{high}");
            assert!(seen.insert(port), "{port} handed out twice");
        }
        let port = free_port().unwrap();
        let _taken = TcpListener::bind(("127.0.0.1", port)).unwrap();
        // Walk the whole range once more: the taken port is never returned.
        for _ in 0..high - low {
            assert_ne!(free_port().unwrap(), port);
        }
    }
}
