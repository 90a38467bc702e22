//! What this node can serve: the current head, its manifest blobs, and where each chunk of the
//! current revision lives on disk. Swapped whole when a revision is published or applied.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

use crate::store::ByHash;
use crate::tree::{
    chunk_bytes, open_beneath, open_beneath_cached, open_cached, read_check, ChunkRef, ContentHash,
    FileId, FileRecord, Manifest, RelPath,
};
use crate::trust::SignedHead;

/// Index of servable content for one revision.
#[derive(Default)]
pub(crate) struct ServeIndex {
    root: PathBuf,
    /// The tree's root directory, opened when the index was built: files are opened beneath it
    /// without following links.
    root_dir: Option<std::fs::File>,
    pub head: Option<SignedHead>,
    /// Where each chunk is: file, offset, length, the read check it is served against, and
    /// the identity the file must still have.
    chunks: ByHash<Place>,
    /// Every chunk of the revision, sorted and de-duplicated: the order availability
    /// bitfields index into.
    order: Vec<ContentHash>,
    blobs: HashMap<ContentHash, Bytes>,
}

/// Where a chunk of the held revision is on disk.
struct Place {
    path: RelPath,
    offset: u64,
    len: u32,
    check: Option<u64>,
    file: FileId,
}

/// Memory for recently fetched chunks, per node.
const CACHE_BYTES: usize = 32 << 20;

/// Where a verified chunk of the revision being downloaded is in staging: (file, offset, len,
/// read check if known).
pub(crate) type StagedPlace = (PathBuf, u64, u32, Option<u64>);

/// The verified chunks of the download under way, asked chunk by chunk when a peer wants one.
/// The download answers from what it keeps anyway (where each chunk goes, which are written):
/// a map of a path per chunk, filled as chunks arrived, was 160 MiB and an allocation per
/// chunk at a million files.
pub(crate) trait Staged: Send + Sync {
    /// Where `hash` is, if it is verified in staging.
    fn place(&self, hash: &ContentHash) -> Option<StagedPlace>;

    /// The length of `hash`, if it is verified in staging (asked for every chunk a peer
    /// requests, before it is read: no path needs to be made).
    fn len(&self, hash: &ContentHash) -> Option<u32> {
        self.place(hash).map(|(_, _, len, _)| len)
    }
}

/// What the file index says of each file on disk, by path: which file it is (only a file with
/// that identity is read to serve a chunk, so a file swapped or rewritten since it was indexed
/// is never an oracle for other bytes) and the read checks a disk read of its chunks is
/// checked against (see [`read_check`]; a file without them is checked against the chunks'
/// BLAKE3 hashes instead). A file not here is not served from disk.
pub(crate) type FileChecks = HashMap<RelPath, Indexed, foldhash::fast::RandomState>;

/// One file of [`FileChecks`].
pub(crate) struct Indexed {
    id: FileId,
    hash: ContentHash,
    checks: Vec<u64>,
}

impl Indexed {
    /// `r` with its read `checks` (taken out of it or copied), kept only if it has one per
    /// chunk (see [`FileRecord::has_checks`]).
    fn of(r: &FileRecord, checks: Vec<u64>) -> Self {
        let checks = match checks.len() == r.chunks.len() {
            true => checks,
            false => Vec::new(),
        };
        Indexed {
            id: r.id(),
            hash: r.hash,
            checks,
        }
    }

    /// True if `meta` (of the file, not followed) shows it as it was indexed.
    pub fn unchanged(&self, meta: &std::fs::Metadata) -> bool {
        self.id.matches(meta)
    }
}

/// What `records` say of their files.
pub(crate) fn file_checks<'a>(
    records: impl IntoIterator<Item = (&'a RelPath, &'a FileRecord)>,
) -> FileChecks {
    records
        .into_iter()
        .map(|(path, r)| (path.clone(), Indexed::of(r, r.checks.clone())))
        .collect()
}

/// What the file index `records` says of its files, taken apart rather than copied.
pub(crate) fn into_file_checks(
    records: impl IntoIterator<Item = (RelPath, FileRecord)>,
) -> FileChecks {
    records
        .into_iter()
        .map(|(path, mut r)| {
            let checks = std::mem::take(&mut r.checks);
            (path, Indexed::of(&r, checks))
        })
        .collect()
}

