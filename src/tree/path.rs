//! `RelPath`: a relative, normalised, bounded path that is safe to join onto a mirror root.

use std::fmt;
use std::path::{Path, PathBuf};

use super::error::TreeError;

/// Longest path in a manifest, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest single path component, in bytes.
pub const MAX_COMPONENT_LEN: usize = 255;
/// Deepest directory nesting in a manifest.
pub const MAX_PATH_DEPTH: usize = 64;
/// Name of the state directory inside a published or mirrored tree; never published.
pub const STATE_DIR: &str = ".treecast";

/// A validated relative path with `/` separators: no empty, `.` or `..` components, no leading
/// `/`, no NUL or backslash, no state directory component at any depth (any case), bounded
/// length and depth.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

impl RelPath {
    /// Validate `s`.
    pub fn new(s: &str) -> Result<Self, TreeError> {
        let bad = |reason| TreeError::BadPath {
            path: s.chars().take(200).collect(),
            reason,
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.len() > MAX_PATH_LEN {
            return Err(bad("too long"));
        }
        if s.starts_with('/') {
            return Err(bad("absolute"));
        }
        if s.contains('\0') || s.contains('\\') {
            return Err(bad("contains NUL or backslash"));
        }
        let mut depth = 0;
        for part in s.split('/') {
            depth += 1;
            match part {
                "" => return Err(bad("empty component")),
                "." | ".." => return Err(bad("dot component")),
                p if p.len() > MAX_COMPONENT_LEN => return Err(bad("component too long")),
                p if is_state_dir(p) => return Err(bad("names a state directory")),
                _ => {}
            }
        }
        if depth > MAX_PATH_DEPTH {
            return Err(bad("too deep"));
        }
        Ok(RelPath(s.to_owned()))
    }

    /// Build from a path relative to a scanned root.
    pub fn from_path(p: &Path) -> Result<Self, TreeError> {
        let s = p.to_str().ok_or(TreeError::BadPath {
            path: p.display().to_string(),
            reason: "not UTF-8",
        })?;
        Self::new(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `root` joined with this path. Safe because the path is validated.
    pub fn under(&self, root: &Path) -> PathBuf {
        root.join(&self.0)
    }

    /// The directory holding this path, `""` at the top.
    pub fn parent_str(&self) -> &str {
        self.0.rsplit_once('/').map_or("", |(d, _)| d)
    }

    /// Every proper ancestor, outermost first (`a/b/c` gives `a`, `a/b`).
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        self.0.match_indices('/').map(move |(i, _)| &self.0[..i])
    }
}

/// True if the path component `name` is a state directory's name: `.treecast` in any case, as
/// a case-insensitive file system sees it. A tree holding another published tree or a mirror
/// has one below its root, with that node's keys and database in it: never scanned or sent.
pub fn is_state_dir(name: &str) -> bool {
    name.eq_ignore_ascii_case(STATE_DIR)
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_rejected() {
        for p in [
            "",
            "../x",
            "/etc/x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            ".",
            "..",
            "a\\b",
            "a\0b",
            ".treecast",
            ".treecast/db",
            ".TREECAST/db",
            "inner/.treecast",
            "inner/.treecast/publisher.key",
            "a/b/.TreeCast/node.key",
        ] {
            assert!(RelPath::new(p).is_err(), "{p:?} accepted");
        }
        assert!(RelPath::new("a/".repeat(65).trim_end_matches('/')).is_err());
        assert!(RelPath::new(&"x".repeat(256)).is_err());
    }

    #[test]
    fn normal_paths_are_accepted() {
        for p in [
            "a",
            "a/b c/d",
            "ünïcödé/名前.txt",
            ".hidden",
            "a..b",
            ".treecastx",
            "a/.treecast.bak/x",
            "a/x.treecast",
        ] {
            assert!(RelPath::new(p).is_ok(), "{p:?} rejected");
        }
        let p = RelPath::new("a/b/c").unwrap();
        assert_eq!(p.ancestors().collect::<Vec<_>>(), vec!["a", "a/b"]);
    }
}
