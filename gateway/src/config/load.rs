//! Reading the config file: TOML text → [`Config`], naming every unknown key, wrong type and
//! bad value with its line, not only the first one.
//!
//! serde stops at the first error. So when a file does not deserialize, [`Parsed`] reads on:
//! it sets aside the key the error is about (a bad value then takes its default, an unknown
//! key is dropped, a table that lacks a required key is dropped whole) and deserializes
//! again, until the rest reads or [`MAX_PARSE_PROBLEMS`] were found. What was set aside is
//! remembered, for two things: array indices in later keys are given as in the file (not
//! as in the file minus what was dropped), and the problems that only follow from a key
//! set aside are left out — its table's "missing field", or a check's complaint about the
//! table that held it (a bad `usb` set aside makes its port "give `path` or `usb`").
//!
//! Lines are found by key in the file as `toml_edit` parses it, which keeps positions:
//! the line of the key, of an array element, or of a table's header. A key the file does
//! not hold (a default) has no line.
//!
//! A file that deserializes takes the plain path: one pass straight from the text.
//!
//! No problem quotes a value of a `[[devices]]` table: it may identify a patient, and
//! config errors go to the journal. Keys and messages are cut at [`MAX_ERROR_TEXT`] bytes.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use serde_path_to_error::Segment;
use toml_edit::{ImDocument, Item, Table, TableLike, Value};

use super::{Config, ConfigError};

/// Most problems reported from reading one file; a file with more is read no further.
pub(super) const MAX_PARSE_PROBLEMS: usize = 100;

/// Longest key path and message of a parse error, in bytes: a parse error can quote an
/// unknown key or a value (`unknown variant `…``), which may be megabytes long.
pub(super) const MAX_ERROR_TEXT: usize = 512;

/// One step of a key path: a table key, or an index into an array.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// `sources.serial[1].usb`, as problems name keys.
fn render(path: &[Step]) -> String {
    let mut text = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(k);
            }
            Step::Index(i) => text.push_str(&format!("[{i}]")),
        }
    }
    text
}

/// The steps of a key as problems name it (the inverse of [`render`] for the keys the
/// checks use: no dots or brackets inside a key).
fn steps(key: &str) -> Vec<Step> {
    let mut path = Vec::new();
    for part in key.split('.').filter(|p| !p.is_empty()) {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            path.push(Step::Key(name.to_owned()));
        }
        while let Some((index, after)) = rest.split_once(']') {
            match index.parse() {
                Ok(i) => path.push(Step::Index(i)),
                Err(_) => path.push(Step::Key(index.to_owned())),
            }
            rest = after.trim_start_matches('[');
        }
    }
    path
}

