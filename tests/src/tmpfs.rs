//! A small tmpfs of its own, for disk-full tests: mounted on a temporary directory, resized
//! while in use, filled with a ballast file, and always unmounted on drop (also when the
//! test panics). Needs root.

use std::ffi::CString;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A mounted tmpfs. Unmounted on drop.
pub struct Tmpfs {
    dir: TempDir,
    size: u64,
}

fn cstring(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(io::Error::other)
}

fn mount_tmpfs(target: &Path, flags: libc::c_ulong, size: u64) -> io::Result<()> {
    let source = cstring(b"vitalbridge-test")?;
    let target_c = cstring(target.as_os_str().as_bytes())?;
    let fstype = cstring(b"tmpfs")?;
    let data = cstring(format!("size={size},mode=0755").as_bytes())?;
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "mount tmpfs (size {size}) on {}: {e} (these tests need root)",
                target.display()
            ),
        ));
    }
    Ok(())
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes (rounded up to whole pages by the kernel).
    pub fn mount(size: u64) -> io::Result<Tmpfs> {
        let dir = tempfile::Builder::new()
            .prefix("vitalbridge-tmpfs-")
            .tempdir()?;
        mount_tmpfs(dir.path(), 0, size)?;
        Ok(Tmpfs { dir, size })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The size it was mounted or last resized with.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// `mount -o remount,size=N`: grows (or shrinks, down to what is in use) while files
    /// stay open.
    pub fn resize(&mut self, size: u64) -> io::Result<()> {
        mount_tmpfs(self.dir.path(), libc::MS_REMOUNT, size)?;
        self.size = size;
        Ok(())
    }

    /// Bytes an unprivileged writer could still allocate.
    pub fn free_bytes(&self) -> io::Result<u64> {
        let path = cstring(self.dir.path().as_os_str().as_bytes())?;
        // SAFETY: statvfs writes into the zeroed struct we own.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid path and out-pointer.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }

    /// Writes a ballast file at `name` until the file system is full (ENOSPC); returns its
    /// path and size. Whatever else writes to the file system then fails until the ballast
    /// is removed.
    pub fn fill(&self, name: &str) -> io::Result<(PathBuf, u64)> {
        let path = self.dir.path().join(name);
        let mut file = std::fs::File::create(&path)?;
        let mut written = 0u64;
        for chunk in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
            let buf = vec![0x5au8; chunk];
            loop {
                match file.write(&buf) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok((path, written))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let Ok(target) = cstring(self.dir.path().as_os_str().as_bytes()) else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // SAFETY: a valid path.
            if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
                return;
            }
            let busy = io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY);
            if !busy || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Still in use (a process the test failed to stop): detach it, so the mount
        // disappears when the last user goes.
        // SAFETY: a valid path.
        unsafe {
            libc::umount2(target.as_ptr(), libc::MNT_DETACH);
        }
    }
}
