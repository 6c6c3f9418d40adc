//! Free space on the buffer's file system, and the floor below which new readings are refused.
//!
//! The buffer refuses new readings while the file system holding `data_dir` has less free
//! space than the floor, so that SQLite always has room for what must still happen when the
//! disk is nearly full: deleting delivered rows (a delete in WAL mode first *grows* the WAL),
//! dead-lettering, checkpoints. Without the headroom a full disk also stops deliveries from
//! being recorded, and the queue never drains. The floor is `buffer.min_free_mb`, or by
//! default 5 % of the file system, at least [`MIN_DEFAULT_FLOOR`] and at most
//! [`MAX_DEFAULT_FLOOR`].

use std::path::Path;

/// The smallest default floor.
pub const MIN_DEFAULT_FLOOR: u64 = 1024 * 1024;
/// The largest default floor.
pub const MAX_DEFAULT_FLOOR: u64 = 64 * 1024 * 1024;

/// Space on a file system, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes an unprivileged process may still write.
    pub free: u64,
    /// Size of the file system.
    pub total: u64,
}

/// The space of the file system holding `path`.
pub fn space(path: &Path) -> std::io::Result<Space> {
    let s = rustix::fs::statvfs(path)?;
    let unit = s.f_frsize.max(1);
    Ok(Space {
        free: s.f_bavail.saturating_mul(unit),
        total: s.f_blocks.saturating_mul(unit),
    })
}

/// The floor: `configured` bytes, or the default for a file system of `total` bytes.
pub fn floor(configured: Option<u64>, total: u64) -> u64 {
    configured.unwrap_or_else(|| (total / 20).clamp(MIN_DEFAULT_FLOOR, MAX_DEFAULT_FLOOR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_floor_is_five_percent_within_bounds() {
        const MIB: u64 = 1024 * 1024;
        assert_eq!(floor(None, 8 * MIB), MIB);
        assert_eq!(floor(None, 100 * MIB), 5 * MIB);
        assert_eq!(floor(None, 64 * 1024 * MIB), 64 * MIB);
        assert_eq!(floor(Some(3), 64 * 1024 * MIB), 3);
    }

    #[test]
    fn the_space_of_a_real_file_system_is_read() {
        let s = space(Path::new("/")).unwrap();
        assert!(s.total > 0 && s.free <= s.total, "{s:?}");
    }
}
