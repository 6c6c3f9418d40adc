//! The HL7 v2 message format (ER7, the "pipe" encoding), read with the message's own
//! delimiters. Pure: bytes in, a message view or an error out; never panics.
//!
//! # Format
//!
//! A message is segments; a segment is fields; a field is repetitions of components of
//! sub-components:
//!
//! ```text
//! MSH|^~\&#|SENDER|…|20260105101500+0100||ORU^R01^ORU_R01|MSG0001|P|2.6|…|UNICODE UTF-8
//!    │└┴┴┴┴─ MSH-2: component ^, repetition ~, escape \, sub-component &, truncation # (v2.7+)
//!    └────── MSH-1: the field separator
//! ```
//!
//! - The delimiters are whatever MSH-1 and MSH-2 say (any printable ASCII, all different);
//!   MSH-2 may give fewer than four (then the rest are absent) or a fifth, the truncation
//!   character of v2.7.
//! - Segments end with CR; LF and CRLF are tolerated (senders and files use them). Empty
//!   segments are skipped.
//! - MSH-18 names the character set of the whole message. Read here: `ASCII`, `8859/1`
//!   (ISO 8859-1), `UNICODE UTF-8` (and `UNICODE`, taken as UTF-8). Empty means ASCII; a
//!   message without MSH-18 is still accepted when it is valid UTF-8 (ASCII is a subset),
//!   and refused otherwise — its bytes are never guessed at. Other character sets are refused.
//! - Escape sequences (between two escape characters) in the values read: `\F\` `\S\` `\T\`
//!   `\R\` `\E\` `\P\` give the delimiters, `\Xhh…\` bytes in the message's character set,
//!   `\H\` `\N\` (highlighting) and the formatting commands `\.br\`, `\.sp\`… are dropped or
//!   become a line break; `\C…\` / `\M…\` (character-set switches) are refused, as is an
//!   escape without its closing escape character or an unknown one.
//!
//! Batches (`FHS`/`BHS` … `BTS`/`FTS`) are split into their messages by [`split_batch`].

use std::fmt;

/// The most segments a message may have; a bigger one is refused (the size limit on the
/// frame bounds it too, this bounds the index).
pub const MAX_SEGMENTS: usize = 100_000;

