//! The dependency list of ARCHITECTURE.md is the code's: every `use crate::…` and every
//! `crate::…` path (and `super::` path that climbs to the crate root) in a top-level module of
//! `gateway/src` must be an arrow the list allows, and every arrow the list allows must be
//! used. The list is read from ARCHITECTURE.md itself, so the two cannot drift.
//!
//! Test code (`tests.rs` files, and the `#[cfg(test)] mod tests` at the end of a file) is
//! not held to the list: tests may borrow fixtures from anywhere.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use support::rust_files;

/// The heading of the section of ARCHITECTURE.md that holds the list.
const SECTION: &str = "### Dependency list";

/// What one top-level module may import: whole modules (`model`) or one submodule of
/// another (`profile::catalog`); `None` for a wiring module that may import anything.
type Allowed = Option<BTreeSet<String>>;

/// One import of another top-level module, found in the code.
#[derive(Debug)]
struct Import {
    /// `gateway/src/...` and line.
    at: String,
    /// The top-level module doing the import.
    from: String,
    /// The path imported, from the crate root: `profile::catalog::by_mdc`.
    path: Vec<String>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The list: `- \`from\` → \`to\`, \`to::sub\`, …`, `- \`from\` → nothing` or
/// `- \`from\` → anything`, one line per top-level module.
fn parse_list(doc: &str) -> Result<BTreeMap<String, Allowed>, String> {
    let section = doc
        .split_once(SECTION)
        .ok_or_else(|| format!("ARCHITECTURE.md has no {SECTION:?} section"))?
        .1;
    let section = section.split("\n#").next().unwrap_or(section);
    let mut list = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("- `")) {
        let (from, to) = line
            .split_once('→')
            .ok_or_else(|| format!("no arrow in list line {line:?}"))?;
        let from = from
            .trim()
            .trim_start_matches("- ")
            .trim_matches('`')
            .to_owned();
        // What follows the arrow, up to a `: ` that starts a comment.
        let to = to.split(": ").next().unwrap_or("").trim();
        let allowed = match to {
            "anything" => None,
            "nothing" => Some(BTreeSet::new()),
            _ => Some(
                to.split(',')
                    .map(|t| t.trim().trim_matches('`').to_owned())
                    .collect(),
            ),
        };
        if list.insert(from.clone(), allowed).is_some() {
            return Err(format!("`{from}` is listed twice"));
        }
    }
    if list.is_empty() {
        return Err(format!("no list lines under {SECTION:?}"));
    }
    Ok(list)
}

/// The top-level modules of `gateway/src` (not `lib.rs` and `main.rs`, the crate roots).
fn top_level_modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            if p.is_dir() {
                p.join("mod.rs")
                    .exists()
                    .then(|| p.file_name().unwrap().to_string_lossy().into_owned())
            } else if p.extension().is_some_and(|e| e == "rs") {
                let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
                (stem != "lib" && stem != "main").then_some(stem)
            } else {
                None
            }
        })
        .collect()
}

/// The module path of a file under `src`: `profile/ble/mod.rs` → `[profile, ble]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    if last != "mod.rs" {
        parts.push(last.trim_end_matches(".rs").to_owned());
    }
    parts
}

