//! The technician commands besides `run`: decode a device's bytes (`decode ble`), list the
//! Bluetooth devices in range (`ble scan`), release held readings (`devices …`), try and
//! manage device profiles and packs (`profiles …`), and show the running gateway's status
//! (`status`). Each returns the text to print or a typed error; `main.rs` only parses
//! arguments, prints, and picks the exit code.
//!
//! Every command output that shows outside text (a device name from the air, a server's
//! reason, a topic, a path, a value quoted from a config file) goes through [`printable`].

pub mod decode;
pub mod devices;
pub mod profiles;
pub mod scan;
pub mod status;

/// Text from outside made safe for a terminal: control characters (escape sequences that
/// would recolour or clear the screen, newlines and tabs that would forge a row or a column)
/// and invisible or direction-changing characters are shown escaped (`\u{1b}`, `\n`,
/// `\u{202e}`), as Rust's `escape_debug` writes them. Backslashes and quotes are left as they
/// are, so a message that already quotes a value with `{:?}` is not escaped twice; printable
/// letters of any script are kept.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' | '\'' | '"' => out.push(c),
            c => out.extend(c.escape_debug()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped_and_plain_text_is_kept() {
        assert_eq!(
            printable("\u{1b}[2J\nforged\trow"),
            "\\u{1b}[2J\\nforged\\trow"
        );
        assert_eq!(printable("BP7000 \"home\" 'a'"), "BP7000 \"home\" 'a'");
        assert_eq!(printable("Señor\u{202e}…"), "Señor\\u{202e}…");
        // Text a message already escaped with `{:?}` stays as it is.
        assert_eq!(printable(&format!("{:?}", "a\u{1b}")), "\"a\\u{1b}\"");
        assert_eq!(printable("C:\\dir"), "C:\\dir");
    }
}