/// Why bytes are not a usable HL7 v2 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The message does not start with an `MSH` segment and its delimiters.
    NotHl7(&'static str),
    /// MSH-18 names a character set this parser does not read.
    UnsupportedCharset(String),
    /// The bytes are not valid in the message's character set.
    BadEncoding(&'static str),
    /// Too many segments.
    TooManySegments,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NotHl7(why) => write!(f, "not an HL7 v2 message: {why}"),
            ParseError::UnsupportedCharset(c) => {
                write!(f, "MSH-18 character set {c:?} is not supported (ASCII, 8859/1, UNICODE UTF-8 are)")
            }
            ParseError::BadEncoding(why) => write!(f, "{why}"),
            ParseError::TooManySegments => {
                write!(f, "more than {MAX_SEGMENTS} segments")
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// A value whose escape sequences are wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscapeError(pub &'static str);

impl fmt::Display for EscapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for EscapeError {}

/// The character set of a message (MSH-18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// No MSH-18: ASCII, or UTF-8 when the bytes are valid UTF-8.
    Default,
    /// `ASCII`.
    Ascii,
    /// `8859/1`: ISO 8859-1 (Latin-1).
    Latin1,
    /// `UNICODE UTF-8`.
    Utf8,
}

impl Charset {
    /// The charset MSH-18 names.
    pub fn from_msh18(value: &str) -> Result<Self, ParseError> {
        Ok(match value.trim() {
            "" => Charset::Default,
            "ASCII" => Charset::Ascii,
            "8859/1" => Charset::Latin1,
            "UNICODE UTF-8" | "UNICODE" | "UTF-8" => Charset::Utf8,
            other => {
                return Err(ParseError::UnsupportedCharset(
                    other.chars().take(32).collect(),
                ))
            }
        })
    }

    /// The MSH-18 text for this charset (empty for the default).
    pub fn msh18(self) -> &'static str {
        match self {
            Charset::Default => "",
            Charset::Ascii => "ASCII",
            Charset::Latin1 => "8859/1",
            Charset::Utf8 => "UNICODE UTF-8",
        }
    }

    /// Text from bytes in this charset.
    pub fn decode(self, bytes: &[u8]) -> Result<String, ParseError> {
        match self {
            Charset::Latin1 => Ok(bytes.iter().map(|&b| char::from(b)).collect()),
            Charset::Ascii => {
                if bytes.is_ascii() {
                    Ok(bytes.iter().map(|&b| char::from(b)).collect())
                } else {
                    Err(ParseError::BadEncoding(
                        "a byte outside ASCII in a message whose MSH-18 says ASCII",
                    ))
                }
            }
            Charset::Utf8 => String::from_utf8(bytes.to_vec()).map_err(|_| {
                ParseError::BadEncoding("invalid UTF-8 in a message whose MSH-18 says UTF-8")
            }),
            Charset::Default => String::from_utf8(bytes.to_vec()).map_err(|_| {
                ParseError::BadEncoding(
                    "bytes outside ASCII and no character set in MSH-18 (set it to 8859/1 or UNICODE UTF-8)",
                )
            }),
        }
    }

    /// Bytes of `text` in this charset; a character it cannot hold becomes `?`.
    pub fn encode(self, text: &str) -> Vec<u8> {
        match self {
            Charset::Latin1 => text
                .chars()
                .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                .collect(),
            Charset::Ascii => text
                .chars()
                .map(|c| if c.is_ascii() { c as u8 } else { b'?' })
                .collect(),
            Charset::Utf8 | Charset::Default => text.as_bytes().to_vec(),
        }
    }
}

/// The delimiters of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// Field separator (MSH-1), usually `|`.
    pub field: char,
    /// Component separator, usually `^`.
    pub component: char,
    /// Repetition separator, usually `~`.
    pub repetition: Option<char>,
    /// Escape character, usually `\`.
    pub escape: Option<char>,
    /// Sub-component separator, usually `&`.
    pub subcomponent: Option<char>,
    /// Truncation character (v2.7+), usually `#`.
    pub truncation: Option<char>,
}

impl Default for Delimiters {
    /// `|^~\&`: what the gateway writes.
    fn default() -> Self {
        Self {
            field: '|',
            component: '^',
            repetition: Some('~'),
            escape: Some('\\'),
            subcomponent: Some('&'),
            truncation: None,
        }
    }
}

impl Delimiters {
    /// The delimiters of a message starting `MSH` (or a batch header `FHS`/`BHS`): MSH-1 is
    /// the byte after the segment id, MSH-2 runs to the next field separator.
    pub fn from_header(bytes: &[u8]) -> Result<Self, ParseError> {
        if bytes.len() < 5 {
            return Err(ParseError::NotHl7("too short"));
        }
        let field = bytes[3];
        if !is_delimiter(field) {
            return Err(ParseError::NotHl7("MSH-1 is not a field separator"));
        }
        let enc: Vec<u8> = bytes[4..]
            .iter()
            .take_while(|&&b| b != field && b != b'\r' && b != b'\n')
            .copied()
            .collect();
        if enc.is_empty() || enc.len() > 5 {
            return Err(ParseError::NotHl7(
                "MSH-2 must give 1 to 5 encoding characters",
            ));
        }
        let mut seen = vec![field];
        for &b in &enc {
            if !is_delimiter(b) || seen.contains(&b) {
                return Err(ParseError::NotHl7(
                    "MSH-2 encoding characters must be distinct printable punctuation",
                ));
            }
            seen.push(b);
        }
        let at = |i: usize| enc.get(i).map(|&b| char::from(b));
        Ok(Self {
            field: char::from(field),
            component: char::from(enc[0]),
            repetition: at(1),
            escape: at(2),
            subcomponent: at(3),
            truncation: at(4),
        })
    }

