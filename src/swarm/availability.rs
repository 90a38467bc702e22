//! Availability while a node downloads a revision: the revision's chunk order, which `Have`
//! messages index into; this node's bits over it and the messages that announce them (a full
//! map once, then what it gained since); and, per peer, whether the `Have`s it sent follow on
//! from each other ([`PeerView`]).
//!
//! Owns the order, our bits, the chunks gained since our last broadcast and the numbering of
//! our broadcasts (see the wire spec, "Availability"). It does not decide when to announce (the
//! fetch scheduler does), sends nothing, and keeps no peer's chunks (the picker does).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::tree::ContentHash;
use crate::wire::{ChunkSet, Have, MAX_HAVE_BITS, MAX_HAVE_INDICES};

/// The chunk order of a revision and this node's bitfield over it.
#[derive(Debug, Default)]
pub struct OwnAvailability {
    pub revision: u64,
    order: Vec<ContentHash>,
    index: HashMap<ContentHash, u32>,
    bits: Vec<u8>,
    /// Marked since the last broadcast (while no full map is due), in the order marked.
    added: Vec<u32>,
    /// Number of the last broadcast.
    seq: u32,
    /// The next broadcast is a full map: nothing was broadcast yet, or one was not sent.
    full_due: bool,
}

impl OwnAvailability {
    /// Nothing held yet of the chunks of `revision`.
    pub fn new(revision: u64, chunks: impl IntoIterator<Item = ContentHash>) -> Self {
        let mut order: Vec<ContentHash> = chunks.into_iter().collect();
        order.sort_unstable();
        order.dedup();
        let index = order
            .iter()
            .enumerate()
            .map(|(i, h)| (*h, i as u32))
            .collect();
        let bits = vec![0u8; order.len().div_ceil(8)];
        OwnAvailability {
            revision,
            order,
            index,
            bits,
            added: Vec::new(),
            seq: 0,
            full_due: true,
        }
    }

    /// Chunks in the revision's order.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The chunk at `index` of the order (one [`ChunkSet::indices`] checked).
    pub fn hash(&self, index: u32) -> Option<ContentHash> {
        self.order.get(index as usize).copied()
    }

    /// We hold `hash` now (ignored if the revision has no such chunk).
    pub fn mark(&mut self, hash: &ContentHash) {
        let Some(&i) = self.index.get(hash) else {
            return;
        };
        let (byte, bit) = (i as usize / 8, 1u8 << (i % 8));
        if self.bits[byte] & bit != 0 {
            return;
        }
        self.bits[byte] |= bit;
        if !self.full_due {
            self.added.push(i);
        }
    }

    /// What to broadcast, empty if nothing changed since the last broadcast: a full map the
    /// first time and after a broadcast was not sent, then the chunks gained since the last
    /// one (or a full map, when that is smaller).
    pub fn take_announcement(&mut self) -> Vec<Have> {
        if !self.full_due && self.added.is_empty() {
            return Vec::new();
        }
        let mut added = std::mem::take(&mut self.added);
        added.sort_unstable();
        let full = std::mem::take(&mut self.full_due) || gaps_bytes(&added) >= self.bits.len();
        if full {
            self.seq = self.seq.wrapping_add(1);
            return self.full_map();
        }
        added
            .chunks(MAX_HAVE_INDICES)
            .map(|part| {
                self.seq = self.seq.wrapping_add(1);
                Have {
                    revision: self.revision,
                    seq: self.seq,
                    sync: false,
                    chunks: ChunkSet::gaps(part),
                }
            })
            .collect()
    }

    /// Our full map as of our last broadcast (for a peer that asked): one message per
    /// [`MAX_HAVE_BITS`] bytes of bits at most, each the smaller of its bits (zero bytes at
    /// both ends left out) and its indices; parts holding nothing are left out, but the first.
    pub fn full_map(&self) -> Vec<Have> {
        self.bits
            .chunks(MAX_HAVE_BITS)
            .enumerate()
            .filter_map(|(k, part)| {
                let first = (k * MAX_HAVE_BITS * 8) as u32;
                let chunks = part_of_map(first, part);
                let empty = matches!(&chunks, ChunkSet::Bits { bits, .. } if bits.is_empty());
                (k == 0 || !empty).then_some(Have {
                    revision: self.revision,
                    seq: self.seq,
                    sync: true,
                    chunks,
                })
            })
            .collect()
    }

    /// The last announcement was not sent (to anyone): the next one is a full map.
    pub fn unsent(&mut self) {
        self.full_due = true;
        self.added.clear();
    }
}

