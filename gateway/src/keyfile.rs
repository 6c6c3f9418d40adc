//! Who may read a private-key file: the check behind `check-config` and the TLS loader.
//!
//! Architecture invariant: a private key is used only when nobody but the file's owner and
//! the gateway's own user can read, write or execute it.
//!
//! - **Plain files** are judged by their mode bits: no group or other bits (`chmod 600`).
//! - **Files with a POSIX access ACL** are judged by the ACL, since their mode's group bits
//!   then show the ACL *mask*, not the owning group. This is the case that matters under
//!   systemd: `LoadCredential=` copies a key into `$CREDENTIALS_DIRECTORY` as a root-owned
//!   mode-0400 file plus one entry `user:<service user>:r--`, so `stat` reports mode 0440
//!   although only root and the service can read it. Refused: a named user other than our
//!   own effective uid, the owning group, a named group, or others with any permission left
//!   after the mask.
//!
//! ## The ACL format
//!
//! The access ACL is the extended attribute `system.posix_acl_access`, little-endian: a `u32`
//! version (2), then 8-byte entries `{ tag: u16, perm: u16, id: u32 }` with tags 0x01 owner,
//! 0x02 named user, 0x04 owning group, 0x08 named group, 0x10 mask, 0x20 others, and perm bits
//! 4 read, 2 write, 1 execute (Linux `include/uapi/linux/posix_acl_xattr.h` and
//! `posix_acl.h`; acl(5) for how the mask applies). [`parse_acl`] returns errors for anything
//! else, never panics, and is fuzzed (`gateway/fuzz`, target `keyfile_acl`). The system calls
//! (`getxattr`, `geteuid`) go through rustix, so this module has no `unsafe`.
#![forbid(unsafe_code)]

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The extended attribute holding a file's access ACL.
const ACL_XATTR: &std::ffi::CStr = c"system.posix_acl_access";
/// The only ACL xattr version Linux writes.
const ACL_VERSION: u32 = 2;
/// Size of the version header and of one entry, in bytes.
const HEADER_LEN: usize = 4;
const ENTRY_LEN: usize = 8;

/// ACL entry tags.
const TAG_USER_OBJ: u16 = 0x01;
const TAG_USER: u16 = 0x02;
const TAG_GROUP_OBJ: u16 = 0x04;
const TAG_GROUP: u16 = 0x08;
const TAG_MASK: u16 = 0x10;
const TAG_OTHER: u16 = 0x20;
/// Read, write and execute.
const PERM_ALL: u16 = 0o7;

/// Why a key file is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file cannot be inspected or opened.
    #[error("cannot read {}", .path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Mode bits give the group or others access.
    #[error("private key {} is readable by group or others (mode {mode:04o}); run `chmod 600 {}`", .path.display(), .path.display())]
    Mode {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The POSIX ACL gives someone else access.
    #[error("private key {} is open to {who} through its POSIX ACL; run `setfacl -b {}` and `chmod 600 {}`", .path.display(), .path.display(), .path.display())]
    Acl {
        /// The key file.
        path: PathBuf,
        /// Who else has access ("user 1001", "its group", "group 20", "others").
        who: String,
    },
    /// The ACL attribute could not be decoded.
    #[error("private key {}: unreadable POSIX ACL", .path.display())]
    BadAcl {
        /// The key file.
        path: PathBuf,
        /// What is wrong with the attribute.
        #[source]
        problem: AclError,
    },
}

/// A malformed `system.posix_acl_access` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// Shorter than the version header.
    #[error("{0} bytes is shorter than the header")]
    TooShort(usize),
    /// A version other than 2.
    #[error("version {0}, expected 2")]
    Version(u32),
    /// The entries are not a whole number of 8-byte records.
    #[error("{0} bytes of entries is not a multiple of 8")]
    Length(usize),
}

/// One ACL entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclEntry {
    /// What the entry is about (owner, named user, group, mask, others).
    pub tag: u16,
    /// Permission bits: 4 read, 2 write, 1 execute.
    pub perm: u16,
    /// The uid or gid of a named user or group (unused otherwise).
    pub id: u32,
}

