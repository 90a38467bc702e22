//! The crate's layout holds its rules: no module imports another in a circle (a module's parent
//! `mod.rs` counts as a module: a child that imports what its parent re-exports from a sibling
//! closes a circle too), and every module says in a `//!` what it owns.
//!
//! Reads `src/` as text: a path `crate::a::b`, `super::b`, `self::b` or a `use b::..` of a child
//! module is a reference to the longest module it names, or, when the item it names there is
//! only re-exported (`pub use child::Item`), to the module the item comes from. Test modules
//! are not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path ("node::net_loop"; "" for the crate root) to its source.
fn modules() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.insert(
                    module_name(&root, &path),
                    std::fs::read_to_string(&path).unwrap(),
                );
            }
        }
    }
    out
}

fn module_name(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts.join("::")
}

/// The source without its test module and comments.
fn code(src: &str) -> String {
    let src = match src.find("#[cfg(test)]\nmod tests") {
        Some(at) => &src[..at],
        None => src,
    };
    src.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The longest module `path` (split on `::`) names, seen from module `from`.
fn resolve(
    mods: &BTreeMap<String, String>,
    from: &str,
    path: &[&str],
    re: &Reexports,
) -> Option<String> {
    let mut base: Vec<&str> = if from.is_empty() {
        vec![]
    } else {
        from.split("::").collect()
    };
    let mut rest = path;
    match rest.first().copied() {
        Some("crate") => base.clear(),
        Some("self") => {}
        Some("super") => {
            while rest.first() == Some(&"super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        Some(child) if mods.contains_key(&join(&base, &[child])) => {
            return longest(mods, &base, rest, re);
        }
        _ => return None,
    }
    if rest.first().is_some_and(|p| *p == "crate" || *p == "self") {
        rest = &rest[1..];
    }
    longest(mods, &base, rest, re)
}

fn join(base: &[&str], more: &[&str]) -> String {
    base.iter()
        .chain(more)
        .copied()
        .collect::<Vec<_>>()
        .join("::")
}

fn longest(
    mods: &BTreeMap<String, String>,
    base: &[&str],
    rest: &[&str],
    re: &Reexports,
) -> Option<String> {
    let (i, module) = (0..=rest.len())
        .map(|i| (i, join(base, &rest[..i])))
        .rfind(|(_, m)| mods.contains_key(m))?;
    // An item the module only re-exports: follow it to where it is defined.
    let mut at = module;
    let mut hops = 0;
    while let Some(next) = rest.get(i).and_then(|item| re.get(&at)?.get(*item)) {
        if hops > 8 || *next == at {
            break;
        }
        at = next.clone();
        hops += 1;
    }
    Some(at)
}

/// Every path in `code`: `a::b::c`, and each item of a group `a::{b, c::d}` as `a::b`, `a::c::d`.
fn paths(code: &str) -> Vec<Vec<String>> {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if !is_ident(chars[i]) || (i > 0 && (is_ident(chars[i - 1]) || chars[i - 1] == ':')) {
            i += 1;
            continue;
        }
        let mut segs = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < chars.len() && is_ident(chars[j]) {
                j += 1;
            }
            segs.push(chars[start..j].iter().collect::<String>());
            if chars.get(j) == Some(&':') && chars.get(j + 1) == Some(&':') {
                j += 2;
                if chars.get(j) == Some(&'{') {
                    let end = j + chars[j..].iter().position(|c| *c == '}').unwrap_or(0);
                    let group: String = chars[j + 1..end].iter().collect();
                    for item in group.split(',') {
                        let item = item.trim().split(' ').next().unwrap_or("");
                        if !item.is_empty() && item != "self" {
                            let mut p = segs.clone();
                            p.extend(item.split("::").map(str::to_string));
                            out.push(p);
                        }
                    }
                    j = end;
                    break;
                }
                continue;
            }
            break;
        }
        if segs.len() > 1 {
            out.push(segs);
        }
        i = j.max(i + 1);
    }
    out
}

/// Module to (re-exported item name to the module it is defined in, one step).
type Reexports = BTreeMap<String, BTreeMap<String, String>>;

fn reexports(mods: &BTreeMap<String, String>) -> Reexports {
    let mut out = Reexports::new();
    for (name, src) in mods {
        let code = code(src);
        for stmt in code.split(';') {
            let stmt = stmt.trim();
            let Some(rest) = stmt
                .strip_prefix("pub use ")
                .or_else(|| stmt.strip_prefix("pub(crate) use "))
            else {
                continue;
            };
            for path in paths(rest) {
                let segs: Vec<&str> = path.iter().map(String::as_str).collect();
                if let Some(from) = resolve(mods, name, &segs, &Reexports::new()) {
                    let item = segs.last().unwrap().to_string();
                    out.entry(name.clone()).or_default().insert(item, from);
                }
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    let re = reexports(&mods);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, src) in &mods {
        for path in paths(&code(src)) {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            if let Some(to) = resolve(&mods, name, &path, &re).filter(|to| to != name) {
                edges.entry(name.clone()).or_default().insert(to);
            }
        }
    }
    edges
}

/// A circle through `start`, if there is one.
fn circle_from(edges: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in edges.get(&at).into_iter().flatten() {
            if next == start {
                return Some(path);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

#[test]
fn no_module_imports_another_in_a_circle() {
    let edges = graph();
    let circles: Vec<String> = edges
        .keys()
        .filter_map(|m| circle_from(&edges, m))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_checker_sees_a_circle_through_a_parent_and_a_group_import() {
    let mods: BTreeMap<String, String> = [("node", ""), ("node::a", ""), ("node::b", "")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let p = |s: &str| paths(s).into_iter().next().unwrap();
    let mut re = Reexports::new();
    re.entry("node".into())
        .or_default()
        .insert("Moved".into(), "node::b".into());
    let r = |from: &str, path: Vec<String>| {
        let segs: Vec<&str> = path.iter().map(String::as_str).collect();
        resolve(&mods, from, &segs, &re)
    };
    assert_eq!(
        r("node::a", p("use super::{Thing, b};")),
        Some("node".into())
    );
    assert_eq!(paths("use super::{Thing, b};").len(), 2);
    assert_eq!(r("node", p("pub use a::Thing;")), Some("node::a".into()));
    assert_eq!(
        r("node::a", p("crate::node::b::f()")),
        Some("node::b".into())
    );
    assert_eq!(r("node::a", p("std::sync::Arc")), None);
    assert_eq!(r("node::a", p("use super::Moved;")), Some("node::b".into()));
}

#[test]
fn every_module_says_what_it_owns() {
    let silent: Vec<String> = modules()
        .into_iter()
        .filter(|(_, src)| !src.trim_start().starts_with("//!"))
        .map(|(name, _)| name)
        .collect();
    assert!(silent.is_empty(), "modules without a //! doc: {silent:?}");
}
