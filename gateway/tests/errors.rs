//! What the `vitalbridge` binary says when something fails, and what it prints of outside
//! text: each error on one line, `what failed: why`, every cause once; control characters
//! from files, arguments and devices shown escaped.

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use support::rust_files;

fn vitalbridge(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run vitalbridge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `error: …` line of a failed command's stderr.
fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"))
}

/// Fails when a cause of `line` (the parts between `: `) is printed twice, or again inside
/// an earlier part, as in `no buffer.db here: no buffer.db here`. (The printer drops a cause
/// the line already ends with, for other crates' errors that print their source themselves;
/// [`no_error_message_of_the_crate_prints_its_own_source`] keeps the crate's own errors from
/// relying on that.)
fn assert_each_cause_once(line: &str) {
    let parts: Vec<&str> = line.split(": ").map(str::trim).collect();
    for (i, later) in parts.iter().enumerate().skip(1) {
        if later.len() < 6 {
            continue;
        }
        for earlier in &parts[..i] {
            assert!(
                !earlier.contains(later),
                "{later:?} is printed twice in:\n{line}"
            );
        }
    }
}

#[test]
fn the_checker_finds_a_cause_printed_twice() {
    let result = std::panic::catch_unwind(|| {
        assert_each_cause_once(
            "error: there is no buffer in d: no buffer.db here: no buffer.db here",
        )
    });
    assert!(result.is_err());
    assert_each_cause_once("error: cannot use afile: File exists (os error 17)");
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn failing_commands_name_what_failed_then_why_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a-file"), "").unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    write(
        d,
        "file-as-data-dir.toml",
        "[gateway]\ndata_dir = \"a-file\"\n",
    );
    write(
        d,
        "taken-port.toml",
        &format!(
            "[gateway]\ndata_dir = \"data-port\"\n[ops.http]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    );
    write(d, "no-buffer.toml", "[gateway]\ndata_dir = \"never-run\"\n");
    write(
        d,
        "audit-under-a-file.toml",
        "[gateway]\ndata_dir = \"data-audit\"\n[ops]\naudit_log = \"a-file/audit.log\"\n",
    );
    write(
        d,
        "key-under-a-file.toml",
        "[gateway]\ndata_dir = \"data-key\"\n[buffer]\nkey_file = \"a-file/buffer.key\"\n",
    );
    // (command, what the error line must say)
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["run", "-c", "missing.toml"],
            &["missing.toml", "No such file or directory"],
        ),
        (
            &["run", "-c", "file-as-data-dir.toml"],
            &["cannot use a-file", "File exists"],
        ),
        (
            &["run", "-c", "taken-port.toml"],
            &[
                "ops.http.listen: cannot listen on 127.0.0.1",
                "Address already in use",
            ],
        ),
        (
            &["queue", "stats", "-c", "no-buffer.toml"],
            &["there is no buffer in never-run"],
        ),
        (
            &["run", "-c", "audit-under-a-file.toml"],
            &[
                "ops.audit_log: cannot open the audit log a-file/audit.log: ",
                "File exists",
            ],
        ),
        (
            &["run", "-c", "key-under-a-file.toml"],
            &[
                "cannot use the buffer key file a-file/buffer.key: ",
                "Not a directory",
            ],
        ),
        (
            &["sim", "serial", "--port", "no-such-port", "--count", "1"],
            &["cannot open no-such-port: no such file"],
        ),
    ];
    for (args, expected) in cases {
        let (code, _, stderr) = vitalbridge(args, d);
        assert_ne!(code, 0, "{args:?} must fail:\n{stderr}");
        error_line(&stderr);
        // The error, and the problem lines of an invalid configuration; not log lines.
        let said: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with(|c: char| c.is_ascii_digit()))
            .collect();
        let text = said.join("\n");
        for part in *expected {
            assert!(text.contains(part), "{args:?}: {part:?} not in:\n{text}");
        }
        for line in said {
            assert_each_cause_once(line);
        }
    }
    drop(taken);
}

const ESCAPE: &str = "\u{1b}[31m";

/// Outside text printed raw would carry these: an escape sequence, and a newline that forges
/// a line of its own.
fn assert_escaped(output: &str, what: &str) {
    assert!(
        !output.contains('\u{1b}'),
        "{what}: a raw escape in:\n{output}"
    );
    assert!(
        !output.lines().any(|l| l.starts_with("forged")),
        "{what}: a forged line in:\n{output}"
    );
}

#[test]
fn check_config_shows_quoted_paths_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let weird = format!("/no-such-dir/{ESCAPE}key\\nforged line");
    write(
        dir.path(),
        "weird.toml",
        &format!("[buffer]\nprevious_key_files = [\"{weird}\"]\n").replace('\u{1b}', "\\u001b"),
    );
    let (code, _, stderr) = vitalbridge(&["check-config", "-c", "weird.toml"], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("buffer.previous_key_files[0]"), "{stderr}");
    assert!(stderr.contains("\\u{1b}[31mkey\\nforged line"), "{stderr}");
    assert_escaped(&stderr, "check-config");
}