/// What this node serves, shared between the engine (writer) and chunk servers (readers): the
/// index of the revision it holds, plus the manifest blobs and verified chunks of the one it is
/// downloading.
#[derive(Clone, Default)]
pub(crate) struct Content {
    index: Arc<RwLock<Arc<ServeIndex>>>,
    /// The download under way, while it lasts (not kept alive by being served).
    partial: Arc<RwLock<Option<std::sync::Weak<dyn Staged>>>>,
    /// The verified manifest blobs of the revision being downloaded: peers that learn it from
    /// us fetch its manifest from us too, not only from peers that hold it all.
    pending_blobs: Arc<RwLock<HashMap<ContentHash, Bytes>>>,
    cache: Arc<Mutex<ChunkCache>>,
}

/// Verified chunks kept in memory, oldest dropped first. In a swarm each chunk is asked for by
/// several peers soon after it arrives; without this every one of those requests would read
/// it from disk and check it again. Chunks read from disk are not kept: a read from the page
/// cache and its read check cost little, and the buffer of a chunk sent and dropped is
/// reused while it is still in the CPU's caches (keeping them cost the publisher 4% more CPU).
#[derive(Default)]
struct ChunkCache {
    map: HashMap<ContentHash, Bytes>,
    order: VecDeque<ContentHash>,
    bytes: usize,
}

impl ChunkCache {
    fn get(&self, hash: &ContentHash) -> Option<Bytes> {
        self.map.get(hash).cloned()
    }

    fn insert(&mut self, hash: ContentHash, data: Bytes) {
        if data.len() > CACHE_BYTES || self.map.contains_key(&hash) {
            return;
        }
        while self.bytes + data.len() > CACHE_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(d) = self.map.remove(&old) {
                self.bytes -= d.len();
            }
        }
        self.bytes += data.len();
        self.order.push_back(hash);
        self.map.insert(hash, data);
    }
}

impl Content {
    pub fn current(&self) -> Arc<ServeIndex> {
        self.index.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Serve the held revision from files with the identities `checks` gives (after a rescan
    /// found the tree's content unchanged but files touched or replaced by equal copies);
    /// partial chunks are kept.
    pub fn update_files(&self, manifest: &Manifest, checks: &FileChecks) {
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        let Some(head) = index.head.clone() else {
            return;
        };
        let blobs = index.blobs.clone();
        let root = index.root.clone();
        let go_on = AtomicBool::new(false);
        let built = ServeIndex::build_from(root, head, manifest, blobs, checks, &go_on);
        *index = Arc::new(built.unwrap_or_default());
    }

    /// Serve `index` of the revision this node held when it started, built after the node
    /// started (until then it served nothing of it). The chunks and manifest blobs of a
    /// download under way are kept.
    pub fn serve_held(&self, index: ServeIndex) {
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(index);
    }

    /// Make `index` the revision served; forget partial chunks and pending manifest blobs.
    pub fn replace(&self, index: ServeIndex) {
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(index);
        *self.partial.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.pending_blobs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The manifest of the revision being downloaded is verified: serve its `blobs` (in place
    /// of those of a download before it).
    pub fn set_pending_blobs(&self, blobs: impl IntoIterator<Item = (ContentHash, Bytes)>) {
        *self
            .pending_blobs
            .write()
            .unwrap_or_else(|p| p.into_inner()) = blobs.into_iter().collect();
    }

    fn pending_blob(&self, hash: &ContentHash) -> Option<Bytes> {
        let pending = self.pending_blobs.read().unwrap_or_else(|p| p.into_inner());
        pending.get(hash).cloned()
    }

    /// Serve the verified chunks of the download under way from `staged`, in place of those of
    /// a download before it, for as long as `staged` lives.
    pub fn set_staged<S: Staged + 'static>(&self, staged: &Arc<S>) {
        let staged: Arc<dyn Staged> = staged.clone();
        let weak = Arc::downgrade(&staged);
        *self.partial.write().unwrap_or_else(|p| p.into_inner()) = Some(weak);
    }

    /// The download under way, if one is.
    fn staged(&self) -> Option<Arc<dyn Staged>> {
        self.partial
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|w| w.upgrade())
    }

    /// Where verified chunk `hash` of the download under way is, if it is one.
    fn staged_place(&self, hash: &ContentHash) -> Option<StagedPlace> {
        self.staged()?.place(hash)
    }

    /// True if `hash` is one of the held revision's manifest blobs.
    pub fn is_manifest_blob(&self, hash: &ContentHash) -> bool {
        self.current().blobs.contains_key(hash)
    }

    /// `data` of `hash` was just verified: keep it in memory for the peers about to ask. The
    /// bytes are shared, not copied.
    pub fn remember(&self, hash: ContentHash, data: Bytes) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(hash, data);
    }

    /// The length of chunk `hash` if this node holds it, without reading it: what a server
    /// bounds the bytes of one batch of replies by, before it reads them.
    pub fn len_of(&self, hash: &ContentHash) -> Option<u32> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(data) = cache.map.get(hash) {
            return Some(data.len() as u32);
        }
        drop(cache);
        let index = self.current();
        if let Some(blob) = index.blobs.get(hash) {
            return Some(blob.len() as u32);
        }
        if let Some(place) = index.chunks.get(hash) {
            return Some(place.len);
        }
        if let Some(blob) = self.pending_blob(hash) {
            return Some(blob.len() as u32);
        }
        self.staged()?.len(hash)
    }

