//! Length limits on every string that enters the gateway from outside: payloads (canonical
//! JSON over MQTT), device strings (BLE Device Information, firmware `Hello`), line-protocol
//! fields, device-profile files and the configuration file.
//!
//! Every limit is in bytes of UTF-8 and is defined once here, by the kind of text it bounds.
//! Entry points refuse an over-long string with an error that names the field or key and
//! the limit — never the value, which may identify a patient — rather than cut it short:
//! a truncated id or code would be another id or code.
//!
//! Nothing here decides what a valid value *is* (the entry points do: a catalog lookup, a
//! UCUM check, a URL parse); this only keeps the sizes sane, so that one bad publisher or a
//! mistyped config cannot make a 250 KB Device line, a huge dead-letter reason or a log
//! line quoting megabytes.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Ids: a device's id (payload `device.id`, `[[devices]] id`, a serial port's `device_id`,
/// a USB serial number), the gateway id, an MQTT client id, a patient identifier value.
/// Every reading identifier embeds the device id and the patient id, so they stay short.
pub const MAX_ID_LEN: usize = 128;

/// Codes and names from a fixed vocabulary: metric names and codes, status flags, id types,
/// data-absent reasons, device profile ids, serial port names, line-profile field names.
pub const MAX_CODE_LEN: usize = 64;

/// UCUM unit codes (`mm[Hg]`, `kg/m2`, `/min`).
pub const MAX_UNIT_LEN: usize = 32;

/// Display names shown on the FHIR Device: model, manufacturer, a profile's name.
pub const MAX_NAME_LEN: usize = 128;

/// Identifier systems (a patient's MRN namespace URI) and literal references
/// (`Patient/123`); copied into every Observation identifier of a bound device.
pub const MAX_SYSTEM_LEN: usize = 256;

/// A time stamp as text (RFC 3339 is at most 35 characters).
pub const MAX_TIME_LEN: usize = 64;

/// One field of a line-protocol line that the decoder uses: a number, status bits or part
/// of a time stamp.
pub const MAX_LINE_FIELD_LEN: usize = 64;

/// Endpoint URLs in the configuration (MQTT broker, FHIR base URL).
pub const MAX_URL_LEN: usize = 2048;

/// MQTT topic filters in the configuration, and topics of received messages (which become
/// dead-letter origins and audit fields).
pub const MAX_TOPIC_LEN: usize = 256;

/// File system paths in the configuration (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// Free text in profile files: documentation references, example sources, regex patterns.
pub const MAX_TEXT_LEN: usize = 4096;

/// The configuration file. Thousands of `[[devices]]` bindings fit in well under this.
pub const MAX_CONFIG_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// A device-profile file (`line-*.toml`, `ble-*.toml`) read from a configured directory.
pub const MAX_PROFILE_FILE_BYTES: u64 = 1024 * 1024;

/// Most device-profile files of one kind (`ble-*.toml`, `line-*.toml`, `json-*.toml`) read
/// from one directory.
pub const MAX_PROFILE_FILES: usize = 256;

/// The gateway's own small state files in the data directory (`gateway-id`, the
/// configuration fingerprint).
pub const MAX_STATE_FILE_BYTES: u64 = 64 * 1024;

/// Most connections the operations server serves at once.
pub const MAX_OPS_CONNECTIONS: usize = 32;

/// The operations server's access token file (`ops.http.token_file`).
pub const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// The problem text for a string over `limit`, for errors that name the field themselves.
pub fn too_long_message(limit: usize) -> String {
    format!("longer than {limit} bytes")
}

/// Reads a text file of at most `max` bytes. A larger file (or one that grows while it is
/// read, or a device such as `/dev/zero`) is refused without reading more than `max + 1`
/// bytes of it.
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<String> {
    read_open_capped(std::fs::File::open(path)?, max)
}

/// Reads the file `path` found in the directory `dir` (a profile directory, a pack), at most
/// `max` bytes, refusing what a directory of configuration files must not make the gateway
/// read:
///
/// - a symbolic link whose target is outside `dir` (it could reach a secret, and a parse
///   error would quote the secret's first line); a link inside `dir` is followed;
/// - anything but a regular file: a FIFO would block the open for ever (and with it the
///   gateway's start and its SIGTERM), a device never ends. The file is opened
///   `O_NONBLOCK`, and checked to be regular on the open descriptor, so a file swapped for a
///   FIFO between the check and the open is refused too;
/// - more than `max` bytes, or text that is not UTF-8.
///
/// The errors name the problem, never the content.
pub fn read_file_in_dir(dir: &Path, path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::OpenOptionsExt;
    let link = std::fs::symlink_metadata(path)?;
    let target = if link.file_type().is_symlink() {
        let target = std::fs::canonicalize(path)?;
        let dir = std::fs::canonicalize(dir)?;
        if !target.starts_with(&dir) {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "a symbolic link out of its directory: refused (copy the file in instead)",
            ));
        }
        target
    } else {
        path.to_path_buf()
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&target)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file: refused",
        ));
    }
    read_open_capped(file, max)
}