/// The code of a file without comments and without its test module: a `#[cfg(test)] mod
/// … {` runs to the end of the file (clippy's `items_after_test_module` keeps it last), and
/// `tests.rs` files are skipped by the caller. Anything else under `#[cfg(test)]` is checked
/// like production code.
fn production_code(text: &str) -> String {
    let mut code = String::with_capacity(text.len());
    let mut lines = text.lines().peekable();
    let mut in_block_comment = false;
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            let next = lines.peek().map(|l| l.trim()).unwrap_or("");
            if next.starts_with("mod ") && next.ends_with('{') {
                break;
            }
        }
        let mut rest = line;
        let mut kept = String::new();
        loop {
            if in_block_comment {
                match rest.find("*/") {
                    Some(i) => {
                        in_block_comment = false;
                        rest = &rest[i + 2..];
                    }
                    None => break,
                }
            } else {
                let line_comment = rest.find("//");
                let block_comment = rest.find("/*");
                match (line_comment, block_comment) {
                    (Some(l), b) if b.is_none_or(|b| l < b) => {
                        kept.push_str(&rest[..l]);
                        break;
                    }
                    (_, Some(b)) => {
                        kept.push_str(&rest[..b]);
                        in_block_comment = true;
                        rest = &rest[b + 2..];
                    }
                    _ => {
                        kept.push_str(rest);
                        break;
                    }
                }
            }
        }
        code.push_str(&kept);
        code.push('\n');
    }
    code
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The paths of a use tree starting at `text` (just after `crate::` or `super::`): `a::b`,
/// `{a, b::{c, d}}`, …, each as its segments. Stops at the first character that cannot
/// continue a path.
fn use_tree(text: &str) -> (Vec<Vec<String>>, usize) {
    let bytes: Vec<char> = text.chars().collect();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < bytes.len() && bytes[*i].is_whitespace() {
            *i += 1;
        }
    };
    fn tree(bytes: &[char], i: &mut usize, skip_ws: &dyn Fn(&mut usize)) -> Vec<Vec<String>> {
        skip_ws(i);
        if *i < bytes.len() && bytes[*i] == '{' {
            *i += 1;
            let mut all = Vec::new();
            loop {
                skip_ws(i);
                if *i >= bytes.len() {
                    return all;
                }
                if bytes[*i] == '}' {
                    *i += 1;
                    return all;
                }
                if bytes[*i] == ',' {
                    *i += 1;
                    continue;
                }
                let before = *i;
                all.extend(tree(bytes, i, skip_ws));
                if *i == before {
                    // Not a path (`*`, `self`): skip a character.
                    *i += 1;
                }
            }
        }
        let start = *i;
        while *i < bytes.len() && is_ident(bytes[*i]) {
            *i += 1;
        }
        if *i == start {
            return Vec::new();
        }
        let ident: String = bytes[start..*i].iter().collect();
        if bytes.get(*i) == Some(&':') && bytes.get(*i + 1) == Some(&':') {
            *i += 2;
            let rest = tree(bytes, i, skip_ws);
            if rest.is_empty() {
                return vec![vec![ident]];
            }
            rest.into_iter()
                .map(|mut r| {
                    r.insert(0, ident.clone());
                    r
                })
                .collect()
        } else {
            vec![vec![ident]]
        }
    }
    let paths = tree(&bytes, &mut i, &skip_ws);
    let consumed: usize = bytes[..i].iter().map(|c| c.len_utf8()).sum();
    (paths, consumed)
}

/// Every path in `code` that leaves the module it is written in for the crate root:
/// `crate::x…`, and `super::…` chains that climb out of `module`'s top-level module.
fn crate_paths(code: &str, module: &[String]) -> Vec<(usize, Vec<String>)> {
    let mut found = Vec::new();
    let mut offset = 0;
    while offset < code.len() {
        let rest = &code[offset..];
        let Some(i) = rest.find(['c', 's']) else {
            break;
        };
        let at = offset + i;
        let before = code[..at].chars().next_back();
        let starts_word = before.is_none_or(|c| !is_ident(c) && c != ':' && c != '$');
        let text = &code[at..];
        let line = code[..at].matches('\n').count() + 1;
        if starts_word && text.starts_with("crate::") {
            let (paths, used) = use_tree(&text[7..]);
            found.extend(paths.into_iter().map(|p| (line, p)));
            offset = at + 7 + used.max(1);
        } else if starts_word && text.starts_with("super::") {
            // `super::super::x` from `a/b/c.rs` ([a, b, c]) is `a::x`: climbing out of the
            // top-level module reaches the crate root.
            let mut depth = 0;
            let mut t = text;
            while let Some(r) = t.strip_prefix("super::") {
                depth += 1;
                t = r;
            }
            let (paths, used) = use_tree(t);
            if depth >= module.len() {
                found.extend(paths.into_iter().map(|p| (line, p)));
            }
            offset = at + (text.len() - t.len()) + used.max(1);
        } else {
            offset = at + 1;
        }
    }
    found
}

fn imports(src: &Path, modules: &BTreeSet<String>) -> Vec<Import> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut all = Vec::new();
    for file in files {
        let module = module_path(src, &file);
        let Some(top) = module.first().cloned() else {
            continue; // lib.rs
        };
        if top == "main" || file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let name = format!("gateway/src/{}", file.strip_prefix(src).unwrap().display());
        let text = std::fs::read_to_string(&file).unwrap();
        let code = production_code(&text);
        for (line, mut path) in crate_paths(&code, &module) {
            // An item of lib.rs itself (`crate::RunError`) is an import of `lib`.
            if !modules.contains(&path[0]) {
                path.insert(0, "lib".to_owned());
            }
            if path[0] != top {
                all.push(Import {
                    at: format!("{name}:{line}"),
                    from: top.clone(),
                    path,
                });
            }
        }
    }
    all
}

/// Whether `allowed` lets `path` through: `model` allows `model::…`, `profile::catalog`
/// allows `profile::catalog::…`.
fn allows<'a>(allowed: &'a BTreeSet<String>, path: &[String]) -> Option<&'a String> {
    allowed.iter().find(|a| {
        let parts: Vec<&str> = a.split("::").collect();
        parts.len() <= path.len() && parts.iter().zip(path).all(|(a, p)| a == p)
    })
}