/// `text` cut to at most `max` bytes (at a character boundary), marked with `…` when cut.
pub(super) fn clip(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// A serde message about a `[[devices]]` key without the value it quotes (`invalid type:
/// string "…", expected …`): the value may be a patient identifier.
fn without_value(message: &str) -> String {
    for kind in ["invalid type", "invalid value"] {
        if message.starts_with(kind) {
            let expected = message
                .split_once(", expected ")
                .map(|(_, e)| format!(", expected {e}"))
                .unwrap_or_default();
            return format!("{kind} (not shown: it may identify a patient){expected}");
        }
    }
    message.to_owned()
}

/// A problem found while deserializing, at `path` (as in the file).
fn parse_problem(path: &[Step], message: &str) -> ConfigError {
    let key = render(path);
    let message = message.trim();
    let message = if matches!(path.first(), Some(Step::Key(k)) if k == "devices") {
        without_value(message)
    } else {
        message.to_owned()
    };
    ConfigError::new(key, message)
}

/// A syntax error: where it is and what is wrong, without the snippet of the line (it may
/// be a patient binding).
fn syntax_problem(e: &toml::de::Error) -> ConfigError {
    let full = e.to_string();
    let at = full.lines().next().unwrap_or("TOML parse error").trim();
    ConfigError::new("", format!("{at}: {}", e.message().trim()))
}

/// Removes what `path` names from `value`; whether there was something to remove.
fn remove(value: &mut toml::Value, path: &[Step]) -> bool {
    match path {
        [] => false,
        [Step::Key(k)] => value.as_table_mut().is_some_and(|t| t.remove(k).is_some()),
        [Step::Index(i)] => match value.as_array_mut() {
            Some(a) if *i < a.len() => {
                a.remove(*i);
                true
            }
            _ => false,
        },
        [Step::Key(k), rest @ ..] => value
            .as_table_mut()
            .and_then(|t| t.get_mut(k))
            .is_some_and(|v| remove(v, rest)),
        [Step::Index(i), rest @ ..] => value
            .as_array_mut()
            .and_then(|a| a.get_mut(*i))
            .is_some_and(|v| remove(v, rest)),
    }
}

/// What was set aside to read on, as in the file.
#[derive(Debug, Default)]
struct SetAside {
    /// Every key set aside.
    paths: Vec<Vec<Step>>,
    /// For each array (its rendered path), the indices of the elements set aside, sorted.
    gaps: BTreeMap<String, Vec<usize>>,
}

impl SetAside {
    /// A path in what is left → the same path in the file.
    fn original(&self, path: &[Step]) -> Vec<Step> {
        let mut out: Vec<Step> = Vec::with_capacity(path.len());
        for step in path {
            match step {
                Step::Key(k) => out.push(Step::Key(k.clone())),
                Step::Index(i) => {
                    let mut index = *i;
                    for gap in self.gaps.get(&render(&out)).into_iter().flatten() {
                        if *gap <= index {
                            index += 1;
                        }
                    }
                    out.push(Step::Index(index));
                }
            }
        }
        out
    }

    fn record(&mut self, path: Vec<Step>) {
        if let Some((Step::Index(i), array)) = path.split_last() {
            let gaps = self.gaps.entry(render(array)).or_default();
            let at = gaps.partition_point(|g| g < i);
            gaps.insert(at, *i);
        }
        self.paths.push(path);
    }

    /// Whether a deserialization error only follows from what was set aside: the "missing
    /// field" of a key set aside, reported for its table.
    fn explains_parse(&self, path: &[Step], message: &str) -> bool {
        self.paths.iter().any(|p| match p.split_last() {
            Some((Step::Key(k), table)) => {
                table == path && message.trim() == format!("missing field `{k}`")
            }
            _ => false,
        })
    }

    /// Whether a later check's problem at `path` may only follow from what was set aside:
    /// it is about a key set aside, or about the table or array that held one.
    fn explains_check(&self, path: &[Step]) -> bool {
        self.paths
            .iter()
            .any(|p| p.as_slice() == path || p.split_last().is_some_and(|(_, up)| up == path))
    }
}

/// A config file read as far as it goes: the configuration without what could not be read,
/// and a problem for each thing that could not. See the module header.
#[derive(Debug)]
pub struct Parsed {
    /// The configuration, with defaults for what was set aside; `None` when the file could
    /// not be read, is not TOML, or had too many problems.
    config: Option<Config>,
    /// The problems found so far, keys as in the file, without lines.
    problems: Vec<ConfigError>,
    /// What was set aside.
    set_aside: SetAside,
    /// The file, to find lines in.
    text: String,
}

impl Parsed {
    /// Reads TOML text.
    pub fn from_toml(text: &str) -> Self {
        let mut parsed = Parsed {
            config: None,
            problems: Vec::new(),
            set_aside: SetAside::default(),
            text: text.to_owned(),
        };
        if let Ok(config) = Config::deserialize(toml::Deserializer::new(text)) {
            parsed.config = Some(config);
            return parsed;
        }
        let mut root = match text.parse::<toml::Table>() {
            Ok(table) => toml::Value::Table(table),
            Err(e) => {
                parsed.problems.push(syntax_problem(&e));
                return parsed;
            }
        };
        loop {
            let e = match serde_path_to_error::deserialize::<_, Config>(root.clone()) {
                Ok(config) => {
                    parsed.config = Some(config);
                    return parsed;
                }
                Err(e) => e,
            };
            let path: Option<Vec<Step>> = e
                .path()
                .iter()
                .map(|segment| match segment {
                    Segment::Map { key } => Some(Step::Key(key.clone())),
                    Segment::Seq { index } => Some(Step::Index(*index)),
                    Segment::Enum { .. } | Segment::Unknown => None,
                })
                .collect();
            let message = e.inner().message().to_owned();
            let Some(path) = path.filter(|p| !p.is_empty()) else {
                parsed.problems.push(ConfigError::new("", message.trim()));
                return parsed;
            };
            let original = parsed.set_aside.original(&path);
            if !parsed.set_aside.explains_parse(&original, &message) {
                parsed.problems.push(parse_problem(&original, &message));
            }
            if parsed.problems.len() >= MAX_PARSE_PROBLEMS {
                parsed.problems.push(ConfigError::new(
                    "",
                    format!("more than {MAX_PARSE_PROBLEMS} problems; the rest of the file was not read"),
                ));
                return parsed;
            }
            if !remove(&mut root, &path) {
                return parsed;
            }
            parsed.set_aside.record(original);
        }
    }

    /// Reads a config file of at most [`crate::limits::MAX_CONFIG_FILE_BYTES`] (a larger one
    /// is refused unread), then resolves `${CREDENTIALS_DIRECTORY}/…` paths against the
    /// environment variable of that name, when it is set.
    pub fn read(path: &Path) -> Self {
        let max = crate::limits::MAX_CONFIG_FILE_BYTES;
        let text = match crate::limits::read_capped(path, max) {
            Ok(text) => text,
            Err(e) => {
                let hint = if e.kind() == std::io::ErrorKind::InvalidData {
                    format!(" (a config file may be at most {max} bytes of UTF-8 text)")
                } else {
                    String::new()
                };
                return Parsed {
                    config: None,
                    problems: vec![ConfigError::new(
                        "",
                        format!("cannot read config file {}: {e}{hint}", path.display()),
                    )],
                    set_aside: SetAside::default(),
                    text: String::new(),
                };
            }
        };
        let mut parsed = Self::from_toml(&text);
        if let Some(config) = &mut parsed.config {
            let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty());
            config.resolve_credentials(credentials.as_deref().map(Path::new));
        }
        parsed
    }

    /// The configuration as far as it was read (see [`Parsed::config`]'s field).
    pub fn config(&self) -> Option<&Config> {
        self.config.as_ref()
    }

    /// Adds the problems a later check found in [`Self::config`], with their keys' indices
    /// as in the file, leaving out those that may only follow from what was set aside.
    pub fn add_checked(&mut self, problems: Vec<ConfigError>) {
        for mut problem in problems {
            let path = self.set_aside.original(&steps(&problem.key));
            if !problem.key.is_empty() && self.set_aside.explains_check(&path) {
                continue;
            }
            if !problem.key.is_empty() {
                problem.key = render(&path);
            }
            self.problems.push(problem);
        }
    }

    /// Every problem, each with its line where the file holds its key, key and message
    /// cut at 512 bytes, in the order of the file.
    pub fn problems(self) -> Vec<ConfigError> {
        if self.problems.is_empty() {
            return Vec::new();
        }
        let lines = Lines::new(&self.text);
        let mut problems: Vec<ConfigError> = self
            .problems
            .into_iter()
            .map(|mut p| {
                if p.line.is_none() && !p.key.is_empty() {
                    p.line = lines.of(&steps(&p.key));
                }
                p.key = clip(p.key, MAX_ERROR_TEXT);
                p.message = clip(p.message, MAX_ERROR_TEXT);
                p
            })
            .collect();
        // In file order; problems with no line of their own (defaults, the whole file) last.
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        problems
    }

    /// The configuration, or every problem (with lines) when there was any.
    pub fn into_result(mut self) -> Result<Config, Vec<ConfigError>> {
        match self.config.take() {
            Some(config) if self.problems.is_empty() => Ok(config),
            _ => Err(self.problems()),
        }
    }
}

