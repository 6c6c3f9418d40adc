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
use std::path::Path;

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

/// The gateway's own small state files in the data directory (`gateway-id`, the
/// configuration fingerprint).
pub const MAX_STATE_FILE_BYTES: u64 = 64 * 1024;

/// The problem text for a string over `limit`, for errors that name the field themselves.
pub fn too_long_message(limit: usize) -> String {
    format!("longer than {limit} bytes")
}

/// Reads a text file of at most `max` bytes. A larger file (or one that grows while it is
/// read, or a device such as `/dev/zero`) is refused without reading more than `max + 1`
/// bytes of it.
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<String> {
    let file = std::fs::File::open(path)?;
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
}