    /// MSH-2 as written for these delimiters.
    pub fn encoding_characters(&self) -> String {
        [
            Some(self.component),
            self.repetition,
            self.escape,
            self.subcomponent,
            self.truncation,
        ]
        .into_iter()
        .map_while(|c| c)
        .collect()
    }

    /// Splits `value` at `sep` (all of it when `sep` is `None`).
    fn split(value: &str, sep: Option<char>) -> Vec<&str> {
        match sep {
            Some(c) => value.split(c).collect(),
            None => vec![value],
        }
    }

    /// The repetitions of a field value.
    pub fn repetitions<'a>(&self, field: &'a str) -> Vec<&'a str> {
        Self::split(field, self.repetition)
    }

    /// Component `n` (1-based) of a field's first repetition, raw; `""` when absent.
    pub fn component<'a>(&self, field: &'a str, n: usize) -> &'a str {
        let first = Self::split(field, self.repetition)
            .into_iter()
            .next()
            .unwrap_or("");
        Self::component_of(first, self.component, n)
    }

    /// Component `n` (1-based) of one repetition, raw.
    pub fn component_of_repetition<'a>(&self, repetition: &'a str, n: usize) -> &'a str {
        Self::component_of(repetition, self.component, n)
    }

    fn component_of(value: &str, sep: char, n: usize) -> &str {
        if n == 0 {
            return "";
        }
        value.split(sep).nth(n - 1).unwrap_or("")
    }

    /// Sub-component `n` (1-based) of a component, raw.
    pub fn subcomponent<'a>(&self, component: &'a str, n: usize) -> &'a str {
        if n == 0 {
            return "";
        }
        Self::split(component, self.subcomponent)
            .into_iter()
            .nth(n - 1)
            .unwrap_or("")
    }

    /// A leaf value (a component or sub-component) with its escape sequences resolved. `\X…\`
    /// bytes are read in `charset`.
    pub fn unescape(&self, raw: &str, charset: Charset) -> Result<String, EscapeError> {
        let Some(esc) = self.escape else {
            return Ok(raw.to_owned());
        };
        if !raw.contains(esc) {
            return Ok(raw.to_owned());
        }
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(start) = rest.find(esc) {
            out.push_str(&rest[..start]);
            let after = &rest[start + esc.len_utf8()..];
            let end = after
                .find(esc)
                .ok_or(EscapeError("an escape sequence is not closed"))?;
            let seq = &after[..end];
            rest = &after[end + esc.len_utf8()..];
            match seq {
                "F" => out.push(self.field),
                "S" => out.push(self.component),
                "T" => out.push(
                    self.subcomponent
                        .ok_or(EscapeError("\\T\\ without a sub-component separator"))?,
                ),
                "R" => out.push(
                    self.repetition
                        .ok_or(EscapeError("\\R\\ without a repetition separator"))?,
                ),
                "E" => out.push(esc),
                "P" => out.push(
                    self.truncation
                        .ok_or(EscapeError("\\P\\ without a truncation character"))?,
                ),
                "H" | "N" => {}
                ".br" => out.push('\n'),
                s if s.starts_with('.') => {}
                s if s.starts_with('X') || s.starts_with('x') => {
                    let bytes = hex(&s[1..]).ok_or(EscapeError("\\X…\\ is not hex digits"))?;
                    let text = charset
                        .decode(&bytes)
                        .map_err(|_| EscapeError("\\X…\\ bytes are not valid in the charset"))?;
                    out.push_str(&text);
                }
                "" => return Err(EscapeError("an empty escape sequence")),
                s if s.starts_with('C') || s.starts_with('M') => {
                    return Err(EscapeError(
                        "character-set switching escapes are not supported",
                    ))
                }
                _ => return Err(EscapeError("an unknown escape sequence")),
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// `text` escaped for these delimiters, so that it is one leaf value.
    pub fn escape(&self, text: &str) -> String {
        let Some(esc) = self.escape else {
            // No escape character: delimiters cannot be represented; drop them.
            return text
                .chars()
                .filter(|c| !self.is_delimiter_char(*c) && *c != '\r' && *c != '\n')
                .collect();
        };
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            let code = if c == self.field {
                Some("F")
            } else if c == self.component {
                Some("S")
            } else if Some(c) == self.subcomponent {
                Some("T")
            } else if Some(c) == self.repetition {
                Some("R")
            } else if c == esc {
                Some("E")
            } else if Some(c) == self.truncation {
                Some("P")
            } else if c == '\r' || c == '\n' {
                Some(".br")
            } else {
                None
            };
            match code {
                Some(code) => {
                    out.push(esc);
                    out.push_str(code);
                    out.push(esc);
                }
                None => out.push(c),
            }
        }
        out
    }

    fn is_delimiter_char(&self, c: char) -> bool {
        c == self.field
            || c == self.component
            || Some(c) == self.repetition
            || Some(c) == self.escape
            || Some(c) == self.subcomponent
            || Some(c) == self.truncation
    }
}

fn is_delimiter(b: u8) -> bool {
    b.is_ascii_graphic() && !b.is_ascii_alphanumeric()
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// One segment: its id and its fields, raw (escape sequences unresolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// `MSH`, `PID`, `OBX`…
    pub id: String,
    /// Fields 1…n. For MSH, field 1 is the field separator and field 2 the encoding
    /// characters, so MSH-n is `fields[n - 1]` like every other segment.
    fields: Vec<String>,
}

impl Segment {
    /// Field `n` (1-based), raw; `""` when absent.
    pub fn field(&self, n: usize) -> &str {
        if n == 0 {
            return "";
        }
        self.fields.get(n - 1).map(String::as_str).unwrap_or("")
    }

    /// How many fields it has.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether it has no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// A parsed message: its delimiters, character set and segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The delimiters from MSH-1/MSH-2.
    pub delimiters: Delimiters,
    /// The character set from MSH-18.
    pub charset: Charset,
    /// The segments, MSH first.
    pub segments: Vec<Segment>,
}

impl Message {
    /// Parses one message (starting with `MSH`).
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let bytes = trim_leading_breaks(bytes);
        if !bytes.starts_with(b"MSH") {
            return Err(ParseError::NotHl7("does not start with MSH"));
        }
        let delimiters = Delimiters::from_header(bytes)?;
        // MSH-18 is read from the raw bytes: the delimiters and MSH are ASCII in every
        // supported charset.
        let header_end = bytes
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(bytes.len());
        let header = &bytes[..header_end];
        let sep = delimiters.field as u8;
        // MSH-18 is the 17th separator-delimited element after "MSH" (MSH-1 is the separator
        // itself).
        let msh18 = header.split(|&b| b == sep).nth(17).unwrap_or(&[]);
        let msh18_first = msh18
            .split(|&b| Some(char::from(b)) == delimiters.repetition)
            .next()
            .unwrap_or(&[]);
        let charset = Charset::from_msh18(&String::from_utf8_lossy(msh18_first))?;
        let text = charset.decode(bytes)?;
        let segments = segments(&text, &delimiters)?;
        Ok(Self {
            delimiters,
            charset,
            segments,
        })
    }

    /// The MSH segment.
    pub fn msh(&self) -> &Segment {
        &self.segments[0]
    }

    /// The first segment with this id.
    pub fn first(&self, id: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.id == id)
    }

    /// A leaf value of a field: component `c`, sub-component `s` (1-based; 0 = whole),
    /// unescaped.
    pub fn value(
        &self,
        segment: &Segment,
        field: usize,
        component: usize,
        sub: usize,
    ) -> Result<String, EscapeError> {
        let d = &self.delimiters;
        let f = segment.field(field);
        if field <= 2 && matches!(segment.id.as_str(), "MSH" | "FHS" | "BHS") {
            // The separator and the encoding characters are not values to split.
            return Ok(f.to_owned());
        }
        let raw = match (component, sub) {
            (0, _) => d.repetitions(f).into_iter().next().unwrap_or(""),
            (c, 0) => d.component(f, c),
            (c, s) => d.subcomponent(d.component(f, c), s),
        };
        d.unescape(raw, self.charset)
    }
}

