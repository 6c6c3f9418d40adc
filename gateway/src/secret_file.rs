//! A credential kept from an owner-only file and read again when a server refuses it: a
//! static bearer token, an OAuth client secret, a Kafka SASL password. An operator rotates
//! one by writing the new value into the same file; the gateway picks it up at the next
//! refusal, without a restart (docs/auth.md, docs/streams.md).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// The value last read from `path`.
pub struct Reread<T> {
    path: PathBuf,
    value: Mutex<T>,
}

impl<T: Clone + PartialEq> Reread<T> {
    /// `value`, as just read from `path`.
    pub fn new(path: &Path, value: T) -> Self {
        Self {
            path: path.to_owned(),
            value: Mutex::new(value),
        }
    }

    /// The file it comes from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value in use.
    pub fn get(&self) -> T {
        self.value
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the file again with `read`: true if it now holds another value, which is used
    /// from now on. An unreadable file keeps the value in use.
    pub fn reread<E>(&self, read: impl FnOnce(&Path) -> Result<T, E>) -> bool {
        let Ok(fresh) = read(&self.path) else {
            return false;
        };
        let mut value = self.value.lock().unwrap_or_else(PoisonError::into_inner);
        if *value == fresh {
            return false;
        }
        *value = fresh;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_used_an_unchanged_or_unreadable_one_is_not() {
        let r = Reread::new(Path::new("/x"), "old".to_owned());
        assert!(!r.reread(|_| Ok::<_, ()>("old".to_owned())));
        assert!(!r.reread(|_| Err::<String, _>("unreadable")));
        assert_eq!(r.get(), "old");
        assert!(r.reread(|p| {
            assert_eq!(p, Path::new("/x"));
            Ok::<_, ()>("new".to_owned())
        }));
        assert_eq!(r.get(), "new");
    }
}
