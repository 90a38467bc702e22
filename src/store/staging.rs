//! The staging area: partial files of the revision being downloaded, in `.treecast/staging/`.
//!
//! Each staged file is named by its file hash and has a sidecar `<hash>.chunks` listing its
//! chunks, so that after a crash or a retarget every verified chunk already on disk is found
//! again by rehashing (no separate journal to keep consistent). Nothing here is visible in the
//! mirror until `apply_revision` renames it into place.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::error::{io_err, StoreError};
use super::private::private_dir;
use crate::tree::{read_check, ChunkRef, ContentHash};

/// Where each needed chunk goes: (file hash, offset, length), possibly several places.
pub type ChunkPositions = HashMap<ContentHash, Vec<(ContentHash, u64, u32)>>;

/// Mode of a staged file: its owner's alone, and writable until `install` sets the mirror's.
const STAGED_MODE: u32 = 0o600;
/// Names of copies of a staged file, made by `install`, start with this.
const COPY_PREFIX: &str = "tmp-";

/// Bytes written to a staged file after which its writeback is started in the background, so
/// that the final fsync has little left to do.
const WRITEBACK_EVERY: u64 = 16 << 20;

/// Open staged files of one target revision.
pub struct StagingArea {
    dir: PathBuf,
    files: HashMap<ContentHash, File>,
    unflushed: AtomicU64,
    /// Files whose writeback to start, for a thread of their own: starting writeback can block
    /// while the disk's queue is full, and chunk writes should not wait for that.
    writeback: std::sync::mpsc::SyncSender<File>,
    /// The [`read_check`] of every verified chunk staged, to index the files with.
    checks: Mutex<HashMap<ContentHash, u64>>,
}

impl StagingArea {
    /// Open the staging area for `wanted` files (file hash, size, chunks). Returns the area,
    /// where every needed chunk goes, and which chunks are already present and verified.
    /// Staged files of older targets are used as a chunk source, then removed.
    pub fn open(
        dir: &Path,
        wanted: &[(ContentHash, u64, Vec<ChunkRef>)],
    ) -> Result<(Self, ChunkPositions, HashSet<ContentHash>), StoreError> {
        private_dir(dir)?;
        let mut positions: ChunkPositions = HashMap::new();
        for (file, _, chunks) in wanted {
            let mut off = 0u64;
            for c in chunks {
                positions
                    .entry(c.hash)
                    .or_default()
                    .push((*file, off, c.len));
                off += c.len as u64;
            }
        }
        let wanted_set: HashSet<_> = wanted.iter().map(|w| w.0).collect();
        let (writeback, queue) = std::sync::mpsc::sync_channel::<File>(2);
        std::thread::Builder::new()
            .name("treecast-writeback".into())
            .spawn(move || {
                // Ends when the area, and with it the sender, is dropped.
                while let Ok(file) = queue.recv() {
                    start_writeback(&file);
                }
            })
            .map_err(io_err(dir))?;
        let mut area = StagingArea {
            dir: dir.to_owned(),
            files: HashMap::new(),
            unflushed: AtomicU64::new(0),
            writeback,
            checks: Mutex::default(),
        };
        let mut present = HashSet::new();
        for (hash, size, chunks) in wanted {
            let existed = area.path_of(hash).exists();
            let file = area.create(hash, *size, chunks)?;
            if existed {
                let valid = valid_chunks(&file, chunks);
                present.extend(valid.keys());
                area.checks_mut().extend(valid);
            }
            area.files.insert(*hash, file);
        }
        area.salvage_stale(&wanted_set, &positions, &mut present)?;
        Ok((area, positions, present))
    }

    fn path_of(&self, hash: &ContentHash) -> PathBuf {
        self.dir.join(hash.to_hex())
    }

    /// The staged file for `hash`.
    pub fn staged_path(&self, hash: &ContentHash) -> PathBuf {
        self.path_of(hash)
    }

    fn create(
        &self,
        hash: &ContentHash,
        size: u64,
        chunks: &[ChunkRef],
    ) -> Result<File, StoreError> {
        let path = self.path_of(hash);
        let sidecar = path.with_extension("chunks");
        std::fs::write(
            &sidecar,
            postcard::to_stdvec(chunks).expect("chunks encode"),
        )
        .map_err(io_err(&sidecar))?;
        make_writable(&path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(STAGED_MODE)
            .open(&path)
            .map_err(io_err(&path))?;
        file.set_len(size).map_err(io_err(&path))?;
        Ok(file)
    }

    /// Where `install` copies the staged file of `hash` for one of several paths that hold it.
    pub fn copy_path(&self, hash: &ContentHash) -> PathBuf {
        self.dir.join(format!("{COPY_PREFIX}{}", hash.to_hex()))
    }

    /// Copy still-needed chunks out of staged files of an older target, then delete them, and
    /// delete copies a killed `install` left behind.
    fn salvage_stale(
        &self,
        wanted: &HashSet<ContentHash>,
        positions: &ChunkPositions,
        present: &mut HashSet<ContentHash>,
    ) -> Result<(), StoreError> {
        let entries = std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(COPY_PREFIX) {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            if name.ends_with(".chunks") {
                continue;
            }
            let is_wanted = wanted.iter().any(|h| h.to_hex() == name);
            if is_wanted {
                continue;
            }
            let path = entry.path();
            let sidecar = path.with_extension("chunks");
            if let Some(chunks) = std::fs::read(&sidecar)
                .ok()
                .and_then(|b| postcard::from_bytes::<Vec<ChunkRef>>(&b).ok())
            {
                if let Ok(file) = File::open(&path) {
                    self.copy_needed(&file, &chunks, positions, present);
                }
            }
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&sidecar);
        }
        Ok(())
    }

