//! An error and its causes on one line, `what failed: why: why`, as `main.rs` prints them
//! (anyhow's `{:#}`) — for log lines, the audit log and the status page, which have no
//! anyhow.
//!
//! Every error enum of the crate says in its own message what failed and leaves the why to
//! its `#[source]`, so a message printed without its chain loses the why: where an error is
//! shown, show [`Chain`] of it.
//!
//! Some errors of other crates print their source in their own message too (sqlx's
//! `error returned from database: {0}`, an `io::Error` wrapping another error): a cause
//! whose text the line already ends with is not printed again.
//!
//! A leaf: it imports nothing of the crate, so every module may use it.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources, joined by `": "`.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let text = e.to_string();
            if !shown.ends_with(&text) {
                write!(f, ": {text}")?;
                shown = text;
            }
            cause = e.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read /etc/key")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_names_what_failed_then_why() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "permission denied",
        ));
        assert_eq!(
            Chain(&e).to_string(),
            "cannot read /etc/key: permission denied"
        );
        let alone = std::io::Error::other("disk full");
        assert_eq!(Chain(&alone).to_string(), "disk full");
    }

    /// An error of another crate that prints its source itself, as sqlx's do.
    #[derive(Debug, thiserror::Error)]
    #[error("error returned from database: {0}")]
    struct Echoing(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("buffer database error")]
    struct Ours(#[source] Echoing);

    #[test]
    fn a_cause_the_line_already_ends_with_is_not_printed_twice() {
        let e = Ours(Echoing(std::io::Error::other("disk I/O error")));
        assert_eq!(
            Chain(&e).to_string(),
            "buffer database error: error returned from database: disk I/O error"
        );
    }
}