#[test]
fn queue_salvage_shows_the_path_it_read_escaped() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "c.toml", "[gateway]\ndata_dir = \"data\"\n");
    let quarantine = format!("q{ESCAPE}\nforged line");
    std::fs::create_dir(dir.path().join(&quarantine)).unwrap();
    std::fs::write(dir.path().join(&quarantine).join("buffer.db"), "").unwrap();
    let (code, stdout, stderr) = vitalbridge(
        &["queue", "salvage", "-c", "c.toml", &quarantine],
        dir.path(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("read q\\u{1b}[31m\\nforged line/buffer.db: 0 readings found"),
        "{stdout}"
    );
    assert_escaped(&stdout, "queue salvage");
    // A path that is not there: the error shows it escaped too.
    let missing = format!("gone{ESCAPE}\nforged line");
    let (code, _, stderr) =
        vitalbridge(&["queue", "salvage", "-c", "c.toml", &missing], dir.path());
    assert_ne!(code, 0);
    assert!(
        error_line(&stderr).contains("gone\\u{1b}[31m\\nforged line"),
        "{stderr}"
    );
    assert_escaped(&stderr, "queue salvage error");
}

#[test]
fn decode_ble_shows_arguments_escaped_in_errors_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let bad_hex = format!("1E{ESCAPE}\nforged line");
    let (code, stdout, stderr) = vitalbridge(
        &["decode", "ble", "--characteristic", "2A35", &bad_hex],
        dir.path(),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("HEX: not a hex digit: '\\u{1b}'"),
        "{stderr}"
    );
    assert_escaped(&stderr, "decode ble error");

    let patient = format!("urn:oid:1.2.3|p{ESCAPE}\nforged line");
    let bp = "1E 7A 00 50 00 FF 07 E4 07 0C 19 08 1E 00 48 00 01 04 00";
    let (code, stdout, stderr) = vitalbridge(
        &[
            "decode",
            "ble",
            "--characteristic",
            "2A35",
            bp,
            "--fhir",
            "--patient",
            &patient,
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("p\\u001b[31m\\nforged line"), "{stdout}");
    assert_escaped(&stdout, "decode ble --fhir");
}

#[test]
fn sim_serial_refuses_a_line_profile_without_the_line_protocol() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &[
            "sim",
            "serial",
            "--port",
            "x",
            "--profile",
            "line-nonin-ascii",
        ][..],
        &[
            "sim",
            "serial",
            "--port",
            "x",
            "--protocol",
            "firmware",
            "--profile",
            "line-nonin-ascii",
        ],
        &["sim", "serial", "--port", "x", "--profiles-dir", "."],
    ] {
        let (code, _, stderr) = vitalbridge(args, dir.path());
        assert_ne!(code, 0, "{args:?}");
        assert!(
            error_line(&stderr).contains("is for line devices: add --protocol line"),
            "{args:?}: {stderr}"
        );
    }
    let (code, _, stderr) = vitalbridge(
        &["sim", "serial", "--port", "x", "--protocol", "line"],
        dir.path(),
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("--protocol line needs --profile"),
        "{stderr}"
    );
}

#[test]
fn sim_serial_gives_up_on_a_port_that_is_no_serial_port() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not-a-tty"), "").unwrap();
    let started = std::time::Instant::now();
    let (code, _, stderr) = vitalbridge(
        &["sim", "serial", "--port", "not-a-tty", "--count", "1"],
        dir.path(),
    );
    assert_ne!(code, 0, "{stderr}");
    let line = error_line(&stderr);
    assert!(
        line.contains("gave up after 20 attempts: cannot open not-a-tty: not a serial port but a regular file"),
        "{line}"
    );
    assert_each_cause_once(line);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "bounded, not forever"
    );
    // Said once while retrying, not once per attempt.
    assert_eq!(
        stderr.matches("cannot open the port; retrying").count(),
        1,
        "{stderr}"
    );
}

/// One `#[error("…")]` message of the crate and the fields that are its `#[source]`.
#[derive(Debug)]
struct Message {
    /// `gateway/src/…` and line.
    at: String,
    /// The attribute's text: the format string and its arguments.
    text: String,
    /// How the message can name each source field: `source`, `0`, `problem`, ….
    sources: Vec<String>,
}

/// The text from `open` (an opening bracket at `start`) to its closing bracket, skipping
/// string and char literals.
fn bracketed(code: &str, start: usize) -> &str {
    let bytes = code.as_bytes();
    let (mut depth, mut i, mut in_string) = (0i32, start, false);
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'(' | b'{' | b'[' => depth += 1,
                b')' | b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return &code[start..=i];
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    &code[start..]
}

