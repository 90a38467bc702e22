//! Ignore rules of a publisher: `.treecastignore` at the root of the tree (gitignore syntax),
//! plus patterns given on the command line. Ignored paths are never scanned or published.

use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::error::TreeError;

/// The name of the ignore file at the root of a published tree.
pub const IGNORE_FILE: &str = ".treecastignore";

/// Compiled ignore rules for one tree.
#[derive(Debug, Clone)]
pub struct IgnoreRules {
    rules: Gitignore,
}

impl IgnoreRules {
    /// No rules: everything is published.
    pub fn none() -> Self {
        IgnoreRules {
            rules: Gitignore::empty(),
        }
    }

    /// The rules of `root/.treecastignore` (if present) followed by `extra` patterns, which
    /// take precedence as later lines of the same file would.
    pub fn load(root: &Path, extra: &[String]) -> Result<Self, TreeError> {
        let mut b = GitignoreBuilder::new(root);
        let file = root.join(IGNORE_FILE);
        if file.is_file() {
            if let Some(e) = b.add(&file) {
                return Err(bad_rules(&file.display().to_string(), e));
            }
        }
        for pattern in extra {
            b.add_line(None, pattern)
                .map_err(|e| bad_rules(&format!("--ignore {pattern:?}"), e))?;
        }
        let rules = b
            .build()
            .map_err(|e| bad_rules(&file.display().to_string(), e))?;
        Ok(IgnoreRules { rules })
    }

    /// True if `rel` (relative to the root) or one of its parent directories is ignored.
    pub fn is_ignored(&self, rel: &Path, is_dir: bool) -> bool {
        self.rules
            .matched_path_or_any_parents(rel, is_dir)
            .is_ignore()
    }
}

fn bad_rules(source: &str, e: ignore::Error) -> TreeError {
    TreeError::BadIgnore(format!("{source}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_rules_and_extra_patterns_combine() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(IGNORE_FILE),
            "*.tmp\nbuild/\n!keep.tmp\n# comment\n",
        )
        .unwrap();
        let rules = IgnoreRules::load(dir.path(), &["secret.txt".into()]).unwrap();
        let ignored = |p: &str, d: bool| rules.is_ignored(Path::new(p), d);
        assert!(ignored("a.tmp", false));
        assert!(ignored("sub/b.tmp", false));
        assert!(!ignored("keep.tmp", false), "negation");
        assert!(ignored("build", true));
        assert!(ignored("build/out.bin", false), "below an ignored dir");
        assert!(!ignored("build", false), "a file named build is not a dir");
        assert!(ignored("docs/secret.txt", false), "--ignore pattern");
        assert!(!ignored("docs/readme.md", false));
        assert!(!IgnoreRules::none().is_ignored(Path::new("a.tmp"), false));
    }

    #[test]
    fn a_bad_pattern_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = IgnoreRules::load(dir.path(), &["x[z-a]".into()]).unwrap_err();
        assert!(err.to_string().contains("--ignore \"x[z-a]\""), "{err}");
        std::fs::write(dir.path().join(IGNORE_FILE), "ok.tmp\nbad[z-a]\n").unwrap();
        let err = IgnoreRules::load(dir.path(), &[]).unwrap_err();
        assert!(err.to_string().contains(IGNORE_FILE), "{err}");
    }
}
