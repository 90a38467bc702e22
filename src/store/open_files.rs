//! [`OpenFiles`]: a bounded set of open files, the least recently used closed first, so that
//! staging a revision of any number of files holds a fixed number of descriptors.
//!
//! Knows nothing of what the files hold: it opens (through the caller's function), keeps and
//! forgets. A file taken out is an `Arc`, so one closed here stays open for whoever still
//! writes to it, and closes when they are done.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// Open files by key, at most `cap` of them.
pub(super) struct OpenFiles<K> {
    cap: usize,
    lru: Mutex<Lru<K>>,
}

struct Lru<K> {
    /// Bumped on every use; a file's last use orders it in `by_use`.
    clock: u64,
    files: HashMap<K, (Arc<File>, u64)>,
    by_use: BTreeMap<u64, K>,
}

impl<K: Eq + Hash + Copy> OpenFiles<K> {
    pub(super) fn new(cap: usize) -> Self {
        OpenFiles {
            cap: cap.max(1),
            lru: Mutex::new(Lru {
                clock: 0,
                files: HashMap::new(),
                by_use: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lru<K>> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open file for `key`; opened with `open` (outside the lock) if it is not open.
    pub(super) fn get<E>(
        &self,
        key: K,
        open: impl FnOnce() -> Result<File, E>,
    ) -> Result<Arc<File>, E> {
        if let Some(file) = self.lock().touch(key) {
            return Ok(file);
        }
        let opened = Arc::new(open()?);
        let mut lru = self.lock();
        // Another thread may have opened it meanwhile: keep one.
        if let Some(file) = lru.touch(key) {
            return Ok(file);
        }
        while lru.files.len() >= self.cap {
            lru.close_oldest();
        }
        let at = lru.tick();
        lru.files.insert(key, (opened.clone(), at));
        lru.by_use.insert(at, key);
        Ok(opened)
    }

    /// Close the file for `key`, if open (here: users of it keep theirs).
    pub(super) fn close(&self, key: &K) {
        let mut lru = self.lock();
        if let Some((_, at)) = lru.files.remove(key) {
            lru.by_use.remove(&at);
        }
    }

    /// How many files are open here.
    pub(super) fn len(&self) -> usize {
        self.lock().files.len()
    }
}

impl<K: Eq + Hash + Copy> Lru<K> {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The file for `key`, marked as just used.
    fn touch(&mut self, key: K) -> Option<Arc<File>> {
        let now = self.tick();
        let (file, at) = self.files.get_mut(&key)?;
        let was = std::mem::replace(at, now);
        let file = file.clone();
        self.by_use.remove(&was);
        self.by_use.insert(now, key);
        Some(file)
    }

    fn close_oldest(&mut self) {
        if let Some((_, key)) = self.by_use.pop_first() {
            self.files.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_cap_and_closes_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let files = OpenFiles::new(2);
        let mut opened = Vec::new();
        let mut open = |k: u32| {
            files
                .get(k, || {
                    opened.push(k);
                    File::create(dir.path().join(k.to_string()))
                })
                .unwrap()
        };
        open(1);
        open(2);
        open(1); // 1 is now the more recent
        open(3); // closes 2
        open(1);
        open(2); // reopened, closes 3
        assert_eq!(opened, vec![1, 2, 3, 2]);
        assert_eq!(files.len(), 2);
        files.close(&1);
        assert_eq!(files.len(), 1);
    }

    #[test]
    fn a_file_closed_here_stays_open_for_its_user() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let files = OpenFiles::new(1);
        let path = dir.path().join("a");
        let a = files.get(1u8, || File::create(&path)).unwrap();
        files
            .get(2u8, || File::create(dir.path().join("b")))
            .unwrap();
        assert_eq!(files.len(), 1);
        (&*a).write_all(b"still open").unwrap();
        drop(a);
        assert_eq!(std::fs::read(&path).unwrap(), b"still open");
    }
}
