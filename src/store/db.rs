//! The redb state database: pins, swarm identity, the applied head, the file index and the
//! blobs (manifest chunks and index) of the current revision; and its format, brought up to
//! date when it is opened.

use std::collections::HashMap;
use std::path::Path;

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};

use super::error::StoreError;
use crate::tree::{ContentHash, FileRecord, RelPath};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
const BLOBS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("blobs");

const KEY_SWARM: &str = "swarm_id";
const KEY_PIN: &str = "publisher_key";
const KEY_HEAD: &str = "head";
const KEY_LINEAGE: &str = "succession";
const KEY_APPLYING: &str = "applying";
const KEY_FORMAT: &str = "format";

/// Format of the state database. 1 (no `format` key): file records hold the BLAKE3 of each
/// file's bytes. 2: they hold its hash by chunk list (`tree::file_hash`), as manifests of
/// format 3 do. A database of format 1 is brought to 2 when opened, from the chunk lists its
/// records hold; one of a later format (a newer treecast) is refused.
pub const STATE_FORMAT: u32 = 2;

/// Handle to the state database, and the file it is in (for messages).
pub struct Db(redb::Database, std::path::PathBuf);

/// What the database says about this tree.
#[derive(Debug, Clone, Default)]
pub struct StoredState {
    pub swarm_id: Option<uuid::Uuid>,
    pub pinned_key: Option<[u8; 32]>,
    /// Encoded signed head of the applied revision.
    pub head: Option<Vec<u8>>,
    /// Handovers followed from the pinned key (see `trust::Lineage`).
    pub lineage: Vec<crate::trust::Succession>,
    /// A revision whose files were being put in place when the node stopped: the mirror may
    /// hold whole files of it beside files of `head`'s revision.
    pub applying: Option<u64>,
}

impl StoredState {
    /// The lineage recorded for this tree: its pin and the handovers followed (re-verified).
    /// None before a swarm and pin are recorded.
    pub fn lineage(&self) -> Option<(uuid::Uuid, crate::trust::Lineage)> {
        let swarm = self.swarm_id?;
        let pin = crate::trust::PublisherPublicKey::from_bytes(self.pinned_key?).ok()?;
        let mut lineage = crate::trust::Lineage::new(pin);
        lineage.extend(&self.lineage, swarm);
        Some((swarm, lineage))
    }
}