fn trim_leading_breaks(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| !matches!(b, b'\r' | b'\n' | b' ' | b'\t'))
        .unwrap_or(bytes.len());
    &bytes[start..]
}

fn segments(text: &str, d: &Delimiters) -> Result<Vec<Segment>, ParseError> {
    let mut out = Vec::new();
    for line in text.split(['\r', '\n']) {
        if line.trim().is_empty() {
            continue;
        }
        if out.len() >= MAX_SEGMENTS {
            return Err(ParseError::TooManySegments);
        }
        let mut parts = line.split(d.field);
        let id = parts.next().unwrap_or("").to_owned();
        let fields: Vec<String> = if id == "MSH" || id == "FHS" || id == "BHS" {
            // Field 1 is the separator itself; field 2 the encoding characters (which
            // contain no field separator, so they are the next part).
            let mut fields = vec![d.field.to_string()];
            fields.extend(parts.map(str::to_owned));
            fields
        } else {
            parts.map(str::to_owned).collect()
        };
        out.push(Segment { id, fields });
    }
    if out.first().map(|s| s.id.as_str()) != Some("MSH") {
        return Err(ParseError::NotHl7("does not start with MSH"));
    }
    Ok(out)
}

/// Splits a frame into its messages: a single message, or the messages of a batch
/// (`FHS`/`BHS` … `MSH` … `BTS`/`FTS`), each starting at its `MSH`. Batch header and trailer
/// segments are dropped. The slices are raw bytes, to be parsed with [`Message::parse`].
pub fn split_batch(bytes: &[u8]) -> Vec<&[u8]> {
    let bytes = trim_leading_breaks(bytes);
    if !(bytes.starts_with(b"FHS") || bytes.starts_with(b"BHS")) {
        return vec![bytes];
    }
    let mut messages = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    while pos < bytes.len() {
        let end = bytes[pos..]
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .map_or(bytes.len(), |i| pos + i);
        let line = &bytes[pos..end];
        let header = line.starts_with(b"FHS")
            || line.starts_with(b"BHS")
            || line.starts_with(b"BTS")
            || line.starts_with(b"FTS");
        if line.starts_with(b"MSH") || header {
            if let Some(s) = start.take() {
                messages.push(&bytes[s..pos]);
            }
            if !header {
                start = Some(pos);
            }
        }
        pos = end + 1;
    }
    if let Some(s) = start {
        messages.push(&bytes[s..]);
    }
    messages
}

