//! The resources the upstream stored, indexed by `TYPE/ID` and by identifier, and the
//! token and query syntax its lookups (search, `ifNoneExist`) are written in.

use std::collections::HashMap;

use serde_json::Value;

/// (resource type, identifier system, identifier value)
type IdentKey = (String, String, String);

/// Every stored resource, with the indexes the lookups need.
#[derive(Default)]
pub(super) struct Store {
    /// Last id handed out (ids are decimal strings, shared by all types).
    pub(super) last_id: u64,
    /// Resources per type, in creation order.
    pub(super) resources: HashMap<String, Vec<Value>>,
    /// `TYPE/ID` → index into `resources[TYPE]`.
    pub(super) by_ref: HashMap<String, usize>,
    /// Identifier → ids carrying it (more than one = a duplicate).
    pub(super) by_identifier: HashMap<IdentKey, Vec<String>>,
}

impl Store {
    /// Ids of the resources of `rtype` carrying identifier `value`, in `system` (any system
    /// when `None`).
    pub(super) fn find(&self, rtype: &str, system: Option<&str>, value: &str) -> Vec<String> {
        match system {
            Some(s) => self
                .by_identifier
                .get(&(rtype.to_string(), s.to_string(), value.to_string()))
                .cloned()
                .unwrap_or_default(),
            None => self
                .by_identifier
                .iter()
                .filter(|((t, _, v), _)| t == rtype && v == value)
                .flat_map(|(_, ids)| ids.iter().cloned())
                .collect(),
        }
    }

    /// Stores `resource` as `rtype/id` and indexes its identifiers.
    pub(super) fn insert(&mut self, rtype: &str, id: &str, resource: Value) {
        for (system, value) in identifiers(&resource) {
            self.by_identifier
                .entry((rtype.to_string(), system, value))
                .or_default()
                .push(id.to_string());
        }
        let list = self.resources.entry(rtype.to_string()).or_default();
        self.by_ref.insert(format!("{rtype}/{id}"), list.len());
        list.push(resource);
    }

    /// The resource `rtype/id`.
    pub(super) fn get(&self, rtype: &str, id: &str) -> Option<&Value> {
        let i = *self.by_ref.get(&format!("{rtype}/{id}"))?;
        self.resources.get(rtype)?.get(i)
    }
}

/// `(system, value)` of every `identifier` element with a value.
pub(super) fn identifiers(resource: &Value) -> Vec<(String, String)> {
    resource
        .get("identifier")
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .filter_map(|i| {
                    let value = i.get("value")?.as_str()?.to_string();
                    let system = i
                        .get("system")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    Some((system, value))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `SYSTEM|VALUE` → (Some(SYSTEM), VALUE); `VALUE` → (None, VALUE) (any system);
/// `|VALUE` → (Some(""), VALUE) (no system). FHIR search escapes are honoured: the first `|`
/// not preceded by `\\` separates, and `\\x` stands for `x` in either part.
pub(super) fn split_token(token: &str) -> (Option<String>, String) {
    let mut parts: Vec<String> = vec![String::new()];
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    parts.last_mut().unwrap_or(&mut String::new()).push(next);
                }
            }
            '|' if parts.len() == 1 => parts.push(String::new()),
            c => {
                if let Some(p) = parts.last_mut() {
                    p.push(c)
                }
            }
        }
    }
    let value = parts.pop().unwrap_or_default();
    (parts.pop(), value)
}

/// Splits a query string into decoded `(name, value)` pairs, form-style (`+` is a space).
pub(super) fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_treats_plus_as_space_and_decodes_escapes() {
        assert_eq!(percent_decode("a%7Cb"), "a|b");
        assert_eq!(percent_decode("12%3A00%2B01%3A00"), "12:00+01:00");
        assert_eq!(percent_decode("12:00+01:00"), "12:00 01:00");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn tokens_split_on_the_first_bar() {
        let owned = |s: Option<&str>, v: &str| (s.map(str::to_owned), v.to_owned());
        assert_eq!(split_token("http://x|v|w"), owned(Some("http://x"), "v|w"));
        assert_eq!(split_token("v"), owned(None, "v"));
        assert_eq!(split_token("|v"), owned(Some(""), "v"));
        assert_eq!(split_token(r"s\|t|a\,b\\c"), owned(Some("s|t"), r"a,b\c"));
    }
}
