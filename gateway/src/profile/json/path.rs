//! The small path language of vendor JSON profiles: where in a message a value is.
//!
//! A path is one of:
//!
//! - a JSON Pointer (RFC 6901) relative to the record: `/body/weight`, `/values/0`,
//!   `/a~1b` (the key `a/b`), `/t~0x` (the key `t~x`); the empty pointer `""` is the record
//!   itself;
//! - with a filter on a segment that names an array: `/measures[type=9]/value` takes the
//!   first element of `measures` whose key `type` equals `9` (a JSON number compares by its
//!   decimal text, a string by its text; `[type='9']` matches only the string). At most
//!   [`MAX_SEGMENTS`] segments;
//! - `topic:N`: level `N` (0-based) of the MQTT topic the message came on, e.g. `topic:1` of
//!   `vendor/ABC123/bp` is `ABC123`.
//!
//! Evaluation never panics and never copies the document.

use serde_json::Value;

/// Most segments a path may have.
pub const MAX_SEGMENTS: usize = 16;

/// One step of a pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// An object key, or an array index when the text is a number.
    Key(String),
    /// An object key naming an array, and the element of it to take: the first whose
    /// `field` equals `equals`.
    Filter {
        /// The key of the array.
        key: String,
        /// The key inside each element.
        field: String,
        /// The text to compare with.
        equals: String,
        /// Whether only a JSON string matches (`'…'`), or a number or a string.
        string_only: bool,
    },
}

/// A checked path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    /// A pointer (with filters) into the record.
    Pointer(Vec<Segment>),
    /// A level of the MQTT topic.
    Topic(usize),
}

/// What a path found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Found<'a> {
    /// A JSON value of the record.
    Json(&'a Value),
    /// A topic level.
    Text(&'a str),
}

impl Path {
    /// Parses a path; the error says what is wrong with it.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if let Some(level) = text.strip_prefix("topic:") {
            return level
                .parse::<usize>()
                .ok()
                .filter(|l| *l < 64)
                .map(Path::Topic)
                .ok_or_else(|| "`topic:N` needs a level number below 64".to_owned());
        }
        if text.is_empty() {
            return Ok(Path::Pointer(Vec::new()));
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err("must be a JSON pointer starting with `/`, or `topic:N`".into());
        };
        let mut segments = Vec::new();
        for raw in rest.split('/') {
            if segments.len() == MAX_SEGMENTS {
                return Err(format!("has more than {MAX_SEGMENTS} segments"));
            }
            segments.push(segment(raw)?);
        }
        Ok(Path::Pointer(segments))
    }

    /// Whether the path reads the record (rather than the topic).
    pub fn is_pointer(&self) -> bool {
        matches!(self, Path::Pointer(_))
    }

    /// The value at this path in `record` (or `topic`), if there is one. A JSON `null` is
    /// found as such; the caller decides what it means.
    pub fn find<'a>(&self, record: &'a Value, topic: &'a str) -> Option<Found<'a>> {
        match self {
            Path::Topic(level) => topic.split('/').nth(*level).map(Found::Text),
            Path::Pointer(segments) => {
                let mut at = record;
                for s in segments {
                    at = step(at, s)?;
                }
                Some(Found::Json(at))
            }
        }
    }

    /// The JSON value at this path in `record` (`None` for a topic path).
    pub fn json<'a>(&self, record: &'a Value) -> Option<&'a Value> {
        match self.find(record, "")? {
            Found::Json(v) => Some(v),
            Found::Text(_) => None,
        }
    }
}