    /// The bytes of `hash`, checked, from memory, the held revision or staging. Blocking.
    pub fn read(&self, hash: &ContentHash) -> Option<Bytes> {
        self.read_with(hash, Io::Block).unwrap_or_default()
    }

    /// Like [`Content::read`], but only if that needs no disk I/O: bytes in memory or in the
    /// page cache come back at once (a chunk read and checked in well under a millisecond), and
    /// `Err(WouldBlock)` says to call `read` on a blocking thread instead. Serving a chunk that
    /// is in the page cache, the usual case, then costs no hand-off to another thread and back.
    pub fn read_now(&self, hash: &ContentHash) -> Result<Option<Bytes>, WouldBlock> {
        self.read_with(hash, Io::NoWait)
    }

    fn read_with(&self, hash: &ContentHash, io: Io) -> Result<Option<Bytes>, WouldBlock> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash);
        if let Some(data) = cached.or_else(|| self.pending_blob(hash)) {
            return Ok(Some(data));
        }
        let data = match self.current().read(hash, io)? {
            Some(data) => data,
            None => {
                let Some((path, offset, len, check)) = self.staged_place(hash) else {
                    return Ok(None);
                };
                let file = match io {
                    Io::Block => open_staged(&path),
                    // Opening may wait on the disk too (a directory not in the kernel's cache).
                    Io::NoWait => match open_cached(&path) {
                        Ok(Some(file)) => Some(file),
                        Ok(None) => return Err(WouldBlock),
                        Err(_) => None,
                    },
                };
                let Some(file) = file else {
                    return Ok(None);
                };
                match read_checked(&file, || path.clone(), offset, len, hash, check, io)? {
                    Some(data) => data,
                    None => return Ok(None),
                }
            }
        };
        Ok(Some(data))
    }
}

/// Whether a read may wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Io {
    Block,
    NoWait,
}

/// A read that would have had to wait for the disk (see [`Content::read_now`]).
#[derive(Debug)]
pub(crate) struct WouldBlock;

/// Open the staged file `path` (in the node's private state directory), not following a link.
fn open_staged(path: &std::path::Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()
}