    fn copy_needed(
        &self,
        src: &File,
        chunks: &[ChunkRef],
        positions: &ChunkPositions,
        present: &mut HashSet<ContentHash>,
    ) {
        let mut off = 0u64;
        for c in chunks {
            let at = off;
            off += c.len as u64;
            if present.contains(&c.hash) {
                continue;
            }
            let Some(places) = positions.get(&c.hash) else {
                continue;
            };
            let mut buf = vec![0u8; c.len as usize];
            if src.read_exact_at(&mut buf, at).is_err() || !c.hash.matches(&buf) {
                continue;
            }
            if self.write_chunk(&c.hash, places, &buf).is_ok() {
                present.insert(c.hash);
            }
        }
    }

    fn checks_mut(&self) -> std::sync::MutexGuard<'_, HashMap<ContentHash, u64>> {
        self.checks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The read check of a verified chunk staged here, if known.
    pub fn check_of(&self, hash: &ContentHash) -> Option<u64> {
        self.checks_mut().get(hash).copied()
    }

    /// The read checks of a file's `chunks`, all staged here; empty if one is not known.
    pub fn staged_checks(&self, chunks: &[ChunkRef]) -> Vec<u64> {
        let checks = self.checks_mut();
        chunks
            .iter()
            .map(|c| checks.get(&c.hash).copied())
            .collect::<Option<Vec<u64>>>()
            .unwrap_or_default()
    }

    /// Write `data`, verified against `hash`, to every place it belongs. Returns its read
    /// check.
    pub fn write_chunk(
        &self,
        hash: &ContentHash,
        places: &[(ContentHash, u64, u32)],
        data: &[u8],
    ) -> Result<u64, StoreError> {
        for (file, off, _) in places {
            let f = self
                .files
                .get(file)
                .ok_or_else(|| StoreError::Corrupt(format!("no staged file {file}")))?;
            f.write_all_at(data, *off)
                .map_err(io_err(&self.path_of(file)))?;
            let before = self
                .unflushed
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            if before + data.len() as u64 >= WRITEBACK_EVERY {
                self.unflushed.store(0, Ordering::Relaxed);
                // If the queue is full, writeback is behind anyway; `finish` starts this
                // file's before its fsync.
                if let Ok(file) = f.try_clone() {
                    let _ = self.writeback.try_send(file);
                }
            }
        }
        let check = read_check(data);
        self.checks_mut().insert(*hash, check);
        Ok(check)
    }

    /// Verify a complete staged file against its hash and fsync it.
    pub fn finish(&self, hash: &ContentHash) -> Result<(), StoreError> {
        let path = self.path_of(hash);
        let f = self
            .files
            .get(hash)
            .ok_or_else(|| StoreError::Corrupt(format!("no staged file {hash}")))?;
        // The disk writes what is still dirty while the file is hashed, so the fsync below has
        // less to wait for.
        start_writeback(f);
        // Mapped, not read: no copy out of the page cache; and hashed on every core, since
        // this runs once the transfer, which kept them busy, is over.
        let started = std::time::Instant::now();
        let mut hasher = blake3::Hasher::new();
        hasher.update_mmap_rayon(&path).map_err(io_err(&path))?;
        if ContentHash::from(hasher.finalize()) != *hash {
            return Err(StoreError::StagedMismatch(*hash));
        }
        let hashed = started.elapsed();
        f.sync_all().map_err(io_err(&path))?;
        tracing::debug!(file = %hash, ?hashed, synced = ?(started.elapsed() - hashed), "staged file finished");
        Ok(())
    }
}

/// Make the staged file at `path`, if there is one, owner-writable again: `install` makes it
/// read-only just before renaming it into the mirror, and a kill in between leaves it so. Its
/// verified chunks are still good, and opening it for writing would fail (`EACCES`) for ever.
fn make_writable(path: &Path) -> Result<(), StoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o777 != STAGED_MODE => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(STAGED_MODE))
                .map_err(io_err(path))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Ask the kernel to start writing `file`'s dirty pages out now, without waiting for it.
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is valid for the lifetime of `file`; the call only schedules I/O.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Chunks of `file` whose bytes match their hash, with their read checks.
fn valid_chunks(file: &File, chunks: &[ChunkRef]) -> HashMap<ContentHash, u64> {
    let mut out = HashMap::new();
    let mut off = 0u64;
    let mut buf = Vec::new();
    for c in chunks {
        let end = off + c.len as u64;
        // A chunk that lies wholly in a hole of the sparse staged file was never written:
        // skip reading and hashing it, so a restart costs what was fetched, not the file size.
        let written = match next_data(file, off) {
            Data::At(start) => start < end,
            Data::None => false,
            Data::Unknown => true,
        };
        if written {
            buf.resize(c.len as usize, 0);
            if file.read_exact_at(&mut buf, off).is_ok() && c.hash.matches(&buf) {
                out.insert(c.hash, read_check(&buf));
            }
        }
        off = end;
    }
    out
}