/// Decodes a `system.posix_acl_access` value.
pub fn parse_acl(bytes: &[u8]) -> Result<Vec<AclEntry>, AclError> {
    let (header, entries) = bytes
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(AclError::TooShort(bytes.len()))?;
    let version = u32::from_le_bytes(*header);
    if version != ACL_VERSION {
        return Err(AclError::Version(version));
    }
    if entries.len() % ENTRY_LEN != 0 {
        return Err(AclError::Length(entries.len()));
    }
    Ok(entries
        .chunks_exact(ENTRY_LEN)
        .map(|e| AclEntry {
            tag: u16::from_le_bytes([e[0], e[1]]),
            perm: u16::from_le_bytes([e[2], e[3]]),
            id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
        })
        .collect())
}

/// Who other than the owner and `own_uid` has any access under `entries`, or `None`.
pub fn acl_exposure(entries: &[AclEntry], own_uid: u32) -> Option<String> {
    let mask = entries
        .iter()
        .find(|e| e.tag == TAG_MASK)
        .map_or(PERM_ALL, |e| e.perm);
    entries.iter().find_map(|e| {
        let masked = e.perm & mask & PERM_ALL != 0;
        match e.tag {
            TAG_USER_OBJ | TAG_MASK => None,
            TAG_USER => (masked && e.id != own_uid).then(|| format!("user {}", e.id)),
            TAG_GROUP_OBJ => masked.then(|| "its group".to_owned()),
            TAG_GROUP => masked.then(|| format!("group {}", e.id)),
            TAG_OTHER => (e.perm & PERM_ALL != 0).then(|| "others".to_owned()),
            other => Some(format!("an entry of unknown type {other:#x}")),
        }
    })
}

/// Checks that only the owner and this process's user can access the key at `path`, and that
/// it can be opened.
pub fn check_private(path: &Path) -> Result<(), KeyFileError> {
    let io_err = |source| KeyFileError::Io {
        path: path.into(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    match read_access_acl(path).map_err(io_err)? {
        Some(bytes) => {
            let entries = parse_acl(&bytes).map_err(|problem| KeyFileError::BadAcl {
                path: path.into(),
                problem,
            })?;
            if let Some(who) = acl_exposure(&entries, effective_uid()) {
                return Err(KeyFileError::Acl {
                    path: path.into(),
                    who,
                });
            }
        }
        None => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyFileError::Mode {
                    path: path.into(),
                    mode,
                });
            }
        }
    }
    std::fs::File::open(path).map_err(io_err)?;
    Ok(())
}

fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The raw access ACL of `path`, or `None` when it has none (or the file system has no
/// extended attributes): then the mode bits are the whole story.
fn read_access_acl(path: &Path) -> io::Result<Option<Vec<u8>>> {
    use rustix::io::Errno;
    // A few hundred bytes hold any ACL a key file should have; grow on ERANGE.
    let mut buf = vec![0u8; 256];
    loop {
        match rustix::fs::getxattr(path, ACL_XATTR, &mut buf[..]) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(Some(buf));
            }
            Err(Errno::NODATA | Errno::OPNOTSUPP) => return Ok(None),
            Err(Errno::RANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = ACL_VERSION.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    const NONE: u32 = u32::MAX; // ACL_UNDEFINED_ID

    /// (tag, perm, id) triples, as in the attribute.
    type Entries = Vec<(u16, u16, u32)>;

    /// What systemd writes for a credential of a service running as uid 990.
    fn systemd_credential(service_uid: u32) -> Entries {
        vec![
            (TAG_USER_OBJ, 4, NONE),
            (TAG_USER, 4, service_uid),
            (TAG_GROUP_OBJ, 0, NONE),
            (TAG_MASK, 4, NONE),
            (TAG_OTHER, 0, NONE),
        ]
    }

    #[test]
    fn parse_acl_decodes_the_kernel_layout() {
        // Bytes as read back from a file after `setfacl -m u:1234:r` on a 0400 file.
        let bytes = [
            0x02, 0, 0, 0, // version 2
            0x01, 0, 0x04, 0, 0xff, 0xff, 0xff, 0xff, // user::r--
            0x02, 0, 0x04, 0, 0xd2, 0x04, 0, 0, // user:1234:r--
            0x04, 0, 0x00, 0, 0xff, 0xff, 0xff, 0xff, // group::---
            0x10, 0, 0x04, 0, 0xff, 0xff, 0xff, 0xff, // mask::r--
            0x20, 0, 0x00, 0, 0xff, 0xff, 0xff, 0xff, // other::---
        ];
        let entries = parse_acl(&bytes).unwrap();
        assert_eq!(entries.len(), 5);
        assert_eq!(
            entries[1],
            AclEntry {
                tag: TAG_USER,
                perm: 4,
                id: 1234
            }
        );
    }

    #[test]
    fn parse_acl_rejects_malformed_values() {
        assert_eq!(parse_acl(&[]), Err(AclError::TooShort(0)));
        assert_eq!(parse_acl(&[2, 0, 0]), Err(AclError::TooShort(3)));
        assert_eq!(parse_acl(&[1, 0, 0, 0]), Err(AclError::Version(1)));
        assert_eq!(parse_acl(&[2, 0, 0, 0, 1, 0, 4]), Err(AclError::Length(3)));
        assert_eq!(parse_acl(&[2, 0, 0, 0]), Ok(vec![]));
    }

    #[test]
    fn acl_exposure_allows_only_the_owner_and_ourselves() {
        let me = 990;
        let parsed = |e: &[(u16, u16, u32)]| parse_acl(&acl(e)).unwrap();
        // (entries, who else has access)
        let mut other_user = systemd_credential(me);
        other_user[1].2 = 1001;
        let mut group_read = systemd_credential(me);
        group_read[2].1 = 4;
        let mut masked_out = systemd_credential(me);
        masked_out.insert(2, (TAG_USER, 4, 1001));
        masked_out[4].1 = 0; // mask::--- takes named entries' rights away
        let cases: Vec<(Entries, Option<&str>)> = vec![
            (systemd_credential(me), None),
            (other_user, Some("user 1001")),
            (group_read, Some("its group")),
            (
                vec![
                    (TAG_USER_OBJ, 6, NONE),
                    (TAG_GROUP_OBJ, 0, NONE),
                    (TAG_GROUP, 4, 20),
                    (TAG_MASK, 4, NONE),
                    (TAG_OTHER, 0, NONE),
                ],
                Some("group 20"),
            ),
            (
                vec![
                    (TAG_USER_OBJ, 6, NONE),
                    (TAG_GROUP_OBJ, 0, NONE),
                    (TAG_OTHER, 4, NONE),
                ],
                Some("others"),
            ),
            (masked_out, None),
            (
                vec![(TAG_USER_OBJ, 6, NONE), (0x40, 4, 7)],
                Some("an entry of unknown type 0x40"),
            ),
        ];
        for (entries, expected) in cases {
            assert_eq!(
                acl_exposure(&parsed(&entries), me).as_deref(),
                expected,
                "{entries:?}"
            );
        }
    }

    fn key_file(dir: &Path, mode: u32) -> PathBuf {
        let p = dir.join("key.pem");
        std::fs::write(&p, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn set_acl(path: &Path, value: &[u8]) {
        rustix::fs::setxattr(path, ACL_XATTR, value, rustix::fs::XattrFlags::empty())
            .expect("setxattr");
    }

    #[test]
    fn mode_bits_decide_for_a_file_without_an_acl() {
        let dir = tempfile::tempdir().unwrap();
        check_private(&key_file(dir.path(), 0o600)).unwrap();
        check_private(&key_file(dir.path(), 0o400)).unwrap();
        for mode in [0o640, 0o604, 0o644, 0o620] {
            let err = check_private(&key_file(dir.path(), mode)).unwrap_err();
            assert!(
                matches!(err, KeyFileError::Mode { mode: m, .. } if m == mode),
                "{err}"
            );
        }
        let err = check_private(&dir.path().join("missing.pem")).unwrap_err();
        assert!(matches!(err, KeyFileError::Io { .. }), "{err}");
    }

    /// The file systemd's LoadCredential= makes (mode 0440 by `stat`, readable by the owner
    /// and the service only) passes; the same ACL naming another user does not.
    #[test]
    fn a_real_acl_decides_for_a_file_that_has_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(dir.path(), 0o400);
        set_acl(&path, &acl(&systemd_credential(effective_uid())));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o440, "the mask shows in the group bits");
        check_private(&path).unwrap();

        let mut other = systemd_credential(effective_uid());
        other[1].2 = effective_uid().wrapping_add(1);
        set_acl(&path, &acl(&other));
        let err = check_private(&path).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "is open to user {} through its POSIX ACL",
                effective_uid().wrapping_add(1)
            )),
            "{err}"
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_acl_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            if let Ok(entries) = parse_acl(&bytes) {
                let _ = acl_exposure(&entries, 0);
            }
        }
    }
}