impl Db {
    /// Open or create the database at `path`, bringing one of an older format up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = redb::Database::create(path)?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let mut files = txn.open_table(FILES)?;
            txn.open_table(BLOBS)?;
            let format = match meta.get(KEY_FORMAT)? {
                Some(b) => u32::from_le_bytes(
                    b.value()
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("state format: length".into()))?,
                ),
                None => 1,
            };
            if format > STATE_FORMAT {
                return Err(StoreError::NewerState {
                    path: path.to_owned(),
                    format,
                    reads: STATE_FORMAT,
                });
            }
            if format < 2 {
                hash_files_by_chunks(&mut files)?;
            }
            meta.insert(KEY_FORMAT, &STATE_FORMAT.to_le_bytes()[..])?;
        }
        txn.commit()?;
        Ok(Db(db, path.to_owned()))
    }

    /// The file of the database.
    pub fn path(&self) -> &Path {
        &self.1
    }

    /// Read swarm ID, pin and head.
    pub fn state(&self) -> Result<StoredState, StoreError> {
        let txn = self.0.begin_read()?;
        let meta = txn.open_table(META)?;
        let get = |k: &str| -> Result<Option<Vec<u8>>, StoreError> {
            Ok(meta.get(k)?.map(|v| v.value().to_vec()))
        };
        let swarm_id = match get(KEY_SWARM)? {
            Some(b) => {
                Some(uuid::Uuid::from_slice(&b).map_err(|e| StoreError::Corrupt(e.to_string()))?)
            }
            None => None,
        };
        let pinned_key = match get(KEY_PIN)? {
            Some(b) => Some(
                b.try_into()
                    .map_err(|_| StoreError::Corrupt("pinned key length".into()))?,
            ),
            None => None,
        };
        let lineage = match get(KEY_LINEAGE)? {
            Some(b) => postcard::from_bytes(&b)
                .map_err(|e| StoreError::Corrupt(format!("succession records: {e}")))?,
            None => Vec::new(),
        };
        let applying = match get(KEY_APPLYING)? {
            Some(b) => Some(u64::from_le_bytes(b.try_into().map_err(|_| {
                StoreError::Corrupt("revision being applied: length".into())
            })?)),
            None => None,
        };
        Ok(StoredState {
            swarm_id,
            pinned_key,
            head: get(KEY_HEAD)?,
            lineage,
            applying,
        })
    }

    /// Record the swarm and the pinned publisher key (first use).
    pub fn set_identity(&self, swarm_id: uuid::Uuid, pin: [u8; 32]) -> Result<(), StoreError> {
        let txn = self.0.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(KEY_SWARM, &swarm_id.as_bytes()[..])?;
            meta.insert(KEY_PIN, &pin[..])?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Record the handovers followed from the pinned key.
    pub fn set_lineage(&self, links: &[crate::trust::Succession]) -> Result<(), StoreError> {
        let bytes = postcard::to_stdvec(links).expect("succession encodes");
        let txn = self.0.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(KEY_LINEAGE, &bytes[..])?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The file index.
    pub fn file_index(&self) -> Result<HashMap<RelPath, FileRecord>, StoreError> {
        let txn = self.0.begin_read()?;
        let files = txn.open_table(FILES)?;
        let mut out = HashMap::new();
        for item in files.iter()? {
            let (k, v) = item?;
            let path = RelPath::new(k.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.insert(path, decode_record(v.value())?);
        }
        Ok(out)
    }

    /// A blob (manifest chunk or manifest index) of the current revision.
    pub fn blob(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.0.begin_read()?;
        let blobs = txn.open_table(BLOBS)?;
        Ok(blobs.get(&hash.0)?.map(|v| v.value().to_vec()))
    }

    /// Record that the files of `revision` are about to be put in place, before the first of
    /// them is: until [`Db::commit_revision`] (or [`Db::commit_revision_from`]), the mirror is
    /// between two revisions.
    pub fn begin_apply(&self, revision: u64) -> Result<(), StoreError> {
        let txn = self.0.begin_write()?;
        txn.open_table(META)?
            .insert(KEY_APPLYING, &revision.to_le_bytes()[..])?;
        txn.commit()?;
        Ok(())
    }

    /// Atomically make `head` the applied revision, with its file index and blobs, and end the
    /// apply begun with [`Db::begin_apply`]. Old blobs are dropped.
    pub fn commit_revision(
        &self,
        head: &[u8],
        records: &[(RelPath, FileRecord)],
        blobs: &[(ContentHash, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let txn = self.0.begin_write()?;
        write_file_index(&mut txn.open_table(FILES)?, records)?;
        finish_revision(txn, head, blobs)
    }

    /// [`Db::commit_revision`] with the file records written as `records` yields them, while
    /// the apply that makes them still runs (on another thread): a million records cost the
    /// database seconds that would otherwise follow the apply's. Committed when `records`
    /// yields [`Applying::Done`]; if it ends before (the apply failed), nothing is. Returns the
    /// records.
    pub fn commit_revision_from(
        &self,
        head: &[u8],
        blobs: &[(ContentHash, Vec<u8>)],
        records: impl IntoIterator<Item = Applying>,
    ) -> Result<Vec<(RelPath, FileRecord)>, StoreError> {
        let txn = self.0.begin_write()?;
        let mut written = Vec::new();
        let mut done = false;
        {
            let mut files = txn.open_table(FILES)?;
            let mut index = IndexWriter::new(&files)?;
            for item in records {
                match item {
                    Applying::Record(path, rec) => {
                        let owned = || path.as_str().to_owned().into();
                        index.put(&mut files, path.as_str(), owned, &rec)?;
                        written.push((path, rec));
                    }
                    Applying::Done => {
                        done = true;
                        break;
                    }
                }
            }
            if done {
                index.finish(&mut files)?;
            }
        }
        if !done {
            txn.abort()?;
            return Err(StoreError::ApplyStopped(
                "it ended before its last file record: nothing committed",
            ));
        }
        finish_revision(txn, head, blobs)?;
        Ok(written)
    }

    /// Replace the file index only (after a rescan found nothing new to publish). Returns how
    /// many records were written or removed: an unchanged index costs reads and no write at
    /// all (the transaction is dropped, not committed).
    pub fn update_file_index(&self, records: &[(RelPath, FileRecord)]) -> Result<u64, StoreError> {
        let txn = self.0.begin_write()?;
        let written = write_file_index(&mut txn.open_table(FILES)?, records)?;
        if written == 0 {
            txn.abort()?;
            return Ok(0);
        }
        txn.commit()?;
        Ok(written)
    }
}

/// One item of an apply's file index, as [`Db::commit_revision_from`] takes them.
#[derive(Debug)]
pub enum Applying {
    /// The record of a file the apply has put in place (or kept).
    Record(RelPath, FileRecord),
    /// The apply is done: every file is in place and synced.
    Done,
}

/// Make `head` the applied revision with `blobs` in the same transaction `txn`, end the apply,
/// and commit.
fn finish_revision(
    txn: redb::WriteTransaction,
    head: &[u8],
    blobs: &[(ContentHash, Vec<u8>)],
) -> Result<(), StoreError> {
    {
        let mut meta = txn.open_table(META)?;
        meta.insert(KEY_HEAD, head)?;
        meta.remove(KEY_APPLYING)?;
        let mut table = txn.open_table(BLOBS)?;
        table.retain(|_, _| false)?;
        for (hash, bytes) in blobs {
            table.insert(&hash.0, bytes.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Make the file index hold `records` and nothing else, writing only what differs from what it
/// holds (a record stored with the same bytes is left alone): a rescan or revision that changed
/// a few files writes a few records, not the whole tree's. Returns the records written or removed.
fn write_file_index(
    files: &mut redb::Table<&str, &[u8]>,
    records: &[(RelPath, FileRecord)],
) -> Result<u64, StoreError> {
    let mut index = IndexWriter::new(files)?;
    for (path, rec) in records {
        index.put(files, path.as_str(), || path.as_str().into(), rec)?;
    }
    index.finish(files)
}

/// Writes a file index record by record (see [`write_file_index`]): each record is written
/// unless the same bytes are stored, and at the end the records of paths not put are removed.
/// An empty index (a first sync) is only written to: no set of the paths to keep, no lookup of
/// each record before its insert.
struct IndexWriter<'a> {
    /// Records held before.
    before: u64,
    /// The paths put, while there are records to remove: borrowed from the caller's records
    /// where it keeps them, copied where they move on (streamed).
    keep: std::collections::HashSet<std::borrow::Cow<'a, str>>,
    written: u64,
    bytes: Vec<u8>,
}

impl<'a> IndexWriter<'a> {
    fn new(files: &redb::Table<&str, &[u8]>) -> Result<Self, StoreError> {
        Ok(IndexWriter {
            before: files.len()?,
            keep: Default::default(),
            written: 0,
            bytes: Vec::new(),
        })
    }

    /// Write the record of `path`; `kept` gives the path to keep, called only while there are
    /// records to remove (so a first sync copies no path).
    fn put(
        &mut self,
        files: &mut redb::Table<&str, &[u8]>,
        path: &str,
        kept: impl FnOnce() -> std::borrow::Cow<'a, str>,
        rec: &FileRecord,
    ) -> Result<(), StoreError> {
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.clear();
        self.bytes = postcard::to_extend(rec, bytes).expect("file record encodes");
        if self.before > 0 {
            self.keep.insert(kept());
            if files
                .get(path)?
                .is_some_and(|v| v.value() == self.bytes.as_slice())
            {
                return Ok(());
            }
        }
        files.insert(path, self.bytes.as_slice())?;
        self.written += 1;
        Ok(())
    }

    /// Remove the records of the paths not put; the records written or removed.
    fn finish(self, files: &mut redb::Table<&str, &[u8]>) -> Result<u64, StoreError> {
        let mut written = self.written;
        if self.before > 0 {
            let held = files.len()?;
            files.retain(|path, _| self.keep.contains(path))?;
            written += held - files.len()?;
        }
        Ok(written)
    }
}

#[cfg(test)]
impl Db {
    /// Store `bytes` as the file record of `path`, unchecked: a damaged file index, for tests.
    pub(crate) fn danger_put_file_record(
        &self,
        path: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let txn = self.0.begin_write()?;
        txn.open_table(FILES)?.insert(path, bytes)?;
        txn.commit()?;
        Ok(())
    }
}

/// Give every file record the hash of its chunk list in place of the BLAKE3 of its bytes
/// (state format 1 to 2). The chunk lists were verified when recorded, so they name the same
/// bytes; nothing is read.
fn hash_files_by_chunks(files: &mut redb::Table<&str, &[u8]>) -> Result<(), StoreError> {
    let mut records = Vec::new();
    for item in files.iter()? {
        let (k, v) = item?;
        let mut rec = decode_record(v.value())?;
        rec.hash = crate::tree::file_hash(&rec.chunks);
        records.push((k.value().to_owned(), rec));
    }
    for (path, rec) in &records {
        let bytes = postcard::to_stdvec(rec).expect("file record encodes");
        files.insert(path.as_str(), bytes.as_slice())?;
    }
    if !records.is_empty() {
        tracing::info!(
            files = records.len(),
            "state database: file hashes now by chunk list"
        );
    }
    Ok(())
}

/// A file record as treecast wrote it before read checks.
#[derive(serde::Serialize, serde::Deserialize)]
struct FileRecordV1 {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    executable: bool,
    hash: ContentHash,
    chunks: Vec<crate::tree::ChunkRef>,
}

/// A file record as treecast wrote it before it recorded the file's device.
#[derive(serde::Serialize, serde::Deserialize)]
struct FileRecordV2 {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    executable: bool,
    hash: ContentHash,
    chunks: Vec<crate::tree::ChunkRef>,
    checks: Vec<u64>,
}

/// Decode a file record, also one written by an older treecast: one without a device has
/// device 0 ("not known", see [`crate::tree::FileId`]); one without read checks has none (a
/// publisher hashes that file again at its next scan, a subscriber checks its reads against
/// the chunk hashes).
fn decode_record(bytes: &[u8]) -> Result<FileRecord, StoreError> {
    // A record of an older format ends where a newer one's next field begins, so it never
    // decodes as the newer one.
    if let Ok(rec) = postcard::from_bytes::<FileRecord>(bytes) {
        return Ok(rec);
    }
    if let Ok(old) = postcard::from_bytes::<FileRecordV2>(bytes) {
        return Ok(FileRecord {
            size: old.size,
            mtime_ns: old.mtime_ns,
            inode: old.inode,
            executable: old.executable,
            hash: old.hash,
            chunks: old.chunks,
            checks: old.checks,
            dev: 0,
        });
    }
    let old: FileRecordV1 =
        postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(FileRecord {
        size: old.size,
        mtime_ns: old.mtime_ns,
        inode: old.inode,
        executable: old.executable,
        hash: old.hash,
        chunks: old.chunks,
        checks: Vec::new(),
        dev: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file record of one byte, `n`, told apart from others by its time, inode and hash.
    fn rec(n: u8) -> FileRecord {
        FileRecord {
            size: 1,
            mtime_ns: n as i128,
            inode: n as u64,
            executable: false,
            hash: ContentHash::of(&[n]),
            chunks: vec![crate::tree::ChunkRef {
                hash: ContentHash::of(&[n]),
                len: 1,
            }],
            checks: vec![crate::tree::read_check(&[n])],
            dev: 7,
        }
    }

    #[test]
    fn state_round_trips_and_commit_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        assert!(db.state().unwrap().head.is_none());
        let swarm = uuid::Uuid::new_v4();
        db.set_identity(swarm, [3; 32]).unwrap();
        let rec = FileRecord {
            size: 1,
            mtime_ns: 2,
            inode: 3,
            executable: true,
            hash: ContentHash::of(b"x"),
            chunks: vec![crate::tree::ChunkRef {
                hash: ContentHash::of(b"x"),
                len: 1,
            }],
            checks: vec![crate::tree::read_check(b"x")],
            dev: 4,
        };
        let p = RelPath::new("a/b").unwrap();
        let blob = (ContentHash::of(b"blob"), b"blob".to_vec());
        db.commit_revision(
            b"head1",
            &[(p.clone(), rec.clone())],
            std::slice::from_ref(&blob),
        )
        .unwrap();
        drop(db);
        let db = Db::open(&dir.path().join("db")).unwrap();
        let st = db.state().unwrap();
        assert_eq!(st.swarm_id, Some(swarm));
        assert_eq!(st.pinned_key, Some([3; 32]));
        assert_eq!(st.head.as_deref(), Some(&b"head1"[..]));
        assert_eq!(st.applying, None);
        db.begin_apply(2).unwrap();
        assert_eq!(db.state().unwrap().applying, Some(2));
        assert_eq!(db.state().unwrap().head.as_deref(), Some(&b"head1"[..]));
        assert_eq!(db.file_index().unwrap().get(&p), Some(&rec));
        assert_eq!(db.blob(&blob.0).unwrap(), Some(blob.1.clone()));
        db.commit_revision(b"head2", &[], &[]).unwrap();
        assert_eq!(
            db.state().unwrap().applying,
            None,
            "the commit ends the apply"
        );
        assert!(db.file_index().unwrap().is_empty());
        assert!(db.blob(&blob.0).unwrap().is_none());
    }

    /// The file index is written as a difference: an unchanged index writes nothing, a changed
    /// one writes the records that changed and removes those gone, and reads back as given.
    #[test]
    fn the_file_index_is_written_as_a_difference() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        let path = |s: &str| RelPath::new(s).unwrap();
        let first: Vec<_> = (0..100u8)
            .map(|n| (path(&format!("f{n}")), rec(n)))
            .collect();
        assert_eq!(db.update_file_index(&first).unwrap(), 100);
        let want: HashMap<_, _> = first.iter().cloned().collect();
        assert_eq!(
            db.file_index().unwrap(),
            want,
            "an empty index is written whole"
        );
        assert_eq!(
            db.update_file_index(&first).unwrap(),
            0,
            "unchanged: no write"
        );
        // One record changed, one gone, one new.
        let mut second = first.clone();
        second[3].1.mtime_ns = 1_000;
        second.remove(50);
        second.push((path("new"), rec(200)));
        assert_eq!(db.update_file_index(&second).unwrap(), 3);
        let want: HashMap<_, _> = second.iter().cloned().collect();
        assert_eq!(db.file_index().unwrap(), want);
        // A revision's commit writes its index the same way.
        db.commit_revision(b"head", &first, &[]).unwrap();
        let want: HashMap<_, _> = first.iter().cloned().collect();
        assert_eq!(db.file_index().unwrap(), want);
        assert_eq!(db.update_file_index(&first).unwrap(), 0);
    }

    /// A revision's records streamed from an apply are committed only once it says it is done:
    /// an apply that stops part way (its sender gone) commits nothing, not even the records it
    /// sent, and the apply stays begun.
    #[test]
    fn streamed_records_are_committed_only_when_the_apply_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        let path = |n: u8| RelPath::new(&format!("d/f{n}")).unwrap();
        let first: Vec<_> = (0..10u8).map(|n| (path(n), rec(n))).collect();
        db.commit_revision(b"head1", &first, &[]).unwrap();
        db.begin_apply(2).unwrap();
        // Five records of revision 2 sent, then the apply fails.
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let sender = std::thread::spawn(move || {
            for n in 20..25u8 {
                tx.send(Applying::Record(path(n), rec(n))).unwrap();
            }
        });
        let err = db.commit_revision_from(b"head2", &[], rx).unwrap_err();
        sender.join().unwrap();
        assert!(err.to_string().contains("nothing committed"), "{err}");
        let st = db.state().unwrap();
        assert_eq!(st.head.as_deref(), Some(&b"head1"[..]));
        assert_eq!(st.applying, Some(2), "the apply is still begun");
        let want: HashMap<_, _> = first.iter().cloned().collect();
        assert_eq!(db.file_index().unwrap(), want, "no record of it kept");
        // Done: revision 2 holds its records and nothing of revision 1's but the one it kept.
        let second: Vec<_> = [3u8, 30, 31].iter().map(|&n| (path(n), rec(n))).collect();
        let items = second
            .iter()
            .cloned()
            .map(|(p, r)| Applying::Record(p, r))
            .chain([Applying::Done]);
        let written = db.commit_revision_from(b"head2", &[], items).unwrap();
        assert_eq!(written, second, "the records come back as sent");
        let st = db.state().unwrap();
        assert_eq!(st.head.as_deref(), Some(&b"head2"[..]));
        assert_eq!(st.applying, None);
        let want: HashMap<_, _> = second.into_iter().collect();
        assert_eq!(db.file_index().unwrap(), want);
    }

    /// A database of format 1 (file hashes of the bytes) is brought to format 2 when opened:
    /// every record gets the hash of its chunk list, the rest stays; one written by a newer
    /// treecast is refused, naming its file and what to do.
    #[test]
    fn an_older_database_is_migrated_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let data = vec![5u8; 400_000];
        let chunked = crate::tree::chunk_reader(&data[..]).unwrap();
        let old = FileRecord {
            size: chunked.size,
            mtime_ns: 2,
            inode: 3,
            executable: false,
            hash: ContentHash::of(&data),
            chunks: chunked.chunks.clone(),
            checks: chunked.checks.clone(),
            dev: 4,
        };
        {
            // As a treecast of format 1 left it: no format key, records hashed by bytes.
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(KEY_HEAD, &b"head"[..])
                .unwrap();
            let bytes = postcard::to_stdvec(&old).unwrap();
            txn.open_table(FILES)
                .unwrap()
                .insert("a/b", bytes.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let db = Db::open(&path).unwrap();
        let index = db.file_index().unwrap();
        let rec = &index[&RelPath::new("a/b").unwrap()];
        assert_eq!(rec.hash, chunked.hash, "hashed by its chunk list");
        assert_eq!(
            FileRecord {
                hash: old.hash,
                ..rec.clone()
            },
            old,
            "nothing else changed"
        );
        assert_eq!(db.state().unwrap().head.as_deref(), Some(&b"head"[..]));
        {
            let txn = db.0.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(KEY_FORMAT, &(STATE_FORMAT + 1).to_le_bytes()[..])
                .unwrap();
            txn.commit().unwrap();
        }
        drop(db);
        let err = Db::open(&path).err().expect("a newer format is refused");
        let shown = err.to_string();
        assert!(
            shown.contains(&path.display().to_string()) && shown.contains("newer treecast"),
            "{shown}"
        );
        assert!(matches!(err, StoreError::NewerState { format: 3, .. }));
    }

    #[test]
    fn records_written_by_older_treecasts_still_decode() {
        let chunks = vec![crate::tree::ChunkRef {
            hash: ContentHash::of(b"x"),
            len: 1,
        }];
        let old = postcard::to_stdvec(&FileRecordV1 {
            size: 1,
            mtime_ns: -5,
            inode: 7,
            executable: true,
            hash: ContentHash::of(b"x"),
            chunks: chunks.clone(),
        })
        .unwrap();
        let rec = decode_record(&old).unwrap();
        assert_eq!((rec.size, rec.mtime_ns, rec.inode), (1, -5, 7));
        assert!(rec.executable);
        assert_eq!(rec.chunks, chunks);
        assert!(rec.checks.is_empty());
        let with_checks = postcard::to_stdvec(&FileRecordV2 {
            size: 1,
            mtime_ns: -5,
            inode: 7,
            executable: true,
            hash: ContentHash::of(b"x"),
            chunks: chunks.clone(),
            checks: vec![9],
        })
        .unwrap();
        let rec = decode_record(&with_checks).unwrap();
        assert_eq!((rec.inode, rec.dev, &rec.checks[..]), (7, 0, &[9][..]));
        let new = FileRecord { dev: 12, ..rec };
        let bytes = postcard::to_stdvec(&new).unwrap();
        assert_eq!(decode_record(&bytes).unwrap(), new);
        assert!(matches!(
            decode_record(&bytes[..20]),
            Err(StoreError::Corrupt(_))
        ));
    }
}
