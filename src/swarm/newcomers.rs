//! Which new session peers to announce to the other sessions, and when: the newcomers since the
//! last announcement go out together, at most one message per session every `every`.
//!
//! Each new session used to be announced at once to every other session in a message of its
//! own. When a swarm starts together, each node gets a few dozen sessions within seconds, so
//! a node sent about as many messages as sessions for each of them: in the 40-subscriber lab,
//! 41,000 one-peer messages (58,000 peer-exchange messages in all), up to 7,000 a second
//! across the swarm, in the seconds before any chunk moved, on two cores already full. Batched,
//! a node sends each session at most one announcement per `every`, naming everyone new since
//! the last (the receiver dials them through its own dial budget, as before).
//!
//! Sans-IO: the caller reports newcomers with `now`, sleeps until [`Newcomers::due`], and then
//! takes the batch.

use std::time::{Duration, Instant};

/// Newcomers not yet announced.
#[derive(Debug)]
pub struct Newcomers<P> {
    every: Duration,
    pending: Vec<P>,
    due: Option<Instant>,
}

impl<P: PartialEq> Newcomers<P> {
    /// Announcements at most every `every`.
    pub fn new(every: Duration) -> Self {
        Newcomers {
            every,
            pending: Vec::new(),
            due: None,
        }
    }

    /// `peer` started a session at `now`: it goes out with the next batch, due `every` after
    /// the first newcomer of the batch (a peer already pending is not listed twice).
    pub fn push(&mut self, peer: P, now: Instant) {
        if !self.pending.contains(&peer) {
            self.pending.push(peer);
        }
        self.due.get_or_insert(now + self.every);
    }

    /// When the pending batch is due, if there is one.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The batch, if it is due at `now` (then the next starts empty).
    pub fn take_due(&mut self, now: Instant) -> Option<Vec<P>> {
        if self.due.is_none_or(|d| now < d) {
            return None;
        }
        self.due = None;
        Some(std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newcomers_go_out_together_once_the_first_has_waited_the_interval() {
        let t0 = Instant::now();
        let every = Duration::from_millis(500);
        let mut n = Newcomers::new(every);
        assert_eq!(n.due(), None, "nothing pending");
        assert_eq!(n.take_due(t0), None);

        n.push('a', t0);
        n.push('b', t0 + Duration::from_millis(200));
        n.push('a', t0 + Duration::from_millis(300));
        assert_eq!(n.due(), Some(t0 + every), "due from the first newcomer");
        assert_eq!(n.take_due(t0 + Duration::from_millis(499)), None, "not yet");
        assert_eq!(n.take_due(t0 + every), Some(vec!['a', 'b']), "each once");
        assert_eq!(n.due(), None);
        assert_eq!(n.take_due(t0 + every * 2), None, "nothing new since");

        let t1 = t0 + Duration::from_secs(10);
        n.push('c', t1);
        assert_eq!(
            n.due(),
            Some(t1 + every),
            "a new batch counts from its own first"
        );
        assert_eq!(n.take_due(t1 + every), Some(vec!['c']));
    }
}
