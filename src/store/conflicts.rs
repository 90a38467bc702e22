//! The conflicts directory, `.treecast/conflicts/`: where local changes to a mirror (a user's
//! edit or addition, anything in the way of a revision) are moved, never deleted.
//!
//! Owns the names things get there: one per path and millisecond, at most NAME_MAX bytes, and
//! never one already taken (a rename there must not replace anything). Does not decide what is
//! a local change.

use std::path::{Path, PathBuf};

use super::error::{io_err, StoreError};

/// Longest file name Linux file systems take (NAME_MAX), in bytes.
const NAME_MAX: usize = 255;
/// Longest name the counter suffix `-<n>` of a retry takes: a `u32`.
const SUFFIX_MAX: usize = 11;
/// Hex digits of the path's hash in a name that had to be cut short.
const HASH_HEX: usize = 16;
/// Names to try, with counters, before giving up on moving a path aside.
const MAX_TRIES: u32 = 10_000;

/// Move `root/rel` to `conflicts/`, named by the time (ms since the epoch) and the path (see
/// [`conflict_name`]), so that nothing a user put in the mirror is ever deleted. Returns where
/// it went.
pub fn move_to_conflicts(root: &Path, rel: &str, conflicts: &Path) -> Result<PathBuf, StoreError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    move_at(root, rel, conflicts, stamp)
}

/// [`move_to_conflicts`] at `stamp`: the first name not taken, by a counter.
fn move_at(root: &Path, rel: &str, conflicts: &Path, stamp: u128) -> Result<PathBuf, StoreError> {
    let path = root.join(rel);
    std::fs::create_dir_all(conflicts).map_err(io_err(conflicts))?;
    for attempt in 0..MAX_TRIES {
        let dest = conflicts.join(conflict_name(stamp, rel, attempt));
        if rename_no_replace(&path, &dest).map_err(io_err(&path))? {
            tracing::warn!(path = rel, moved_to = %dest.display(), "mirror is read-only: moved a local change aside");
            return Ok(dest);
        }
    }
    let taken = std::io::Error::from(std::io::ErrorKind::AlreadyExists);
    Err(io_err(&conflicts.join(conflict_name(stamp, rel, 0)))(taken))
}

/// The name of `rel` moved aside at `stamp`: `<stamp>-<rel, % as %25 and / as %2F>`, so two
/// paths never share one, then `-<attempt>` unless `attempt` is 0. A name longer than NAME_MAX
/// keeps the stamp, a hash of `rel` (so that long paths ending alike stay apart) and as much of
/// the path's end as fits: `<stamp>-<hash>-…<end>`.
fn conflict_name(stamp: u128, rel: &str, attempt: u32) -> String {
    let escaped = rel.replace('%', "%25").replace('/', "%2F");
    let suffix = match attempt {
        0 => String::new(),
        n => format!("-{n}"),
    };
    let whole = format!("{stamp}-{escaped}{suffix}");
    if whole.len() <= NAME_MAX {
        return whole;
    }
    let hash = blake3::hash(rel.as_bytes()).to_hex();
    let head = format!("{stamp}-{}-…", &hash[..HASH_HEX]);
    let room = NAME_MAX - head.len() - SUFFIX_MAX;
    format!("{head}{}{suffix}", tail(&escaped, room))
}

/// At most the last `room` bytes of an escaped path, starting on a character and not inside a
/// `%XX` escape.
fn tail(escaped: &str, room: usize) -> &str {
    let bytes = escaped.as_bytes();
    let inside_escape = |at: usize| bytes[at.saturating_sub(2)..at].contains(&b'%');
    let mut start = escaped.len().saturating_sub(room);
    while start < escaped.len() && (!escaped.is_char_boundary(start) || inside_escape(start)) {
        start += 1;
    }
    &escaped[start..]
}

/// Rename `from` to `to` unless something is at `to`. Returns whether it was renamed.
fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<bool> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    use rustix::io::Errno;
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => Ok(false),
        // A file system without RENAME_NOREPLACE: look first. The conflicts directory is the
        // node's own (in the owner-only state directory), so nothing else races to fill `to`.
        Err(Errno::INVAL | Errno::NOSYS) => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Ok(false);
            }
            std::fs::rename(from, to).map(|()| true)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: u128 = 1_700_000_000_000;

    fn put(root: &Path, rel: &str, data: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    fn name_of(p: &Path) -> String {
        p.file_name().unwrap().to_str().unwrap().to_owned()
    }

    #[test]
    fn a_deep_path_is_moved_aside_under_a_name_within_name_max() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, conflicts) = (tmp.path().join("m"), tmp.path().join("c"));
        // Two paths of 600-odd bytes (multi-byte characters) that end alike.
        let deep =
            |first: &str| format!("{first}/{}/{}/file.txt", "é".repeat(100), "ü".repeat(100));
        let (a, b) = (deep(&"a".repeat(200)), deep(&"b".repeat(200)));
        put(&root, &a, b"one");
        put(&root, &b, b"two");
        let to_a = move_at(&root, &a, &conflicts, STAMP).unwrap();
        let to_b = move_at(&root, &b, &conflicts, STAMP).unwrap();
        assert_ne!(to_a, to_b);
        for (to, data) in [(&to_a, b"one"), (&to_b, b"two")] {
            assert_eq!(std::fs::read(to).unwrap(), data);
            assert!(name_of(to).len() <= 255, "{}", name_of(to));
            assert!(name_of(to).starts_with(&format!("{STAMP}-")));
            assert!(name_of(to).ends_with("file.txt"), "the path's end is kept");
        }
        assert!(!root.join(&a).exists() && !root.join(&b).exists());
    }

    #[test]
    fn a_name_cut_short_starts_on_a_character_outside_an_escape() {
        for pad in 0..6 {
            let rel = format!("{}{}", "a".repeat(pad), "é/".repeat(150));
            for attempt in [0, 7, u32::MAX] {
                let name = conflict_name(STAMP, &rel, attempt);
                assert!(name.len() <= 255, "{} bytes", name.len());
                let (_, end) = name.split_once('…').expect("cut short");
                assert!(end.starts_with('é') || end.starts_with("%2F"), "{end}");
                assert!(attempt == 0 || end.ends_with(&format!("-{attempt}")));
            }
        }
    }

    #[test]
    fn paths_that_escaped_alike_both_survive_the_same_millisecond() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, conflicts) = (tmp.path().join("m"), tmp.path().join("c"));
        put(&root, "a%2Fb", b"flat");
        put(&root, "a/b", b"nested");
        let flat = move_at(&root, "a%2Fb", &conflicts, STAMP).unwrap();
        let nested = move_at(&root, "a/b", &conflicts, STAMP).unwrap();
        assert_ne!(flat, nested);
        assert_eq!(std::fs::read(&flat).unwrap(), b"flat");
        assert_eq!(std::fs::read(&nested).unwrap(), b"nested");
        assert_eq!(name_of(&nested), format!("{STAMP}-a%2Fb"));
    }

    #[test]
    fn a_taken_name_gets_a_counter_never_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, conflicts) = (tmp.path().join("m"), tmp.path().join("c"));
        for (i, data) in [b"first", b"secnd", b"third"].iter().enumerate() {
            put(&root, "x", *data);
            let to = move_at(&root, "x", &conflicts, STAMP).unwrap();
            let suffix = if i == 0 {
                String::new()
            } else {
                format!("-{i}")
            };
            assert_eq!(name_of(&to), format!("{STAMP}-x{suffix}"));
            assert_eq!(std::fs::read(&to).unwrap(), *data);
        }
    }
}