/// Where keys are in the file.
struct Lines<'a> {
    /// The file as `toml_edit` parsed it, with positions; `None` if it does not parse.
    doc: Option<ImDocument<&'a str>>,
    /// The byte offset where each line after the first starts.
    starts: Vec<usize>,
}

/// A place in the document while following a key path.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn table(self) -> Option<&'a dyn TableLike> {
        match self {
            Node::Item(item) => item.as_table_like(),
            Node::Table(table) => Some(table),
            Node::Value(value) => value.as_inline_table().map(|t| t as &dyn TableLike),
        }
    }

    /// The element `i` of an array (of tables, or of values) and where it is.
    fn element(self, i: usize) -> Option<(Node<'a>, Option<Range<usize>>)> {
        let values = match self {
            Node::Item(item) => {
                if let Some(tables) = item.as_array_of_tables() {
                    let table = tables.get(i)?;
                    return Some((Node::Table(table), table.span()));
                }
                item.as_array()?
            }
            Node::Value(value) => value.as_array()?,
            Node::Table(_) => return None,
        };
        let value = values.get(i)?;
        Some((Node::Value(value), value.span()))
    }
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Lines {
            doc: ImDocument::parse(text).ok(),
            starts: text.match_indices('\n').map(|(i, _)| i + 1).collect(),
        }
    }

    /// The line (from 1) of the key, array element or table `path` names, if the file
    /// holds it.
    fn of(&self, path: &[Step]) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut node = Node::Table(doc.as_table());
        let mut span = None;
        for step in path {
            match step {
                Step::Key(k) => {
                    let (key, item) = node.table()?.get_key_value(k)?;
                    span = key.span().or_else(|| item.span());
                    node = Node::Item(item);
                }
                Step::Index(i) => {
                    let (element, at) = node.element(*i)?;
                    span = at;
                    node = element;
                }
            }
        }
        let start = span?.start;
        Some(self.starts.partition_point(|s| *s <= start) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_render_and_parse_back() {
        for key in [
            "gateway.id",
            "sources.serial[1].usb",
            "devices[0]",
            "a[1][2].b",
            "",
        ] {
            assert_eq!(render(&steps(key)), key);
        }
    }

    #[test]
    fn indices_after_elements_set_aside_are_those_of_the_file() {
        let mut aside = SetAside::default();
        let key = |k: &str| steps(k);
        aside.record(key("sources.serial[1]"));
        assert_eq!(
            aside.original(&key("sources.serial[0].name")),
            key("sources.serial[0].name")
        );
        assert_eq!(
            aside.original(&key("sources.serial[1].name")),
            key("sources.serial[2].name")
        );
        aside.record(aside.original(&key("sources.serial[1]")));
        assert_eq!(
            aside.original(&key("sources.serial[1]")),
            key("sources.serial[3]")
        );
        assert_eq!(aside.original(&key("devices[1]")), key("devices[1]"));
    }

    /// The new user's file: three mistakes, three problems, each with its line.
    #[test]
    fn every_unknown_key_and_wrong_value_is_reported_with_its_line() {
        let text = "[gateway]\ncolour = \"blue\"\n\n[uplink]\nbatchsize = 100\n\n[ops.http]\nlisten = \"localhost\"\n";
        let problems: Vec<String> = Config::from_toml(text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            problems,
            [
                "line 2: gateway.colour: unknown field `colour`, expected one of `id`, `data_dir`, `worker_threads`",
                "line 5: uplink.batchsize: unknown field `batchsize`, expected one of `batch_size`, `in_flight`, `batch_linger_ms`, `retry_initial_ms`, `retry_max_ms`, `file`, `fhir`, `hl7`, `mqtt`, `kafka`",
                "line 8: ops.http.listen: invalid socket address syntax",
            ]
        );
    }

    /// A port missing a required key is set aside whole: the later ports keep their
    /// indices as in the file, for reading problems and for the checks' problems alike,
    /// and a missing key that was itself set aside is not reported again.
    #[test]
    fn indices_stay_those_of_the_file_and_consequences_are_left_out() {
        let text = r#"
[[sources.serial]]
path = "/dev/ttyS0"
protocol = "firmware"
[[sources.serial]]
name = "b"
path = "/dev/ttyS1"
protocol = "firmware"
baud = "fast"
[[sources.serial]]
name = "c"
path = "/dev/ttyS2"
protocol = "lin"
[[sources.serial]]
name = "d d"
path = "/dev/ttyS3"
protocol = "firmware"
stop_bits = 3
"#;
        let mut parsed = Parsed::from_toml(text);
        let config = parsed.config().expect("the rest reads").clone();
        let ports: Vec<&str> = config
            .sources
            .serial
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(ports, ["b", "d d"], "ports 0 and 2 are set aside");
        parsed.add_checked(config.validate().unwrap_err());
        let problems: Vec<String> = parsed.problems().iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "line 2: sources.serial[0]: missing field `name`",
                "line 9: sources.serial[1].baud: invalid type: string \"fast\", expected u32",
                "line 13: sources.serial[2].protocol: unknown variant `lin`, expected `firmware` or `line`",
                "line 15: sources.serial[3].name: must be 1 to 64 ASCII letters, digits, '-', '_' or '.'",
                "line 18: sources.serial[3].stop_bits: must be 1 or 2",
            ]
        );
    }

    #[test]
    fn a_file_with_too_many_problems_is_read_no_further() {
        let text: String = (0..MAX_PARSE_PROBLEMS + 5)
            .map(|i| {
                format!(
                    "[[devices]]\nid = \"d{i}\"\npatient_reference = \"Patient/{i}\"\ncolor = 1\n"
                )
            })
            .collect();
        let problems = Config::from_toml(&text).unwrap_err();
        assert_eq!(problems.len(), MAX_PARSE_PROBLEMS + 1);
        assert_eq!(problems[7].to_string(), "line 32: devices[7].color: unknown field `color`, expected one of `id`, `patient_system`, `patient_id`, `patient_reference`, `user`");
        assert!(problems[MAX_PARSE_PROBLEMS]
            .message
            .starts_with("more than 100 problems"));
    }

    #[test]
    fn lines_are_those_of_keys_elements_and_table_headers() {
        let text = "# comment\n[gateway]\nid = \"g\"\n\n[[devices]]\nid = \"a\"\n[[devices]]\nid = \"b\"\n[ops.http]\nallow_from = [\"127.0.0.0/8\",\n  \"::1\"]\n";
        let lines = Lines::new(text);
        for (key, line) in [
            ("gateway", Some(2)),
            ("gateway.id", Some(3)),
            ("devices[0]", Some(5)),
            ("devices[1].id", Some(8)),
            ("ops.http", Some(9)),
            ("ops.http.allow_from[1]", Some(11)),
            ("buffer.capacity", None),
            ("devices[2]", None),
        ] {
            assert_eq!(lines.of(&steps(key)), line, "{key}");
        }
    }
}