fn unescape(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return Err("has `~` not followed by 0 or 1 (RFC 6901)".into()),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

fn segment(raw: &str) -> Result<Segment, String> {
    let Some(open) = raw.find('[') else {
        return Ok(Segment::Key(unescape(raw)?));
    };
    let Some(inner) = raw[open + 1..].strip_suffix(']') else {
        return Err("has a `[` filter without its closing `]` at the end of the segment".into());
    };
    let Some((field, equals)) = inner.split_once('=') else {
        return Err("has a filter that is not `[key=value]`".into());
    };
    if field.is_empty() {
        return Err("has a filter without a key".into());
    }
    let (equals, string_only) = match equals.strip_prefix('\'').and_then(|e| e.strip_suffix('\'')) {
        Some(quoted) => (quoted, true),
        None => (equals, false),
    };
    Ok(Segment::Filter {
        key: unescape(&raw[..open])?,
        field: unescape(field)?,
        equals: equals.to_owned(),
        string_only,
    })
}

fn step<'a>(at: &'a Value, s: &Segment) -> Option<&'a Value> {
    match s {
        Segment::Key(key) => match at {
            Value::Object(map) => map.get(key),
            Value::Array(items) => items.get(key.parse::<usize>().ok()?),
            _ => None,
        },
        Segment::Filter {
            key,
            field,
            equals,
            string_only,
        } => {
            let items = match at {
                Value::Object(_) if key.is_empty() => return None,
                Value::Object(map) => map.get(key)?.as_array()?,
                Value::Array(items) if key.is_empty() => items,
                _ => return None,
            };
            items.iter().find(|item| match item.get(field.as_str()) {
                Some(Value::String(s)) => s == equals,
                Some(Value::Number(n)) if !string_only => n.to_string() == *equals,
                Some(Value::Bool(b)) if !string_only => b.to_string() == *equals,
                _ => false,
            })
        }
    }
}

/// Whether an MQTT topic matches a subscription filter (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut levels = topic.split('/');
    for f in filter.split('/') {
        match f {
            "#" => return true,
            "+" => {
                if levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}

/// Whether `filter` is a valid MQTT topic filter: non-empty levels or wildcards, `#` only
/// last, wildcards alone in their level.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i == levels.len() - 1,
        "+" => true,
        other => !other.contains(['+', '#']),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_filters_and_topic_levels_find_what_they_say() {
        let doc = json!({
            "body": {"measures": [{"type": 1, "value": 7}, {"type": 9, "value": 80}, {"type": "9", "value": 1}]},
            "a/b": {"t~x": true},
            "list": [10, 20],
        });
        let find = |p: &str| Path::parse(p).unwrap().json(&doc).cloned();
        assert_eq!(find("/body/measures[type=9]/value"), Some(json!(80)));
        assert_eq!(find("/body/measures[type='9']/value"), Some(json!(1)));
        assert_eq!(find("/body/measures[type=2]/value"), None);
        assert_eq!(find("/a~1b/t~0x"), Some(json!(true)));
        assert_eq!(find("/list/1"), Some(json!(20)));
        assert_eq!(find("/list/2"), None);
        assert_eq!(find("/list/x"), None);
        assert_eq!(find("/missing/deeper"), None);
        assert_eq!(find(""), Some(doc.clone()));
        let topic = Path::parse("topic:1").unwrap();
        assert_eq!(topic.find(&doc, "vendor/ABC/bp"), Some(Found::Text("ABC")));
        assert_eq!(topic.find(&doc, "vendor"), None);
    }

    #[test]
    fn bad_paths_are_refused_with_a_reason() {
        for bad in [
            "body", "/a~2", "/a[b", "/a[b]", "/a[=1]", "topic:x", "topic:99",
        ] {
            assert!(Path::parse(bad).is_err(), "{bad}");
        }
        let deep = "/a".repeat(MAX_SEGMENTS + 1);
        assert!(Path::parse(&deep).is_err());
    }

    #[test]
    fn topic_filters_match_as_mqtt_does() {
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(!topic_matches("a/+/c", "a/b/d"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(!topic_matches("a/b", "a"));
        assert!(valid_filter("a/+/#"));
        assert!(!valid_filter("a/#/b"));
        assert!(!valid_filter("a/b+"));
        assert!(!valid_filter(""));
    }
}