/// The problems: imports the list does not allow, modules missing from it or unknown to it,
/// and arrows it allows that nothing uses.
fn check(
    list: &BTreeMap<String, Allowed>,
    modules: &BTreeSet<String>,
    imports: &[Import],
) -> Vec<String> {
    let mut problems = Vec::new();
    for m in modules {
        if !list.contains_key(m) {
            problems.push(format!(
                "module `{m}` is not in ARCHITECTURE.md's dependency list"
            ));
        }
    }
    for (m, allowed) in list {
        if !modules.contains(m) {
            problems.push(format!(
                "ARCHITECTURE.md lists `{m}`, which is not a module of gateway/src"
            ));
        }
        for a in allowed.iter().flatten() {
            let target = a.split("::").next().unwrap_or(a);
            if !modules.contains(target) {
                problems.push(format!(
                    "ARCHITECTURE.md lets `{m}` import `{a}`, which is not a module of gateway/src"
                ));
            }
        }
    }
    let mut used: BTreeSet<(&str, &str)> = BTreeSet::new();
    for import in imports {
        let Some(allowed) = list.get(&import.from) else {
            continue;
        };
        let Some(allowed) = allowed else {
            continue; // a wiring module
        };
        match allows(allowed, &import.path) {
            Some(a) => {
                used.insert((&import.from, a));
            }
            None => problems.push(format!(
                "{}: `{}` imports `{}`: {} → {} is not in ARCHITECTURE.md's dependency list",
                import.at,
                import.from,
                import.path.join("::"),
                import.from,
                import.path[0],
            )),
        }
    }
    for (m, allowed) in list {
        for a in allowed.iter().flatten() {
            if !used.contains(&(m.as_str(), a.as_str())) {
                problems.push(format!(
                    "ARCHITECTURE.md lets `{m}` import `{a}`, but nothing in it does: remove the arrow"
                ));
            }
        }
    }
    problems
}

#[test]
fn every_import_between_top_level_modules_is_in_the_architecture_list() {
    let root = root();
    let src = root.join("src");
    let doc = std::fs::read_to_string(root.join("../ARCHITECTURE.md")).unwrap();
    let list = parse_list(&doc).unwrap();
    let modules = top_level_modules(&src);
    let imports = imports(&src, &modules);
    let problems = check(&list, &modules, &imports);
    assert!(
        problems.is_empty(),
        "{} problem(s) with the dependency list:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The checker itself: a list, a forbidden import, an unused arrow, every form of path.
#[test]
fn the_checker_finds_forbidden_imports_in_every_form_of_path() {
    let doc = "## Code\n### Dependency list\n\n- `model` → nothing\n- `fhir` → `model`, `profile::catalog`: mapping\n- `profile` → `model`\n- `topology` → anything\n\n## Next\n- `x` → `y`\n";
    let list = parse_list(doc).unwrap();
    assert_eq!(list.len(), 4, "{list:?}");
    assert_eq!(list["topology"], None);
    assert_eq!(list["model"], Some(BTreeSet::new()));

    let code = production_code(
        "use crate::model::Reading; // crate::ops in a comment\nuse crate::{profile::{catalog, canonical}, RunError};\nfn f() { crate::ops::x(); super::super::buffer::y(); super::z(); }\n/* crate::tls */\n#[cfg(test)]\nmod tests {\n    use crate::uplink;\n}\n",
    );
    let paths: Vec<String> = crate_paths(&code, &["fhir".into(), "sub".into()])
        .into_iter()
        .map(|(line, p)| format!("{line}:{}", p.join("::")))
        .collect();
    assert_eq!(
        paths,
        [
            "1:model::Reading",
            "2:profile::catalog",
            "2:profile::canonical",
            "2:RunError",
            "3:ops::x",
            "3:buffer::y",
        ]
    );
    assert!(production_code("#[cfg(test)]\nfn f() { crate::ops::x() }\n").contains("crate::ops"));

    let modules: BTreeSet<String> = ["model", "fhir", "profile", "topology", "ops", "buffer"]
        .map(String::from)
        .into();
    let import = |from: &str, path: &str| Import {
        at: "t.rs:1".into(),
        from: from.into(),
        path: path.split("::").map(String::from).collect(),
    };
    let problems = check(
        &list,
        &modules,
        &[
            import("fhir", "model::Reading"),
            import("fhir", "profile::canonical::status_name"),
            import("topology", "buffer::Store"),
        ],
    );
    assert_eq!(
        problems,
        [
            "module `buffer` is not in ARCHITECTURE.md's dependency list",
            "module `ops` is not in ARCHITECTURE.md's dependency list",
            "t.rs:1: `fhir` imports `profile::canonical::status_name`: fhir → profile is not in ARCHITECTURE.md's dependency list",
            "ARCHITECTURE.md lets `fhir` import `profile::catalog`, but nothing in it does: remove the arrow",
            "ARCHITECTURE.md lets `profile` import `model`, but nothing in it does: remove the arrow",
        ]
    );
}