/// Bytes of `indices` (ascending) written as gaps: a postcard varint each.
fn gaps_bytes(indices: &[u32]) -> usize {
    let mut prev = 0;
    indices
        .iter()
        .map(|&i| {
            let gap = i - prev;
            prev = i;
            (32 - gap.leading_zeros() as usize).div_ceil(7).max(1)
        })
        .sum()
}

/// One part of a full map: the bits of chunks `first..`, as the smaller of bits and gaps.
fn part_of_map(first: u32, part: &[u8]) -> ChunkSet {
    let Some(lo) = part.iter().position(|b| *b != 0) else {
        return ChunkSet::Bits {
            first,
            bits: Vec::new(),
        };
    };
    let hi = part.iter().rposition(|b| *b != 0).unwrap_or(lo);
    let bits = &part[lo..=hi];
    let first = first + lo as u32 * 8;
    let held: usize = bits.iter().map(|b| b.count_ones() as usize).sum();
    // A gap costs at least a byte: only a sparse part can be smaller as gaps.
    if held < bits.len() {
        let indices: Vec<u32> = (0..bits.len() * 8)
            .filter(|i| bits[i / 8] & (1 << (i % 8)) != 0)
            .map(|i| first + i as u32)
            .collect();
        if gaps_bytes(&indices) < bits.len() {
            return ChunkSet::gaps(&indices);
        }
    }
    ChunkSet::Bits {
        first,
        bits: bits.to_vec(),
    }
}

/// Whether the `Have`s one peer sent for a download's revision follow on from each other, and
/// when a full map was last asked of it.
#[derive(Debug, Clone, Default)]
pub struct PeerView {
    /// The number the next broadcast must carry; `None` until a full map came (or after one
    /// was missed).
    next: Option<u32>,
    asked: Option<Instant>,
}

impl PeerView {
    /// Take `have`'s number: false if one was missed before it (or no full map came yet), so
    /// a full map is to be asked for.
    pub fn follow(&mut self, have: &Have) -> bool {
        if have.sync {
            self.next = Some(have.seq.wrapping_add(1));
            self.asked = None;
            return true;
        }
        if self.next == Some(have.seq) {
            self.next = Some(have.seq.wrapping_add(1));
            return true;
        }
        self.next = None;
        false
    }