/// Read `len` bytes at `off` in `file` (at `path`), the chunk `hash`, and check them against
/// `check` if known, else against `hash`.
fn read_checked(
    file: &std::fs::File,
    path: impl FnOnce() -> PathBuf,
    off: u64,
    len: u32,
    hash: &ContentHash,
    check: Option<u64>,
    io: Io,
) -> Result<Option<Bytes>, WouldBlock> {
    let mut buf = Vec::new();
    let (flags, short) = match io {
        Io::Block => (0, Ok(None)),
        Io::NoWait => (libc::RWF_NOWAIT, Err(WouldBlock)),
    };
    if !read_at(file, &mut buf, len as usize, off, flags) {
        return short;
    }
    let same = match check {
        Some(check) => read_check(&buf) == check,
        None => hash.matches(&buf),
    };
    if !same {
        tracing::warn!(path = %path().display(), "data changed on disk since it was indexed; not serving it");
        return Ok(None);
    }
    Ok(Some(Bytes::from(buf)))
}

/// Read `len` bytes at `off` into `buf`'s spare capacity (not zeroed first) with `preadv2` and
/// `flags`; true if all of them were read. With `RWF_NOWAIT` the kernel reads only what is in
/// the page cache, so false also means some would need the disk (or the kernel cannot tell):
/// the caller then reads on a blocking thread.
fn read_at(file: &std::fs::File, buf: &mut Vec<u8>, len: usize, off: u64, flags: i32) -> bool {
    use std::os::fd::AsRawFd;
    buf.reserve(len);
    let mut filled = 0;
    while filled < len {
        let Ok(at) = libc::off_t::try_from(off + filled as u64) else {
            return false;
        };
        let iov = libc::iovec {
            iov_base: buf.spare_capacity_mut()[filled..].as_mut_ptr().cast(),
            iov_len: len - filled,
        };
        // SAFETY: the iovec covers the `len - filled` bytes of `buf`'s spare capacity past
        // those already read, which stay allocated and unaliased for the call; the kernel
        // writes at most that many bytes there and returns how many.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, flags) };
        match n {
            0 => break,
            n if n > 0 => filled += n as usize,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return false,
        }
    }
    // SAFETY: the kernel initialised the first `filled` bytes of the spare capacity.
    unsafe { buf.set_len(filled) };
    filled == len
}

/// Split encoded manifest bytes into blobs: its chunks plus the chunk index. Returns the index
/// hash and every blob.
pub(crate) fn manifest_blobs(manifest: &[u8]) -> (ContentHash, Vec<(ContentHash, Vec<u8>)>) {
    let pieces = chunk_bytes(manifest);
    let index: Vec<ChunkRef> = pieces.iter().map(|(r, _)| *r).collect();
    let index_bytes = postcard::to_stdvec(&index).expect("index encodes");
    let index_hash = ContentHash::of(&index_bytes);
    let mut blobs: Vec<_> = pieces
        .into_iter()
        .map(|(r, d)| (r.hash, d.to_vec()))
        .collect();
    blobs.push((index_hash, index_bytes));
    (index_hash, blobs)
}

impl ServeIndex {
    pub fn build(
        root: PathBuf,
        head: SignedHead,
        manifest: &Manifest,
        blobs: Vec<(ContentHash, Vec<u8>)>,
        checks: &FileChecks,
    ) -> Self {
        let go_on = AtomicBool::new(false);
        Self::build_unless(root, head, manifest, blobs, checks, &go_on).unwrap_or_default()
    }

    /// Like [`ServeIndex::build`], but `None` if `stop` is set before it is done (an index of
    /// a million files takes most of a second to build).
    pub fn build_unless(
        root: PathBuf,
        head: SignedHead,
        manifest: &Manifest,
        blobs: Vec<(ContentHash, Vec<u8>)>,
        checks: &FileChecks,
        stop: &AtomicBool,
    ) -> Option<Self> {
        let blobs = blobs
            .into_iter()
            .map(|(h, b)| (h, Bytes::from(b)))
            .collect();
        Self::build_from(root, head, manifest, blobs, checks, stop)
    }

