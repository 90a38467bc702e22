//! The seeding policy of the publisher: send each chunk of a revision to as few subscribers as
//! it can, so that subscribers soon hold different chunks and trade them.
//!
//! A chunk already sent to one peer is refused to others for `hold` after that (the reply is
//! "not found": ask your peers, who will have announced it by then). The same peer may ask
//! again (its reply may have been lost), but that does not restart the hold: `hold` after the
//! first send anyone may ask, so a chunk whose first receiver vanished, or keeps asking for it
//! to keep it from everyone else, is never stuck.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::tree::ContentHash;

/// Sends remembered before old ones (past the hold) are forgotten.
const MAX_TRACKED: usize = 100_000;

/// Tracks what the seed sent to whom and when.
#[derive(Debug)]
pub struct SeedPolicy<P> {
    hold: Duration,
    sent: HashMap<ContentHash, (P, Instant)>,
}

impl<P: Clone + Eq + Hash> SeedPolicy<P> {
    pub fn new(hold: Duration) -> Self {
        SeedPolicy {
            hold,
            sent: HashMap::new(),
        }
    }

    /// Should the seed send `hash` to `peer` now? Records the send if so.
    pub fn should_serve(&mut self, peer: &P, hash: ContentHash, now: Instant) -> bool {
        let serve = match self.sent.get(&hash) {
            None => true,
            // A retry: served, and the hold keeps counting from the first send.
            Some((to, _)) if to == peer => return true,
            Some((_, at)) => now.saturating_duration_since(*at) >= self.hold,
        };
        if serve {
            if self.sent.len() >= MAX_TRACKED {
                let hold = self.hold;
                self.sent
                    .retain(|_, (_, at)| now.saturating_duration_since(*at) < hold);
            }
            self.sent.insert(hash, (peer.clone(), now));
        }
        serve
    }

    /// A new revision: forget what was sent.
    pub fn reset(&mut self) {
        self.sent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_goes_to_one_peer_then_others_wait_for_the_hold() {
        let t0 = Instant::now();
        let h = ContentHash::of(b"c");
        let mut s: SeedPolicy<u8> = SeedPolicy::new(Duration::from_secs(2));
        assert!(s.should_serve(&1, h, t0));
        assert!(!s.should_serve(&2, h, t0 + Duration::from_secs(1)));
        assert!(
            s.should_serve(&1, h, t0 + Duration::from_secs(1)),
            "same peer may retry"
        );
        assert!(
            s.should_serve(&1, h, t0 + Duration::from_millis(1900)),
            "and again"
        );
        assert!(
            s.should_serve(&2, h, t0 + Duration::from_millis(2000)),
            "retries do not restart the hold: it ends 2 s after the first send"
        );
        assert!(
            !s.should_serve(&1, h, t0 + Duration::from_secs(3)),
            "now 2's"
        );
        assert!(s.should_serve(&1, h, t0 + Duration::from_secs(4)));
        let other = ContentHash::of(b"d");
        assert!(s.should_serve(&3, other, t0));
        s.reset();
        assert!(s.should_serve(&2, other, t0));
    }
}