/// Every `#[error("…")]` of `code` with the source fields of the item it is on.
fn messages(file: &str, code: &str) -> Vec<Message> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("#[error(") {
        let attribute = bracketed(code, at + 7);
        if attribute.starts_with("(transparent)") {
            continue;
        }
        // The item the attribute is on: skip doc comments and other attributes.
        let mut rest = &code[at + 7 + attribute.len() + 1..];
        loop {
            rest = rest.trim_start();
            if rest.starts_with("///") || rest.starts_with("//") {
                rest = rest.split_once('\n').map_or("", |(_, r)| r);
            } else if rest.starts_with("#[") {
                rest = &rest[bracketed(rest, 1).len() + 1..];
            } else {
                break;
            }
        }
        let Some(open) = rest.find(['(', '{', ',', ';']) else {
            continue;
        };
        let fields = match rest.as_bytes()[open] {
            b'(' | b'{' => bracketed(rest, open),
            _ => "",
        };
        let tuple = fields.starts_with('(');
        let inner = fields.get(1..fields.len().saturating_sub(1)).unwrap_or("");
        let mut sources = Vec::new();
        // Top-level fields: split at commas outside brackets.
        let (mut depth, mut begin, mut index) = (0i32, 0usize, 0usize);
        for (i, c) in inner.char_indices().chain([(inner.len(), ',')]) {
            match c {
                '(' | '<' | '[' | '{' => depth += 1,
                ')' | '>' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    let field: String = inner[begin..i]
                        .lines()
                        .filter(|l| !l.trim_start().starts_with("//"))
                        .collect::<Vec<_>>()
                        .join(" ");
                    begin = i + 1;
                    if field.trim().is_empty() {
                        continue;
                    }
                    let marked = field.contains("#[source]") || field.contains("#[from]");
                    let name = if tuple {
                        index.to_string()
                    } else {
                        let decl = field.rsplit(']').next().unwrap_or(&field);
                        let decl = decl.trim().trim_start_matches("pub ").trim();
                        decl.split(':').next().unwrap_or("").trim().to_owned()
                    };
                    index += 1;
                    if marked || name == "source" {
                        sources.push(name);
                    }
                }
                _ => {}
            }
        }
        out.push(Message {
            at: format!("{file}:{}", code[..at].lines().count() + 1),
            text: attribute.to_owned(),
            sources,
        });
    }
    out
}

/// Whether a message prints `field`: `{field}` or `{field:…}` in its format string, or an
/// argument that is `.field` or a method of it (`.field.to_string()`); a function given the
/// field (`hint(.source)`) may read it without printing it.
fn names(text: &str, field: &str) -> bool {
    // `("format", args…)`: the format string is the first literal.
    let inner = text.trim_start_matches('(').trim_end_matches(')');
    let end = inner[1..].find('"').map_or(inner.len(), |i| i + 2);
    let (format, args) = inner.split_at(end.min(inner.len()));
    if format.contains(&format!("{{{field}}}")) || format.contains(&format!("{{{field}:")) {
        return true;
    }
    let mut depth = 0i32;
    let mut begin = 0;
    let mut printed = false;
    for (i, c) in args.char_indices().chain([(args.len(), ',')]) {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                let arg = args[begin..i].trim();
                begin = i + 1;
                printed |= arg == format!(".{field}") || arg.starts_with(&format!(".{field}."));
            }
            _ => {}
        }
    }
    printed
}

/// Architecture invariant: an error's message says what failed and its `#[source]` says why,
/// so no message of the crate prints its own source (the chain printer would print it again).
#[test]
fn no_error_message_of_the_crate_prints_its_own_source() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = 0;
    let mut offenders = Vec::new();
    for path in files.into_iter().filter(|p| !p.ends_with("tests.rs")) {
        let code = std::fs::read_to_string(&path).unwrap();
        // Without the test module at the end (fixtures may print what they like); a
        // `mod tests;` declaring a tests.rs file is not it.
        let test_module = code
            .match_indices("\n#[cfg(test)]\nmod ")
            .map(|(i, _)| i)
            .find(|&i| code[i..].lines().nth(2).is_some_and(|l| l.ends_with('{')));
        let code = &code[..test_module.unwrap_or(code.len())];
        let file = path.strip_prefix(&src).unwrap().display().to_string();
        for m in messages(&file, code) {
            found += 1;
            for source in &m.sources {
                if names(&m.text, source) {
                    offenders.push(format!("{}: {} names its source `{source}`", m.at, m.text));
                }
            }
        }
    }
    assert!(found > 50, "the scan finds the crate's messages ({found})");
    assert!(offenders.is_empty(), "{}", offenders.join("\n"));
}

#[test]
fn the_scan_sees_a_message_that_prints_its_source() {
    let code = r#"
pub enum E {
    /// Doc.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot open {path}")]
    Open { path: String, #[source] problem: OpenError },
    #[error("{what} at {index}")]
    Fine { what: String, index: usize },
    #[error("cannot listen on {addr}{}", hint(.source))]
    Hinted { addr: SocketAddr, #[source] source: std::io::Error },
}
#[error("cannot open the audit log {path}: {source}")]
pub struct AuditError {
    pub path: PathBuf,
    pub source: std::io::Error,
}"#;
    let found = messages("x.rs", code);
    let offending: Vec<bool> = found
        .iter()
        .map(|m| m.sources.iter().any(|s| names(&m.text, s)))
        .collect();
    assert_eq!(
        offending,
        [true, true, false, false, false, true],
        "{found:#?}"
    );
    assert_eq!(found[2].sources, ["problem"]);
}