    fn build_from(
        root: PathBuf,
        head: SignedHead,
        manifest: &Manifest,
        blobs: HashMap<ContentHash, Bytes>,
        checks: &FileChecks,
        stop: &AtomicBool,
    ) -> Option<Self> {
        const STOP_CHECK_EVERY: usize = 4096;
        let mut chunks = ByHash::default();
        let mut order = Vec::new();
        for (i, (path, _, _, hash, refs)) in manifest.files().enumerate() {
            if i.is_multiple_of(STOP_CHECK_EVERY) && stop.load(Ordering::Relaxed) {
                return None;
            }
            order.extend(refs.iter().map(|c| c.hash));
            let Some(indexed) = checks.get(path).filter(|i| i.hash == hash) else {
                continue;
            };
            let read_checks = Some(&indexed.checks).filter(|c| c.len() == refs.len());
            let mut offset = 0u64;
            for (i, c) in refs.iter().enumerate() {
                chunks.entry(c.hash).or_insert_with(|| Place {
                    path: path.clone(),
                    offset,
                    len: c.len,
                    check: read_checks.map(|checks| checks[i]),
                    file: indexed.id,
                });
                offset += c.len as u64;
            }
        }
        order.sort_unstable();
        order.dedup();
        Some(ServeIndex {
            root_dir: std::fs::File::open(&root).ok(),
            root,
            head: Some(head),
            chunks,
            order,
            blobs,
        })
    }

    /// The revision's chunks in the order availability bitfields index into.
    pub fn chunk_order(&self) -> &[ContentHash] {
        &self.order
    }

