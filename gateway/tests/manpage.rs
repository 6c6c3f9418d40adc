//! The man page (`gateway/man/vitalbridge.1`, installed by the Debian package) and
//! `vitalbridge --help` describe the same commands and options.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// `vitalbridge <path…> --help`.
fn help(path: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
        .args(path)
        .arg("--help")
        .output()
        .expect("run vitalbridge --help");
    assert!(out.status.success(), "{path:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The entries of one section ("Commands:" or "Options:") of clap's help: the first word of
/// each indented line.
fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| *l != title)
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("  ") && !l.trim_start().is_empty())
        .map(str::trim_start)
        .collect()
}

/// Every command path (e.g. `queue dead-letters`) and every option as `-s, --long` or
/// `--long`, walking the help tree.
fn cli_surface() -> (BTreeSet<String>, BTreeSet<String>) {
    let mut commands = BTreeSet::new();
    let mut options = BTreeSet::new();
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    while let Some(path) = todo.pop() {
        let text = help(&path);
        for entry in section(&text, "Commands:") {
            let name = entry.split_whitespace().next().unwrap();
            if name != "help" {
                let mut sub = path.clone();
                sub.push(name.to_owned());
                commands.insert(sub.join(" "));
                todo.push(sub);
            }
        }
        for entry in section(&text, "Options:") {
            let flags: Vec<&str> = entry
                .split_whitespace()
                .take_while(|w| w.starts_with('-'))
                .collect();
            options.insert(flags.join(" ").trim_end_matches(',').to_owned());
        }
    }
    (commands, options)
}

/// The man page as plain text: roff font escapes removed, `\-` as `-`, comments dropped.
fn man_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("man/vitalbridge.1");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with(".\\\""))
        .map(|l| {
            l.replace("\\fB", "")
                .replace("\\fR", "")
                .replace("\\fI", "")
                .replace("\\fP", "")
                .replace("\\-", "-")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The command paths the man page documents: the `.TP` headings of its COMMANDS section.
fn man_commands(man: &str) -> BTreeSet<String> {
    let commands = man
        .split(".SH COMMANDS")
        .nth(1)
        .and_then(|s| s.split("\n.SH ").next())
        .expect("a COMMANDS section");
    let lines: Vec<&str> = commands.lines().collect();
    lines
        .windows(2)
        .filter(|w| w[0] == ".TP")
        .map(|w| {
            w[1].trim_start_matches(".B ")
                .split_whitespace()
                .skip(1) // "vitalbridge"
                .take_while(|word| {
                    word.starts_with(|c: char| c.is_ascii_lowercase())
                        && word
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn the_man_page_documents_every_command_and_no_other() {
    let (commands, _) = cli_surface();
    let documented = man_commands(&man_text());
    // `queue` itself only groups its subcommands.
    let runnable: BTreeSet<String> = commands
        .iter()
        .filter(|c| !commands.iter().any(|o| o.starts_with(&format!("{c} "))))
        .cloned()
        .collect();
    assert_eq!(documented, runnable, "man page COMMANDS vs --help");
}

#[test]
fn the_man_page_documents_every_option_and_no_other() {
    let (_, options) = cli_surface();
    let man = man_text();
    for option in &options {
        assert!(
            man.contains(option.as_str()),
            "{option} is not in the man page"
        );
    }
    let long: BTreeSet<&str> = options
        .iter()
        .filter_map(|o| o.split(' ').next_back())
        .collect();
    for word in man.split(|c: char| c.is_whitespace() || "[]|,".contains(c)) {
        if let Some(flag) = word.strip_prefix("--") {
            let flag = format!(
                "--{}",
                flag.trim_end_matches(|c: char| !c.is_alphanumeric())
            );
            assert!(
                long.contains(flag.as_str()),
                "the man page mentions {flag}, which --help does not know"
            );
        }
    }
}

#[test]
fn the_man_page_and_the_help_agree_on_the_walk_itself() {
    // Guards the parsers above: if clap's layout changed, the walk would find nothing and the
    // other tests would pass vacuously.
    let (commands, options) = cli_surface();
    assert!(commands.contains("queue dead-letters"), "{commands:?}");
    assert!(options.contains("-c, --config"), "{options:?}");
    assert!(options.contains("--log-format"), "{options:?}");
    assert!(man_commands(&man_text()).contains("check-config"));
}
