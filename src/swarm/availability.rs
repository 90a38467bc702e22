//! This node's availability while it downloads a revision: the revision's chunk order, which
//! availability bitfields (`Have`) index into, and our own bitfield over it.
//!
//! Owns the order (sorted, de-duplicated chunk hashes of the revision's files), our bits, and
//! whether they changed since they were last announced. It does not decide when to announce
//! (the fetch scheduler does) and sends nothing.

use std::collections::{HashMap, HashSet};

use crate::tree::ContentHash;

/// The chunk order of a revision and this node's bitfield over it.
#[derive(Debug, Default)]
pub struct OwnAvailability {
    pub revision: u64,
    order: Vec<ContentHash>,
    index: HashMap<ContentHash, usize>,
    bits: Vec<u8>,
    /// Changed since last announced (a new one starts so, to announce that we hold nothing).
    dirty: bool,
}

impl OwnAvailability {
    /// Nothing held yet of the chunks of `revision`.
    pub fn new(revision: u64, chunks: impl IntoIterator<Item = ContentHash>) -> Self {
        let mut order: Vec<ContentHash> = chunks.into_iter().collect();
        order.sort();
        order.dedup();
        let index = order.iter().enumerate().map(|(i, h)| (*h, i)).collect();
        let bits = vec![0u8; order.len().div_ceil(8)];
        OwnAvailability {
            revision,
            order,
            index,
            bits,
            dirty: true,
        }
    }

    /// We hold `hash` now (ignored if the revision has no such chunk).
    pub fn mark(&mut self, hash: &ContentHash) {
        if let Some(i) = self.index.get(hash) {
            self.bits[i / 8] |= 1 << (i % 8);
            self.dirty = true;
        }
    }

    /// The chunks a peer's `bitfield` over this revision says it holds.
    pub fn decode(&self, bitfield: &[u8]) -> HashSet<ContentHash> {
        self.order
            .iter()
            .enumerate()
            .filter(|(i, _)| bitfield.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
            .map(|(_, h)| *h)
            .collect()
    }

    /// Our bitfield, if it changed since the last time this was called.
    pub fn take_changed(&mut self) -> Option<Vec<u8>> {
        std::mem::take(&mut self.dirty).then(|| self.bits.clone())
    }

    /// The last bitfield taken was not sent: offer it again.
    pub fn unsent(&mut self) {
        self.dirty = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u8) -> ContentHash {
        ContentHash::of(&[i])
    }

    #[test]
    fn bits_follow_the_sorted_order_and_changes_are_taken_once() {
        let chunks = [h(1), h(2), h(3), h(2)];
        let mut own = OwnAvailability::new(7, chunks);
        assert_eq!(
            own.take_changed(),
            Some(vec![0]),
            "a new one is announced empty"
        );
        assert_eq!(own.take_changed(), None);
        let mut sorted = [h(1), h(2), h(3)];
        sorted.sort();
        own.mark(&sorted[2]);
        own.mark(&h(9));
        assert_eq!(own.take_changed(), Some(vec![0b100]));
        own.unsent();
        assert_eq!(own.take_changed(), Some(vec![0b100]), "offered again");
        let theirs = own.decode(&[0b011]);
        assert_eq!(theirs, sorted[..2].iter().copied().collect());
        assert!(
            own.decode(&[]).is_empty(),
            "a short bitfield holds nothing more"
        );
    }
}