    /// The bytes of `hash`, read from disk and checked, or `None`. Only read from the file
    /// the index names, still with the identity it had when indexed, reached without
    /// following any link.
    fn read(&self, hash: &ContentHash, io: Io) -> Result<Option<Bytes>, WouldBlock> {
        if let Some(b) = self.blobs.get(hash) {
            return Ok(Some(b.clone()));
        }
        let (Some(place), Some(root)) = (self.chunks.get(hash), &self.root_dir) else {
            return Ok(None);
        };
        let rel = std::path::Path::new(place.path.as_str());
        let opened = match io {
            Io::Block => open_beneath(root, rel).map(Some),
            // Opening may wait on the disk too (a directory not in the kernel's cache).
            Io::NoWait => open_beneath_cached(root, rel),
        };
        let file = match opened {
            Ok(None) => return Err(WouldBlock),
            Ok(Some((file, meta))) if place.file.matches(&meta) => file,
            _ => {
                let path = place.path.under(&self.root);
                tracing::warn!(path = %path.display(), "file replaced or changed since it was indexed; not serving it");
                return Ok(None);
            }
        };
        // The full path only for a warning (made for every chunk served, it was 3% of a
        // publisher's CPU serving a million small files).
        let path = || place.path.under(&self.root);
        read_checked(&file, path, place.offset, place.len, hash, place.check, io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_drops_the_oldest_past_its_size() {
        let mut c = ChunkCache::default();
        let big = |b: u8| Bytes::from(vec![b; CACHE_BYTES / 4]);
        let hashes: Vec<_> = (0..5u8).map(|i| ContentHash::of(&[i])).collect();
        for (i, h) in hashes.iter().enumerate() {
            c.insert(*h, big(i as u8));
        }
        assert!(c.get(&hashes[0]).is_none(), "oldest dropped");
        for h in &hashes[1..] {
            assert!(c.get(h).is_some());
        }
        assert_eq!(c.bytes, CACHE_BYTES);
        c.insert(
            ContentHash::of(b"huge"),
            Bytes::from(vec![0u8; CACHE_BYTES + 1]),
        );
        assert_eq!(c.map.len(), 4, "an entry over the whole size is not kept");
    }

    /// Chunks of a download, told one by one.
    #[derive(Default)]
    struct Known(Mutex<HashMap<ContentHash, StagedPlace>>);

    impl Staged for Known {
        fn place(&self, hash: &ContentHash) -> Option<StagedPlace> {
            self.0.lock().unwrap().get(hash).cloned()
        }
    }

    impl Known {
        fn add(&self, hash: ContentHash, path: PathBuf, offset: u64, len: u32) {
            self.0
                .lock()
                .unwrap()
                .insert(hash, (path, offset, len, None));
        }
    }

    /// A staged file holding "0123456789", and content that knows chunk "2345" at offset 2.
    fn staged() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        Content,
        ContentHash,
        Arc<Known>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("staged");
        std::fs::write(&path, b"0123456789").unwrap();
        let content = Content::default();
        let known = Arc::new(Known::default());
        content.set_staged(&known);
        let good = ContentHash::of(b"2345");
        known.add(good, path.clone(), 2, 4);
        (dir, path, content, good, known)
    }

    /// The chunks of a download are served while it lasts, and not after.
    #[test]
    fn staged_chunks_are_served_while_their_download_lasts() {
        let (_dir, _path, content, good, known) = staged();
        assert_eq!(content.len_of(&good), Some(4));
        assert_eq!(content.read(&good).as_deref(), Some(&b"2345"[..]));
        drop(known);
        assert_eq!(content.len_of(&good), None);
        assert_eq!(content.read(&good), None);
    }

    #[test]
    fn content_serves_remembered_chunks_and_checks_disk_reads() {
        let (_dir, path, content, good, known) = staged();
        assert_eq!(content.read(&good).as_deref(), Some(&b"2345"[..]));
        // Damaged on disk after it was read: read and checked again, so refused.
        std::fs::write(&path, b"01xxxx6789").unwrap();
        assert_eq!(content.read(&good), None);
        // Never read before and damaged: refused.
        let other = ContentHash::of(b"6789");
        std::fs::write(&path, b"012345xxxx").unwrap();
        known.add(other, path, 6, 4);
        assert_eq!(content.read(&other), None);
        let fresh = ContentHash::of(b"fresh");
        content.remember(fresh, Bytes::from_static(b"fresh"));
        assert_eq!(content.read(&fresh).as_deref(), Some(&b"fresh"[..]));
    }

    #[test]
    fn a_read_that_needs_no_disk_checks_the_bytes_too() {
        // Just written, so in the page cache: read at once, without a blocking thread.
        let (_dir, path, content, good, known) = staged();
        let read = content.read_now(&good).expect("in the page cache");
        assert_eq!(read.as_deref(), Some(&b"2345"[..]));
        // Damaged and never read before: refused, as a blocking read refuses it.
        let other = ContentHash::of(b"6789");
        std::fs::write(&path, b"012345xxxx").unwrap();
        known.add(other, path.clone(), 6, 4);
        assert!(matches!(content.read_now(&other), Ok(None)));
        // Past the end of the file: not a chunk we can serve.
        let short = ContentHash::of(b"89ab");
        known.add(short, path, 8, 4);
        assert!(content.read(&short).is_none());
        assert!(!matches!(content.read_now(&short), Ok(Some(_))));
    }

    /// A head for an index; serving never looks at it.
    fn head() -> SignedHead {
        let body = crate::trust::HeadBody {
            swarm_id: uuid::Uuid::new_v4(),
            revision: 1,
            manifest_hash: ContentHash::of(b""),
            manifest_size: 0,
            manifest_index_hash: ContentHash::of(b""),
            created_unix_ms: 0,
            signer: [0; 32],
        };
        let key = crate::trust::PublisherKey::generate();
        SignedHead::sign(body, &key).signed().clone()
    }

    #[test]
    fn disk_reads_with_a_read_check_are_checked_against_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"0123456789").unwrap();
        let refs = [(b"01234".as_slice()), (b"56789".as_slice())].map(|d| ChunkRef {
            hash: ContentHash::of(d),
            len: 5,
        });
        let file = crate::tree::file_hash(&refs);
        let manifest = Manifest::from_entries(vec![crate::tree::Entry {
            path: RelPath::new("f").unwrap(),
            kind: crate::tree::EntryKind::File {
                size: 10,
                mode: 0o444,
                hash: file,
                chunks: refs.to_vec(),
            },
        }])
        .unwrap();
        let build = |checks: &FileChecks| {
            ServeIndex::build(dir.path().into(), head(), &manifest, vec![], checks)
        };
        let f = RelPath::new("f").unwrap();
        // The file as it is on disk now, with read checks `checks`.
        let indexed = |checks: Vec<u64>| {
            let meta = std::fs::metadata(dir.path().join("f")).unwrap();
            let id = FileId::of(&meta);
            [(
                f.clone(),
                Indexed {
                    id,
                    hash: file,
                    checks,
                },
            )]
            .into_iter()
            .collect::<FileChecks>()
        };
        // The second check is wrong for the bytes on disk, which match their BLAKE3 hash: the
        // read check decides, so that chunk is refused and the first is served.
        let checks = indexed(vec![read_check(b"01234"), read_check(b"x")]);
        let index = build(&checks);
        assert_eq!(
            index.read(&refs[0].hash, Io::Block).unwrap().as_deref(),
            Some(&b"01234"[..])
        );
        assert_eq!(index.read(&refs[1].hash, Io::Block).unwrap(), None);
        // Without read checks, both are checked against their hashes.
        let index = build(&indexed(vec![]));
        assert!(index.read(&refs[1].hash, Io::Block).unwrap().is_some());
        // A file the index does not know is not served.
        assert!(build(&FileChecks::default())
            .read(&refs[0].hash, Io::Block)
            .unwrap()
            .is_none());
        // A file edited since it was indexed: refused, even the chunk still the same.
        std::fs::write(dir.path().join("f"), b"01234x6789").unwrap();
        assert_eq!(index.read(&refs[0].hash, Io::Block).unwrap(), None);
        // Indexed again as it now is: the unchanged chunk is served, the changed one refused.
        let index = build(&indexed(vec![]));
        assert!(index.read(&refs[0].hash, Io::Block).unwrap().is_some());
        assert_eq!(index.read(&refs[1].hash, Io::Block).unwrap(), None);
        let index = build(&indexed(
            refs.iter().map(|_| read_check(b"01234")).collect(),
        ));
        assert_eq!(index.read(&refs[1].hash, Io::Block).unwrap(), None);
    }

    /// The oracle of the issue: a local user indexes guess files, then swaps each for a link to
    /// a secret (or for an equal copy). A swapped file is never read, so which chunk gets served
    /// says nothing about the secret.
    #[test]
    fn a_file_swapped_for_a_link_or_a_copy_is_never_read() {
        let tree = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let guess = b"A";
        std::fs::write(outside.path().join("secret"), guess).unwrap();
        std::fs::create_dir(tree.path().join("d")).unwrap();
        std::fs::write(tree.path().join("d/guess"), guess).unwrap();
        let scan = crate::tree::scan(
            tree.path(),
            &HashMap::new(),
            &crate::tree::IgnoreRules::none(),
        )
        .unwrap();
        let chunk = ContentHash::of(guess);
        let head = head();
        let content = Content::default();
        let checks = file_checks(scan.records.iter().map(|(p, r)| (p, r)));
        content.replace(ServeIndex::build(
            tree.path().into(),
            head,
            &scan.manifest,
            vec![],
            &checks,
        ));
        assert_eq!(content.read(&chunk).as_deref(), Some(&guess[..]));

        // The file swapped for a link to the secret (same bytes, so any content check passes).
        std::fs::remove_file(tree.path().join("d/guess")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), tree.path().join("d/guess"))
            .unwrap();
        assert_eq!(content.read(&chunk), None);
        // Its directory swapped for a link to the secret's.
        std::fs::rename(tree.path().join("d"), tree.path().join("old")).unwrap();
        std::fs::rename(outside.path().join("secret"), outside.path().join("guess")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tree.path().join("d")).unwrap();
        assert_eq!(content.read(&chunk), None);
        // A hard link or an equal copy is another file: not read either, until indexed anew.
        std::fs::remove_file(tree.path().join("d")).unwrap();
        std::fs::create_dir(tree.path().join("d")).unwrap();
        std::fs::write(tree.path().join("d/guess"), guess).unwrap();
        assert_eq!(content.read(&chunk), None);
        let rescan = crate::tree::scan(
            tree.path(),
            &HashMap::new(),
            &crate::tree::IgnoreRules::none(),
        )
        .unwrap();
        let checks = file_checks(rescan.records.iter().map(|(p, r)| (p, r)));
        content.update_files(&rescan.manifest, &checks);
        assert_eq!(content.read(&chunk).as_deref(), Some(&guess[..]));
    }
}
