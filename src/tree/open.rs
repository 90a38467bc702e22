//! Opening files of a tree without following links, and telling whether an open file is the
//! one the index describes.
//!
//! A local user who can write into a published tree can swap a file, or a directory on its
//! path, for a symlink at any moment. Nothing here follows one: a file is opened beneath the
//! tree's root with no symlink anywhere on the way (`openat2` with `RESOLVE_BENEATH` and
//! `RESOLVE_NO_SYMLINKS`, or one `openat(O_NOFOLLOW)` per component where the kernel lacks
//! `openat2`), never blocks on a FIFO, and must be a regular file.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{openat, openat2, Mode, OFlags, ResolveFlags, CWD};
use rustix::io::Errno;

/// Who a file on disk is: a file replaced, swapped for a link, or written since it was indexed
/// has another identity. A `dev` of 0 means "not known" (indexed before it was recorded) and
/// matches any device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileId {
    /// The identity `meta` shows.
    pub fn of(meta: &Metadata) -> Self {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: mtime_ns(meta),
        }
    }

    /// True if `meta` is this file, unchanged.
    pub fn matches(&self, meta: &Metadata) -> bool {
        let now = FileId::of(meta);
        (self.dev == 0 || self.dev == now.dev)
            && (self.ino, self.size, self.mtime_ns) == (now.ino, now.size, now.mtime_ns)
    }
}

/// Nanoseconds since the epoch of `meta`'s mtime.
pub fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128
}

/// Flags of every open here: read only, never following a final symlink, never waiting for a
/// FIFO's writer.
fn read_flags() -> OFlags {
    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC
}

/// Open `name`, an entry of the directory `dir`, without following it if it is a symlink
/// (`ELOOP` then). Directories open too: the caller looks at what it got.
pub fn open_entry(dir: &File, name: &std::ffi::OsStr) -> io::Result<File> {
    Ok(File::from(openat(dir, name, read_flags(), Mode::empty())?))
}

/// Open the regular file `rel` (relative, no `..`) below the directory `root`, following no
/// symlink on the way. Returns the file and its metadata; anything but a regular file is an
/// `InvalidInput` error.
pub fn open_beneath(root: &File, rel: &Path) -> io::Result<(File, Metadata)> {
    let file = match openat2(root, rel, read_flags(), Mode::empty(), BENEATH) {
        Ok(fd) => File::from(fd),
        // No openat2 (before Linux 5.6, or filtered by seccomp): walk it one component at a time.
        Err(Errno::NOSYS | Errno::PERM) => open_by_components(root, rel)?,
        Err(e) => return Err(e.into()),
    };
    regular(file)
}

/// Like [`open_beneath`], but only if the kernel can resolve the path from its caches alone
/// (`RESOLVE_CACHED`, Linux 5.12): `Ok(None)` says the open would have to wait for the disk
/// (or the kernel cannot tell), so call [`open_beneath`] on a blocking thread instead.
pub fn open_beneath_cached(root: &File, rel: &Path) -> io::Result<Option<(File, Metadata)>> {
    let how = BENEATH | ResolveFlags::CACHED;
    match openat2(root, rel, read_flags(), Mode::empty(), how) {
        Ok(fd) => regular(File::from(fd)).map(Some),
        Err(Errno::AGAIN | Errno::INVAL | Errno::NOSYS | Errno::PERM) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Open `path` for reading, not following a link at its end, only if the kernel can resolve it
/// from its caches alone; `Ok(None)` as for [`open_beneath_cached`].
pub fn open_cached(path: &Path) -> io::Result<Option<File>> {
    match openat2(CWD, path, read_flags(), Mode::empty(), ResolveFlags::CACHED) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(Errno::AGAIN | Errno::INVAL | Errno::NOSYS | Errno::PERM) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// `file` and its metadata if it is a regular file; else an `InvalidInput` error.
fn regular(file: File) -> io::Result<(File, Metadata)> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((file, meta))
}

fn open_by_components(root: &File, rel: &Path) -> io::Result<File> {
    let mut parts = rel.components().peekable();
    let mut dir: Option<File> = None;
    while let Some(part) = parts.next() {
        let std::path::Component::Normal(name) = part else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a plain relative path",
            ));
        };
        let at = dir.as_ref().unwrap_or(root);
        let flags = match parts.peek() {
            Some(_) => read_flags() | OFlags::DIRECTORY,
            None => read_flags(),
        };
        dir = Some(File::from(openat(at, name, flags, Mode::empty())?));
    }
    dir.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty path"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_anywhere_on_the_path_are_never_followed() {
        let tree = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        std::fs::create_dir(tree.path().join("d")).unwrap();
        std::fs::write(tree.path().join("d/f"), b"mine").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), tree.path().join("d/link"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), tree.path().join("dirlink")).unwrap();
        let root = File::open(tree.path()).unwrap();
        let (mut f, meta) = open_beneath(&root, Path::new("d/f")).unwrap();
        assert_eq!(std::io::read_to_string(&mut f).unwrap(), "mine");
        assert!(FileId::of(&meta).matches(&meta));
        for path in ["d/link", "dirlink/secret", "../secret", "d", "/etc/passwd"] {
            assert!(
                open_beneath(&root, Path::new(path)).is_err(),
                "{path} opened"
            );
        }
        for path in ["d/link", "dirlink/secret"] {
            assert!(
                open_by_components(&root, Path::new(path)).is_err(),
                "{path} opened"
            );
        }
        assert!(open_by_components(&root, Path::new("d/f")).is_ok());
        // The open that never waits for the disk refuses the same paths (or says it cannot
        // tell), and opens a file the kernel just saw (or says to open it on another thread).
        for path in ["d/link", "dirlink/secret", "../secret", "d", "/etc/passwd"] {
            let opened = open_beneath_cached(&root, Path::new(path));
            assert!(!matches!(opened, Ok(Some(_))), "{path} opened");
        }
        if let Some((mut f, _)) = open_beneath_cached(&root, Path::new("d/f")).unwrap() {
            assert_eq!(std::io::read_to_string(&mut f).unwrap(), "mine");
        }
        let link = tree.path().join("d/link");
        assert!(!matches!(open_cached(&link), Ok(Some(_))), "a link opened");
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let tree = tempfile::tempdir().unwrap();
        let fifo = rustix::fs::FileType::Fifo;
        rustix::fs::mknodat(
            rustix::fs::CWD,
            tree.path().join("fifo"),
            fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let root = File::open(tree.path()).unwrap();
        let err = open_beneath(&root, Path::new("fifo")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn identity_changes_with_a_rewrite_or_a_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"one").unwrap();
        let id = FileId::of(&std::fs::metadata(&path).unwrap());
        assert!(id.matches(&std::fs::metadata(&path).unwrap()));
        let unknown_dev = FileId { dev: 0, ..id };
        assert!(unknown_dev.matches(&std::fs::metadata(&path).unwrap()));
        std::fs::write(dir.path().join("g"), b"two").unwrap();
        std::fs::rename(dir.path().join("g"), &path).unwrap();
        assert!(!id.matches(&std::fs::metadata(&path).unwrap()));
    }
}