/// The files of `dir` named `<prefix>*.toml`, sorted by name (the order they load in). An
/// entry that cannot be read is an error, as is a directory with more than
/// [`MAX_PROFILE_FILES`] such files (a mistaken directory, not a profile set). Each file is
/// then read with [`read_file_in_dir`].
pub fn profile_files(dir: &Path, prefix: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let matches = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".toml"));
        if matches {
            files.push(path);
            if files.len() > MAX_PROFILE_FILES {
                return Err(std::io::Error::other(format!(
                    "more than {MAX_PROFILE_FILES} {prefix}*.toml files"
                )));
            }
        }
    }
    files.sort();
    Ok(files)
}

fn read_open_capped(file: std::fs::File, max: u64) -> std::io::Result<String> {
    let too_big = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        )
    };
    if file.metadata()?.len() > max {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_big());
    }
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_capped_refuses_large_files_and_endless_devices() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.toml");
        std::fs::write(&small, "a = 1\n").unwrap();
        assert_eq!(read_capped(&small, 6).unwrap(), "a = 1\n");
        let e = read_capped(&small, 5).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("larger than 5 bytes"), "{e}");
        // A character device reports length 0 and never ends.
        let e = read_capped(Path::new("/dev/zero"), 1024).unwrap_err();
        assert!(e.to_string().contains("larger than 1024 bytes"), "{e}");
        std::fs::write(&small, [0xff, 0xfe]).unwrap();
        assert!(read_capped(&small, 10).is_err());
    }

    #[test]
    fn profile_files_are_the_prefixed_toml_files_sorted_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "line-b.toml",
            "line-a.toml",
            "ble-a.toml",
            "line-c.txt",
            "xline-d.toml",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let names = |files: Vec<PathBuf>| -> Vec<String> {
            let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
            files.iter().map(name).collect()
        };
        let line = names(profile_files(dir.path(), "line-").unwrap());
        assert_eq!(line, ["line-a.toml", "line-b.toml"]);
        assert_eq!(
            names(profile_files(dir.path(), "ble-").unwrap()),
            ["ble-a.toml"]
        );
        assert!(profile_files(dir.path(), "json-").unwrap().is_empty());

        for i in 0..MAX_PROFILE_FILES - 1 {
            std::fs::write(dir.path().join(format!("line-{i:03}.toml")), "").unwrap();
        }
        // 2 + 255: over the limit; other kinds' files do not count.
        let e = profile_files(dir.path(), "line-").unwrap_err();
        assert_eq!(e.to_string(), "more than 256 line-*.toml files");
        assert_eq!(profile_files(dir.path(), "ble-").unwrap().len(), 1);
        std::fs::remove_file(dir.path().join("line-a.toml")).unwrap();
        assert_eq!(
            profile_files(dir.path(), "line-").unwrap().len(),
            MAX_PROFILE_FILES
        );

        let e = profile_files(&dir.path().join("absent"), "line-").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn files_in_a_directory_are_regular_files_inside_it_and_small() {
        use std::os::unix::fs::symlink;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("profiles");
        std::fs::create_dir(&dir).unwrap();
        let secret = root.path().join("secret");
        std::fs::write(&secret, "password = hunter2\n").unwrap();
        let ok = dir.join("a.toml");
        std::fs::write(&ok, "a = 1\n").unwrap();
        assert_eq!(read_file_in_dir(&dir, &ok, 100).unwrap(), "a = 1\n");

        // A link inside the directory is followed; one out of it is refused unread.
        symlink(&ok, dir.join("inside.toml")).unwrap();
        assert_eq!(
            read_file_in_dir(&dir, &dir.join("inside.toml"), 100).unwrap(),
            "a = 1\n"
        );
        symlink(&secret, dir.join("out.toml")).unwrap();
        let e = read_file_in_dir(&dir, &dir.join("out.toml"), 100).unwrap_err();
        assert!(e.to_string().contains("symbolic link out of"), "{e}");
        assert!(!e.to_string().contains("hunter2"));
        symlink("../secret", dir.join("relative.toml")).unwrap();
        assert!(read_file_in_dir(&dir, &dir.join("relative.toml"), 100).is_err());

        // A FIFO is refused at once rather than blocking the open.
        let fifo = dir.join("fifo.toml");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_file_in_dir(&dir, &fifo, 100).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        // A directory, and a link to a device, likewise.
        std::fs::create_dir(dir.join("sub.toml")).unwrap();
        assert!(read_file_in_dir(&dir, &dir.join("sub.toml"), 100).is_err());

        // Too large: refused without reading it all.
        let big = dir.join("big.toml");
        std::fs::write(&big, vec![b'#'; 1000]).unwrap();
        let e = read_file_in_dir(&dir, &big, 999).unwrap_err();
        assert!(e.to_string().contains("larger than 999 bytes"), "{e}");
    }
}
