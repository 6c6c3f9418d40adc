//! Runs the independent FHIR R4 validator (`tests/validate_fhir.py`, Python `fhir.resources`
//! R4 models plus vital-signs checks) from Rust tests.
//!
//! The interpreter is `$VITALBRIDGE_PYTHON` if set, else `tests/.venv/bin/python3` if it
//! exists, else `python3`. Install the Python side once with
//! `pip install -r tests/requirements.txt` (see that file). A missing or wrong installation
//! is a test FAILURE with that hint, never a skip.
//!
//! ```no_run
//! # fn demo(observations: Vec<serde_json::Value>) {
//! use vitalbridge_tests::validator::assert_valid_fhir;
//! assert_valid_fhir(&observations); // e.g. upstream.observations()
//! # }
//! ```

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// Hint printed whenever the validator cannot run.
pub const INSTALL_HINT: &str = "pip install -r tests/requirements.txt";

/// Path of `validate_fhir.py`.
pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("validate_fhir.py")
}

/// The Python interpreter to use (see the module docs).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("VITALBRIDGE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// The outcome of one validator run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatorRun {
    /// Exit code (0 all passed, 1 some failed or nothing found, 2 cannot run).
    pub code: Option<i32>,
    /// One `FAIL ...` line per problem, then `N passed, M failed`.
    pub stdout: String,
    /// Environment errors (missing/wrong `fhir.resources`).
    pub stderr: String,
    /// `N` from the summary line.
    pub passed: usize,
    /// `M` from the summary line.
    pub failed: usize,
}

impl ValidatorRun {
    /// The `FAIL ...` lines.
    pub fn failures(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with("FAIL "))
            .collect()
    }
}

/// Runs the validator on a file (NDJSON, a Bundle or one resource).
///
/// Panics, with the install hint, if the validator cannot run at all (no interpreter,
/// exit code 2, or no summary line): that is a broken test environment, not a verdict.
pub fn validate_file(path: &Path) -> ValidatorRun {
    run(Command::new(python()).arg(script_path()).arg(path), None)
}

/// Runs the validator on `input` passed on stdin.
pub fn validate_stdin(input: &[u8]) -> ValidatorRun {
    run(
        Command::new(python()).arg(script_path()).arg("-"),
        Some(input),
    )
}

/// Runs the validator on these resources (written as NDJSON).
pub fn validate_resources(resources: &[Value]) -> ValidatorRun {
    let mut ndjson = Vec::new();
    for r in resources {
        serde_json::to_writer(&mut ndjson, r).expect("a Value always serializes");
        ndjson.push(b'\n');
    }
    validate_stdin(&ndjson)
}

/// Panics with the validator's report unless every resource passes (and there is at least
/// one).
#[track_caller]
pub fn assert_valid_fhir(resources: &[Value]) {
    let run = validate_resources(resources);
    assert!(
        run.code == Some(0) && run.failed == 0 && run.passed == resources.len(),
        "FHIR validation failed ({} passed, {} failed of {}):\n{}",
        run.passed,
        run.failed,
        resources.len(),
        run.stdout
    );
}

fn run(cmd: &mut Command, input: Option<&[u8]>) -> ValidatorRun {
    let python = cmd.get_program().to_os_string();
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run the FHIR validator with {}: {e}\n\
                 Install Python 3 and run: {INSTALL_HINT} (or set VITALBRIDGE_PYTHON)",
                python.to_string_lossy()
            )
        });
    let writer = input.map(|data| {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let data = data.to_vec();
        std::thread::spawn(move || -> io::Result<()> { stdin.write_all(&data) })
    });
    let out = child.wait_with_output().expect("wait for validator");
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = stdout.lines().rev().find_map(parse_summary);
    let (passed, failed) = match (out.status.code(), summary) {
        (Some(0 | 1), Some(s)) => s,
        _ => panic!(
            "the FHIR validator could not run (exit {:?}).\n\
             Install its dependencies: {INSTALL_HINT}\n\
             --- stderr ---\n{stderr}\n--- stdout ---\n{stdout}",
            out.status.code()
        ),
    };
    ValidatorRun {
        code: out.status.code(),
        stdout,
        stderr,
        passed,
        failed,
    }
}

/// Parses `N passed, M failed`.
fn parse_summary(line: &str) -> Option<(usize, usize)> {
    let (p, f) = line.trim().split_once(" passed, ")?;
    let f = f.strip_suffix(" failed")?;
    Some((p.parse().ok()?, f.parse().ok()?))
}