    /// True if this peer is out of step, and a full map was not asked of it within `retry`
    /// (then it counts as asked at `now`).
    pub fn ask_due(&mut self, now: Instant, retry: Duration) -> bool {
        let recent = self
            .asked
            .is_some_and(|at| now.saturating_duration_since(at) < retry);
        if self.next.is_some() || recent {
            return false;
        }
        self.asked = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;
    use std::collections::BTreeSet;

    fn h(i: u32) -> ContentHash {
        ContentHash::of(&i.to_le_bytes())
    }

    fn sorted(n: u32) -> Vec<ContentHash> {
        let mut v: Vec<_> = (0..n).map(h).collect();
        v.sort();
        v
    }

    /// What a receiver knows after `msgs`: the union of their indices.
    fn union(own: &OwnAvailability, msgs: &[Have]) -> BTreeSet<u32> {
        msgs.iter()
            .flat_map(|m| m.chunks.indices(own.len()).expect("valid"))
            .collect()
    }

    fn held(own: &OwnAvailability) -> BTreeSet<u32> {
        (0..own.len() as u32)
            .filter(|i| own.bits[*i as usize / 8] & (1 << (i % 8)) != 0)
            .collect()
    }

    #[test]
    fn a_full_map_first_then_only_what_was_gained() {
        let order = sorted(100);
        let mut own = OwnAvailability::new(7, order.iter().rev().copied().chain([order[3]]));
        assert_eq!(own.len(), 100, "de-duplicated");
        let first = own.take_announcement();
        assert_eq!(first.len(), 1, "empty: one message, announcing nothing");
        assert!(first[0].sync && first[0].seq == 1 && union(&own, &first).is_empty());
        assert!(own.take_announcement().is_empty(), "nothing changed");
        own.mark(&order[40]);
        own.mark(&order[2]);
        own.mark(&order[2]);
        own.mark(&h(1000));
        let delta = own.take_announcement();
        assert_eq!(delta.len(), 1);
        assert!(!delta[0].sync);
        assert_eq!(delta[0].seq, 2);
        assert_eq!(
            delta[0].chunks,
            ChunkSet::Gaps(vec![2, 38]),
            "ascending, as gaps"
        );
        own.unsent();
        own.mark(&order[50]);
        let again = own.take_announcement();
        assert!(
            again.iter().all(|m| m.sync && m.seq == 3),
            "a full map after a drop"
        );
        assert_eq!(union(&own, &again), [2, 40, 50].into());
    }

    #[test]
    fn a_full_map_of_ten_million_chunks_fits_the_frame_cap_in_ten_parts() {
        let n = 10_000_000u32;
        let mut own = OwnAvailability {
            revision: 1,
            bits: vec![0; (n as usize).div_ceil(8)],
            order: vec![ContentHash::of(b""); n as usize],
            ..OwnAvailability::default()
        };
        // Every other chunk held: bits are the smaller encoding.
        own.bits.iter_mut().for_each(|b| *b = 0x55);
        let map = own.full_map();
        assert_eq!(map.len(), 10);
        for m in &map {
            let frame = wire::encode(&wire::ControlMsg::Have(m.clone()));
            assert!(
                frame.len() <= crate::config::MAX_CONTROL_FRAME,
                "{}",
                frame.len()
            );
        }
        assert_eq!(union(&own, &map).len(), n as usize / 2);
        // A sparse map travels as indices, and its empty parts not at all.
        own.bits.iter_mut().for_each(|b| *b = 0);
        own.bits[625_000] = 0b1;
        own.bits[640_000] = 0b1000;
        let map = own.full_map();
        assert_eq!(
            map.len(),
            2,
            "the first part, and the part holding something"
        );
        assert!(matches!(&map[1].chunks, ChunkSet::Gaps(g) if g.len() == 2));
        assert_eq!(union(&own, &map), [5_000_000, 5_120_003].into());
    }

    /// Whatever is marked and whichever announcements are dropped, a receiver that follows the
    /// numbering and asks for a full map when it is out of step ends up knowing exactly what
    /// the sender holds.
    #[test]
    fn a_receiver_that_follows_the_numbering_misses_nothing() {
        let order = sorted(3000);
        let mut own = OwnAvailability::new(1, order.iter().copied());
        let mut view = PeerView::default();
        let mut known = BTreeSet::new();
        let t0 = Instant::now();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for step in 0..400u64 {
            for _ in 0..next(40) {
                own.mark(&order[next(3000) as usize]);
            }
            let now = t0 + Duration::from_secs(step);
            let msgs = match next(10) {
                0 => {
                    own.take_announcement();
                    own.unsent();
                    continue;
                }
                1 => {
                    own.take_announcement();
                    Vec::new()
                }
                _ => own.take_announcement(),
            };
            let delivered = !msgs.is_empty();
            let mut ask = false;
            for m in &msgs {
                ask |= !view.follow(m);
                known.extend(m.chunks.indices(own.len()).unwrap());
            }
            if ask && view.ask_due(now, Duration::from_secs(1)) {
                for m in own.full_map() {
                    assert!(view.follow(&m));
                    known.extend(m.chunks.indices(own.len()).unwrap());
                }
            }
            // A message lost unnoticed by the sender shows at the next one delivered.
            if delivered && view.next.is_some() {
                let pending: BTreeSet<u32> = own.added.iter().copied().collect();
                let told: BTreeSet<u32> = known.union(&pending).copied().collect();
                assert_eq!(told, held(&own), "in step, so nothing missed (step {step})");
            }
        }
    }

    #[test]
    fn a_peer_out_of_step_is_asked_again_only_after_the_retry() {
        let have = |seq, sync| Have {
            revision: 1,
            seq,
            sync,
            chunks: ChunkSet::Gaps(vec![]),
        };
        let t0 = Instant::now();
        let retry = Duration::from_secs(2);
        let mut view = PeerView::default();
        assert!(
            !view.follow(&have(4, false)),
            "an update before any full map"
        );
        assert!(view.ask_due(t0, retry));
        assert!(
            !view.ask_due(t0 + Duration::from_secs(1), retry),
            "asked already"
        );
        assert!(view.ask_due(t0 + retry, retry), "no full map came: again");
        assert!(view.follow(&have(5, true)));
        assert!(view.follow(&have(5, true)), "the parts of one full map");
        assert!(view.follow(&have(6, false)));
        assert!(!view.ask_due(t0 + retry * 2, retry), "in step");
        assert!(!view.follow(&have(8, false)), "7 was missed");
        assert!(view.ask_due(t0 + retry * 2, retry));
    }
}