enum Data {
    /// The first byte of data at or after the offset.
    At(u64),
    /// Nothing but holes from the offset to the end.
    None,
    /// The file system cannot say.
    Unknown,
}

fn next_data(file: &File, off: u64) -> Data {
    use std::os::fd::AsRawFd;
    let Ok(off) = libc::off_t::try_from(off) else {
        return Data::Unknown;
    };
    // SAFETY: lseek on a file descriptor we own; it only moves the file offset, which
    // positional reads (read_exact_at) do not use.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, libc::SEEK_DATA) };
    if r >= 0 {
        return Data::At(r as u64);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENXIO) => Data::None,
        _ => Data::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::chunk_reader;

    fn noise(len: usize, seed: u8) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new()
            .update(&[seed])
            .finalize_xof()
            .fill(&mut out);
        out
    }

    #[test]
    fn resume_finds_verified_chunks_and_retarget_salvages() {
        let dir = tempfile::tempdir().unwrap();
        let data = noise(3 << 20, 1);
        let c = chunk_reader(&data[..]).unwrap();
        let wanted = vec![(c.hash, c.size, c.chunks.clone())];
        {
            let (area, pos, present) = StagingArea::open(dir.path(), &wanted).unwrap();
            assert!(present.is_empty());
            let first = c.chunks[0];
            area.write_chunk(&first.hash, &pos[&first.hash], &data[..first.len as usize])
                .unwrap();
        }
        let (area, _, present) = StagingArea::open(dir.path(), &wanted).unwrap();
        assert_eq!(present.len(), 1, "the one written chunk survives a restart");
        assert_eq!(
            area.check_of(&c.chunks[0].hash),
            Some(c.checks[0]),
            "and its read check is known again"
        );
        assert!(area.staged_checks(&c.chunks).is_empty(), "not all known");
        drop(area);

        // Retarget: a new file sharing all but the last chunk.
        let mut data2 = data.clone();
        let n = data2.len();
        data2[n - 10] ^= 1;
        let c2 = chunk_reader(&data2[..]).unwrap();
        let (_, _, present) =
            StagingArea::open(dir.path(), &[(c2.hash, c2.size, c2.chunks.clone())]).unwrap();
        assert_eq!(
            present.len(),
            1,
            "verified chunk moved over from the stale file"
        );
        assert!(
            !dir.path().join(c.hash.to_hex()).exists(),
            "stale file removed"
        );
    }

    #[test]
    fn a_staged_file_left_read_only_is_reused_and_leftover_copies_removed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = noise(3 << 20, 3);
        let c = chunk_reader(&data[..]).unwrap();
        let wanted = vec![(c.hash, c.size, c.chunks.clone())];
        {
            let (area, pos, _) = StagingArea::open(dir.path(), &wanted).unwrap();
            let mut off = 0;
            for ch in &c.chunks {
                let bytes = &data[off..off + ch.len as usize];
                area.write_chunk(&ch.hash, &pos[&ch.hash], bytes).unwrap();
                off += ch.len as usize;
            }
        }
        // Killed in `install` after the chmod, before the rename: the staged file is
        // read-only, and so is a copy made for a second path.
        let staged = dir.path().join(c.hash.to_hex());
        let copy = dir.path().join(format!("tmp-{}", c.hash.to_hex()));
        std::fs::copy(&staged, &copy).unwrap();
        for p in [&staged, &copy] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o444)).unwrap();
        }

        let (area, _, present) = StagingArea::open(dir.path(), &wanted).unwrap();
        let mode = std::fs::metadata(&staged).unwrap().permissions().mode();
        assert_ne!(
            mode & 0o200,
            0,
            "staged file is owner-writable again: {mode:o}"
        );
        let all: HashSet<_> = c.chunks.iter().map(|ch| ch.hash).collect();
        assert_eq!(present, all, "every verified chunk is found again");
        assert_eq!(area.staged_checks(&c.chunks), c.checks);
        assert!(!copy.exists(), "the leftover copy is removed");
    }

    #[test]
    fn finish_rejects_a_wrong_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = noise(100_000, 2);
        let c = chunk_reader(&data[..]).unwrap();
        let (area, pos, _) =
            StagingArea::open(dir.path(), &[(c.hash, c.size, c.chunks.clone())]).unwrap();
        assert!(matches!(
            area.finish(&c.hash),
            Err(StoreError::StagedMismatch(_))
        ));
        area.write_chunk(&c.chunks[0].hash, &pos[&c.chunks[0].hash], &data)
            .unwrap();
        area.finish(&c.hash).unwrap();
        assert_eq!(area.staged_checks(&c.chunks), c.checks);
    }
}
