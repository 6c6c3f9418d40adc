//! Owner-only files and directories: everything the gateway creates under its data
//! directory (and its audit log and NDJSON output wherever they are configured) holds or
//! describes patient data, so it is made readable by the gateway's user alone — whatever the
//! process umask, which outside systemd (`UMask=0077`) is usually the permissive 0022.
//!
//! Modes are given at creation (`mkdir(2)`/`open(2)` with an explicit mode, through
//! [`DirBuilderExt`] and [`OpenOptionsExt`]), never by changing the process umask, which
//! would race with every other thread that creates files. A umask can only remove bits, so
//! the result is never wider than [`PRIVATE_DIR_MODE`] / [`PRIVATE_FILE_MODE`].
//!
//! A file the gateway appends to or rewrites that already exists with group or other bits
//! (written by an older version, or by hand) is restricted to its owner when the gateway
//! opens it, and the log says so ([`restrict`]). Existing directories keep their mode: an
//! operator or systemd's `StateDirectoryMode=` chose it, and the files in them are private
//! either way.
//!
//! Files created by a library rather than by the gateway (SQLite's `buffer.db`; SQLite gives
//! `-wal` and `-shm` the mode of the database file) are made private by creating them empty
//! first: [`precreate_private_file`].

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every directory the gateway creates: `rwx------`.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Mode of every file the gateway creates: `rw-------`.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `dir` and any missing parents, each new one with mode [`PRIVATE_DIR_MODE`].
/// Directories that exist already are left as they are.
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// Open options under which a file that `open` creates gets mode [`PRIVATE_FILE_MODE`]. Add
/// the access and creation flags as usual; then call [`restrict`] on the opened file in case
/// it existed already.
pub fn private_file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(PRIVATE_FILE_MODE);
    options
}

/// Restricts an open file to its owner (clears every group and other bit) when it is not
/// already, and logs that it did. `path` is for the log line. Returns whether it changed the
/// mode. A file the gateway does not own cannot be changed: that is logged and not an error.
pub fn restrict(file: &File, path: &Path) -> io::Result<bool> {
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    let tight = mode & 0o700;
    match file.set_permissions(Permissions::from_mode(tight)) {
        Ok(()) => {
            tracing::warn!(
                path = %path.display(),
                was = %format!("{:04o}", mode & 0o7777),
                now = %format!("{tight:04o}"),
                "file was open to group or others; restricted to its owner"
            );
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            tracing::warn!(
                path = %path.display(),
                mode = %format!("{:04o}", mode & 0o7777),
                error = %e,
                "file is open to group or others and not owned by the gateway's user: it stays so"
            );
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Opens `path` for appending, creating it with mode [`PRIVATE_FILE_MODE`]; an existing file
/// is [`restrict`]ed.
pub fn open_private_append(path: &Path) -> io::Result<File> {
    let file = private_file_options()
        .create(true)
        .append(true)
        .open(path)?;
    restrict(&file, path)?;
    Ok(file)
}

/// Writes `bytes` as the whole content of `path` (created with mode [`PRIVATE_FILE_MODE`],
/// or truncated and [`restrict`]ed), and flushes it to disk.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = private_file_options()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    restrict(&file, path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Replaces the whole content of `path` atomically and durably: writes `<path>.tmp`
/// ([`write_private_file`], which syncs it), renames it over `path`, then syncs the
/// directory, so a crash or power cut leaves the old content or the new one, never an empty
/// or partial file.
pub fn replace_private_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    write_private_file(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => File::open(".")?.sync_all(),
    }
}

/// Makes sure `path` exists as an owner-only file before a library creates or opens it:
/// creates it empty with mode [`PRIVATE_FILE_MODE`] when missing, [`restrict`]s it when it
/// exists, and never changes its content.
///
/// For the buffer: call it on `buffer.db` before SQLite opens it (an empty file is a valid
/// new database, and SQLite creates `buffer.db-wal` and `buffer.db-shm` with the mode of
/// `buffer.db`), and on the lock file before it is opened.
pub fn precreate_private_file(path: &Path) -> io::Result<()> {
    let file = private_file_options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    restrict(&file, path)?;
    Ok(())
}

/// [`restrict`]s the existing file at `path` (opened read-only, for its descriptor).
pub fn restrict_path(path: &Path) -> io::Result<bool> {
    restrict(&File::open(path)?, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// Runs `f` with the permissive umask 0022 whatever the test runner's umask, so the modes
    /// checked come from the code. (The umask is per process; other tests running meanwhile
    /// get the common default, which no test relies on being stricter.)
    fn with_umask_0022(f: impl FnOnce()) {
        let old = set_umask(0o022);
        f();
        set_umask(old);
    }

    /// Sets the process's umask; returns the previous one.
    fn set_umask(mask: u32) -> u32 {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask)).as_raw_mode()
    }

    #[test]
    fn created_directories_and_files_are_owner_only_under_a_permissive_umask() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/data");
        let (appended, written, precreated) = (
            dir.join("audit.log"),
            dir.join("gateway-id"),
            dir.join("buffer.db"),
        );
        with_umask_0022(|| {
            create_private_dir_all(&dir).unwrap();
            open_private_append(&appended).unwrap();
            write_private_file(&written, b"vb-1\n").unwrap();
            precreate_private_file(&precreated).unwrap();
        });
        for d in [root.path().join("a"), root.path().join("a/b"), dir.clone()] {
            assert_eq!(mode(&d), 0o700, "{}", d.display());
        }
        for f in [&appended, &written, &precreated] {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
        assert_eq!(std::fs::read(&written).unwrap(), b"vb-1\n");
        assert_eq!(std::fs::metadata(&precreated).unwrap().len(), 0);
    }

    /// The contract [`precreate_private_file`] offers the buffer: SQLite takes the empty
    /// file as a new database and gives its write-ahead log and shared-memory files the
    /// database file's mode.
    #[tokio::test]
    async fn sqlite_gives_its_wal_and_shm_files_the_mode_of_a_precreated_database() {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
        use sqlx::ConnectOptions;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("buffer.db");
        with_umask_0022(|| precreate_private_file(&db).unwrap());
        let old = set_umask(0o022);
        let mut conn = SqliteConnectOptions::new()
            .filename(&db)
            .journal_mode(SqliteJournalMode::Wal)
            .connect()
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&mut conn)
            .await
            .unwrap();
        set_umask(old);
        for name in ["buffer.db", "buffer.db-wal", "buffer.db-shm"] {
            assert_eq!(mode(&dir.path().join(name)), 0o600, "{name}");
        }
        drop(conn);
    }

    #[test]
    fn existing_files_are_restricted_and_keep_their_content_existing_directories_their_mode() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("shared");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o750)).unwrap();
        create_private_dir_all(&dir).unwrap();
        assert_eq!(mode(&dir), 0o750, "an existing directory keeps its mode");

        let file = dir.join("Observation-000001.ndjson");
        std::fs::write(&file, "{}\n").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o664)).unwrap();
        let f = open_private_append(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert!(!restrict(&f, &file).unwrap(), "nothing left to restrict");
        drop(f);

        // Owner bits stay; group, other and set-id bits go.
        for (before, after) in [
            (0o644, 0o600),
            (0o604, 0o600),
            (0o640, 0o600),
            (0o4755, 0o700),
        ] {
            std::fs::set_permissions(&file, Permissions::from_mode(before)).unwrap();
            precreate_private_file(&file).unwrap();
            assert_eq!(mode(&file), after, "{before:o}");
        }
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        assert!(restrict_path(&file).unwrap());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "{}\n");
    }
}