/// Whether a frame is a batch (`FHS`/`BHS` first).
pub fn is_batch(bytes: &[u8]) -> bool {
    let bytes = trim_leading_breaks(bytes);
    bytes.starts_with(b"FHS") || bytes.starts_with(b"BHS")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(msg: &str, seg: &str, field: usize, comp: usize, sub: usize, want: &str) {
        let m = Message::parse(msg.as_bytes()).unwrap();
        let s = m.first(seg).unwrap();
        assert_eq!(
            m.value(s, field, comp, sub).unwrap(),
            want,
            "{seg}-{field}.{comp}.{sub}"
        );
    }

    const BASIC: &str = "MSH|^~\\&|APP^0012211839000001^EUI-64|FAC|||20260105101500+0100||ORU^R01^ORU_R01|M1|P|2.6\rPID|||12345^^^HOSP&1.2.3&ISO^MR~999^^^OTHER||Doe^Jane\rOBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.1|97|262688^MDC_DIM_PERCENT^MDC|||||F\r";

    #[test]
    fn fields_components_subcomponents_and_repetitions() {
        check(BASIC, "MSH", 1, 0, 0, "|");
        check(BASIC, "MSH", 2, 0, 0, "^~\\&");
        check(BASIC, "MSH", 3, 2, 0, "0012211839000001");
        check(BASIC, "MSH", 9, 1, 0, "ORU");
        check(BASIC, "MSH", 9, 2, 0, "R01");
        check(BASIC, "MSH", 10, 0, 0, "M1");
        check(BASIC, "MSH", 12, 0, 0, "2.6");
        check(BASIC, "PID", 3, 1, 0, "12345");
        check(BASIC, "PID", 3, 4, 2, "1.2.3");
        check(BASIC, "PID", 3, 4, 3, "ISO");
        check(BASIC, "OBX", 3, 1, 0, "150456");
        check(BASIC, "OBX", 4, 0, 0, "1.3.1.1");
        check(BASIC, "OBX", 11, 0, 0, "F");
        check(BASIC, "OBX", 30, 0, 0, "");
        let m = Message::parse(BASIC.as_bytes()).unwrap();
        assert_eq!(
            m.delimiters
                .repetitions(m.first("PID").unwrap().field(3))
                .len(),
            2
        );
    }

    #[test]
    fn the_messages_own_delimiters_and_truncation_character_are_used() {
        let msg = "MSH*:!$%#*APP*FAC***2026**ORU:R01*M2*P*2.8\rOBX*1*NM*150456:MDC_PULS_OXIM_SAT_O2:MDC*1.3.1.1*97*x$F$y$S$z$T$w$R$q$E$v$P$u\r";
        let m = Message::parse(msg.as_bytes()).unwrap();
        assert_eq!(m.delimiters.field, '*');
        assert_eq!(m.delimiters.component, ':');
        assert_eq!(m.delimiters.repetition, Some('!'));
        assert_eq!(m.delimiters.escape, Some('$'));
        assert_eq!(m.delimiters.subcomponent, Some('%'));
        assert_eq!(m.delimiters.truncation, Some('#'));
        assert_eq!(m.delimiters.encoding_characters(), ":!$%#");
        check(msg, "MSH", 9, 2, 0, "R01");
        check(msg, "OBX", 3, 2, 0, "MDC_PULS_OXIM_SAT_O2");
        check(msg, "OBX", 6, 0, 0, "x*y:z%w!q$v#u");
    }

    #[test]
    fn escapes_resolve_and_round_trip() {
        let d = Delimiters::default();
        let raw = "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X41C3A9\\g\\H\\h\\N\\i\\.br\\j";
        assert_eq!(
            d.unescape(raw, Charset::Utf8).unwrap(),
            "a|b^c&d~e\\fAég".to_owned() + "hi\nj"
        );
        assert_eq!(d.unescape("\\XE9\\", Charset::Latin1).unwrap(), "é");
        for text in ["plain", "a|b^c&d~e\\f", "line\nbreak", ""] {
            let e = d.escape(text);
            assert_eq!(d.unescape(&e, Charset::Utf8).unwrap(), text, "{e}");
        }
    }

    #[test]
    fn wrong_escapes_are_errors_not_panics() {
        let d = Delimiters::default();
        for raw in [
            "a\\F",
            "\\\\",
            "\\Q\\",
            "\\X4\\",
            "\\XZZ\\",
            "\\C2842\\",
            "\\é",
        ] {
            assert!(d.unescape(raw, Charset::Utf8).is_err(), "{raw}");
        }
        let d = Delimiters::from_header(b"MSH|^~\\|").unwrap();
        assert!(d.unescape("\\T\\", Charset::Utf8).is_err());
    }

    #[test]
    fn msh18_decides_the_character_set() {
        let latin = b"MSH|^~\\&|A|B|||2026||ORU^R01|M|P|2.6||||||8859/1\rPID|||1||M\xfcller\r";
        let m = Message::parse(latin).unwrap();
        assert_eq!(m.charset, Charset::Latin1);
        assert_eq!(m.value(m.first("PID").unwrap(), 5, 1, 0).unwrap(), "Müller");
        let utf8 = "MSH|^~\\&|A|B|||2026||ORU^R01|M|P|2.6||||||UNICODE UTF-8\rPID|||1||Müller\r";
        let m = Message::parse(utf8.as_bytes()).unwrap();
        assert_eq!(m.value(m.first("PID").unwrap(), 5, 1, 0).unwrap(), "Müller");
        // The same Latin-1 bytes declared as UTF-8, or not declared: refused, not guessed.
        let lying =
            b"MSH|^~\\&|A|B|||2026||ORU^R01|M|P|2.6||||||UNICODE UTF-8\rPID|||1||M\xfcller\r";
        assert!(matches!(
            Message::parse(lying),
            Err(ParseError::BadEncoding(_))
        ));
        let undeclared = b"MSH|^~\\&|A|B|||2026||ORU^R01|M|P|2.6\rPID|||1||M\xfcller\r";
        assert!(matches!(
            Message::parse(undeclared),
            Err(ParseError::BadEncoding(_))
        ));
        let other = b"MSH|^~\\&|A|B|||2026||ORU^R01|M|P|2.6||||||ISO IR87\r";
        assert!(matches!(
            Message::parse(other),
            Err(ParseError::UnsupportedCharset(_))
        ));
    }

    #[test]
    fn segments_end_with_cr_lf_or_crlf() {
        for sep in ["\r", "\n", "\r\n", "\n\r\n"] {
            let msg = format!(
                "MSH|^~\\&|A||||2026||ORU^R01|M|P|2.6{sep}PID|||1{sep}OBX|1|NM|1^X^MDC{sep}"
            );
            let m = Message::parse(msg.as_bytes()).unwrap();
            let ids: Vec<&str> = m.segments.iter().map(|s| s.id.as_str()).collect();
            assert_eq!(ids, ["MSH", "PID", "OBX"], "{sep:?}");
        }
    }

    #[test]
    fn not_hl7_is_an_error() {
        for bytes in [
            &b""[..],
            b"GET / HTTP/1.1\r\n",
            b"MSH",
            b"MSHa^~\\&|",
            b"MSH|^^\\&|",
            b"MSH||",
            b"PID|||1\r",
        ] {
            assert!(Message::parse(bytes).is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn a_batch_splits_into_its_messages() {
        let batch = "FHS|^~\\&|A\rBHS|^~\\&|A\rMSH|^~\\&|A||||2026||ORU^R01|M1|P|2.6\rOBX|1\rMSH|^~\\&|A||||2026||ORU^R01|M2|P|2.6\rOBX|1\rBTS|2\rFTS|1\r";
        assert!(is_batch(batch.as_bytes()));
        let parts = split_batch(batch.as_bytes());
        assert_eq!(parts.len(), 2);
        let ids: Vec<String> = parts
            .iter()
            .map(|p| {
                let m = Message::parse(p).unwrap();
                m.value(m.msh(), 10, 0, 0).unwrap()
            })
            .collect();
        assert_eq!(ids, ["M1", "M2"]);
        assert_eq!(split_batch(BASIC.as_bytes()).len(), 1);
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = Message::parse(&bytes);
            let mut with_header = b"MSH|^~\\&|".to_vec();
            with_header.extend_from_slice(&bytes);
            if let Ok(m) = Message::parse(&with_header) {
                for s in &m.segments {
                    for f in 0..s.len() + 2 {
                        let _ = m.value(s, f, 1, 1);
                        let _ = m.value(s, f, 2, 0);
                    }
                }
            }
            let _ = split_batch(&bytes);
        }
    }
}
