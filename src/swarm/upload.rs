//! The upload budget: how many chunk bytes a node has on their way to its peers, and whether
//! it answers one more request now or tells the asker it is busy.
//!
//! A chunk sent whole to one receiver, which then passes it on, spreads far faster than one
//! split thirty ways (see the README's simulator section): so while the bytes a node has sent
//! and not yet heard acknowledged fill its budget, a further request from a peer is refused at
//! once, and the asker turns to another holder, as BitTorrent's choke does. A lone asker is
//! never refused (nobody else could use the uplink), unless another peer was refused lately:
//! then every asker waits its turn.
//!
//! Bytes count from when a reply frame is written until they have left: until the node's
//! connections have put as many bytes on the wire as were queued before them and in them (the
//! caller passes that count, `wire`, from its congestion controllers), or the asker
//! acknowledges the frame (its lane says "received through id N"), or `timeout` has passed.
//! The wire count is the node's, not the stream's: a frame counts as gone once the node has
//! sent its own bytes' worth after everything written before it, whichever connection sent
//! them.
//!
//! Sans-IO: the caller reports sends, acknowledgements and closed streams with `now` and the
//! wire count.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// One stream's reply frames not yet acknowledged.
#[derive(Debug)]
struct Stream<P> {
    peer: P,
    /// Each frame's last request id, its chunk bytes, when it was written, and the wire count
    /// by which it has left; oldest first.
    frames: VecDeque<(u32, u64, Instant, u64)>,
}

/// A node's upload budget, shared by every chunk stream it serves.
#[derive(Debug)]
pub struct UploadBudget<P> {
    budget: u64,
    wait: Duration,
    timeout: Duration,
    next_stream: u64,
    streams: HashMap<u64, Stream<P>>,
    total: u64,
    /// The wire count by which everything written so far has left.
    queue_end: u64,
    /// Peers refused as busy, and when last.
    refused: HashMap<P, Instant>,
}

impl<P: Clone + Eq + Hash> UploadBudget<P> {
    /// `budget` bytes in flight before askers are refused (0: no budget, never full); a
    /// refused peer counts as waiting for `wait`; a frame never acknowledged is given up after
    /// `timeout`.
    pub fn new(budget: u64, wait: Duration, timeout: Duration) -> Self {
        UploadBudget {
            budget: if budget == 0 { u64::MAX } else { budget },
            wait,
            timeout,
            next_stream: 0,
            streams: HashMap::new(),
            total: 0,
            queue_end: 0,
            refused: HashMap::new(),
        }
    }

    /// A chunk stream of `peer` opened: its handle for the calls below.
    pub fn open(&mut self, peer: P) -> u64 {
        let id = self.next_stream;
        self.next_stream += 1;
        self.streams.insert(
            id,
            Stream {
                peer,
                frames: VecDeque::new(),
            },
        );
        id
    }

    /// May `stream` send chunk bytes now, with `wire` bytes sent so far? False: it answers
    /// "busy", and its peer counts as waiting.
    pub fn may_send(&mut self, stream: u64, now: Instant, wire: u64) -> bool {
        self.left(wire);
        self.expire(now);
        let Some(peer) = self.streams.get(&stream).map(|s| s.peer.clone()) else {
            return true;
        };
        if self.total < self.budget {
            return true;
        }
        let wait = self.wait;
        self.refused
            .retain(|_, at| now.saturating_duration_since(*at) < wait);
        let others_sending = self
            .streams
            .values()
            .any(|s| s.peer != peer && !s.frames.is_empty());
        let others_waiting = self.refused.keys().any(|p| *p != peer);
        if others_sending || others_waiting {
            self.refused.insert(peer, now);
            return false;
        }
        true
    }

    /// `stream` wrote a reply frame of `bytes` chunk bytes whose last request id is `last_id`,
    /// with `wire` bytes sent so far.
    pub fn sent(&mut self, stream: u64, last_id: u32, bytes: u64, now: Instant, wire: u64) {
        if bytes == 0 {
            return;
        }
        if let Some(s) = self.streams.get_mut(&stream) {
            self.queue_end = self.queue_end.max(wire) + bytes;
            s.frames.push_back((last_id, bytes, now, self.queue_end));
            self.total += bytes;
        }
    }

    /// The node has sent `wire` bytes so far: frames queued within them have left.
    fn left(&mut self, wire: u64) {
        for s in self.streams.values_mut() {
            while let Some(&(_, bytes, _, leaves_at)) = s.frames.front() {
                if leaves_at > wire {
                    break;
                }
                s.frames.pop_front();
                self.total -= bytes;
            }
        }
    }

    /// `stream`'s peer has received the replies through request id `through`.
    pub fn received(&mut self, stream: u64, through: u32) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        while let Some(&(id, bytes, _, _)) = s.frames.front() {
            // Ids wrap: `id` is at or before `through` if it is less than half the space behind.
            if through.wrapping_sub(id) >= 1 << 31 {
                break;
            }
            s.frames.pop_front();
            self.total -= bytes;
        }
    }

    /// `stream` closed: its bytes no longer count.
    pub fn closed(&mut self, stream: u64) {
        if let Some(s) = self.streams.remove(&stream) {
            self.total -= s.frames.iter().map(|f| f.1).sum::<u64>();
        }
    }

    /// Chunk bytes sent and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.total
    }

    /// Give up frames older than `timeout`.
    fn expire(&mut self, now: Instant) {
        if self.total < self.budget {
            return;
        }
        for s in self.streams.values_mut() {
            while let Some(&(_, bytes, at, _)) = s.frames.front() {
                if now.saturating_duration_since(at) < self.timeout {
                    break;
                }
                s.frames.pop_front();
                self.total -= bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(1);
    const TIMEOUT: Duration = Duration::from_secs(30);

    fn budget() -> UploadBudget<&'static str> {
        UploadBudget::new(1000, WAIT, TIMEOUT)
    }

    #[test]
    fn a_lone_asker_is_never_refused() {
        let t0 = Instant::now();
        let mut b = budget();
        let a = b.open("a");
        let a2 = b.open("a");
        for id in 0..10 {
            assert!(b.may_send(a, t0, 0));
            b.sent(a, id, 600, t0, 0);
            assert!(b.may_send(a2, t0, 0), "its other stream too");
        }
        assert_eq!(b.in_flight(), 6000);
    }

    #[test]
    fn a_full_budget_refuses_a_second_peer_until_acknowledged() {
        let t0 = Instant::now();
        let mut b = budget();
        let a = b.open("a");
        let c = b.open("c");
        assert!(b.may_send(a, t0, 0));
        b.sent(a, 0, 600, t0, 0);
        assert!(b.may_send(c, t0, 0), "under budget: anyone");
        b.sent(c, 0, 600, t0, 0);
        assert!(!b.may_send(c, t0, 0), "full, and a has bytes out");
        assert!(!b.may_send(a, t0, 0), "full, and c has bytes out");
        b.received(a, 0);
        assert_eq!(b.in_flight(), 600);
        assert!(b.may_send(a, t0, 0), "under budget again");
    }

    #[test]
    fn a_budget_of_zero_is_none() {
        let t0 = Instant::now();
        let mut b = UploadBudget::new(0, WAIT, TIMEOUT);
        let a = b.open("a");
        let c = b.open("c");
        b.sent(a, 0, 1 << 40, t0, 0);
        assert!(b.may_send(c, t0, 0));
    }

    #[test]
    fn a_waiting_peer_stops_a_lone_sender_from_going_over() {
        let t0 = Instant::now();
        let mut b = budget();
        let a = b.open("a");
        let c = b.open("c");
        b.sent(a, 0, 1200, t0, 0);
        assert!(!b.may_send(c, t0, 0), "a fills the budget");
        assert!(!b.may_send(a, t0, 0), "c waits: a may not go on alone");
        let later = t0 + WAIT;
        assert!(
            b.may_send(a, later, 0),
            "c gave up waiting: a is alone again"
        );
    }

    #[test]
    fn acknowledgements_free_frames_in_order_across_the_id_wrap() {
        let t0 = Instant::now();
        let mut b = budget();
        let a = b.open("a");
        b.sent(a, u32::MAX - 1, 100, t0, 0);
        b.sent(a, u32::MAX, 100, t0, 0);
        b.sent(a, 3, 100, t0, 0);
        b.received(a, u32::MAX);
        assert_eq!(b.in_flight(), 100, "the two before the wrap");
        b.received(a, 2);
        assert_eq!(b.in_flight(), 100, "id 3 not yet");
        b.received(a, 3);
        assert_eq!(b.in_flight(), 0);
    }

    #[test]
    fn frames_leave_in_order_as_the_wire_count_passes_what_was_queued_before_them() {
        let t0 = Instant::now();
        let mut b = budget();
        let a = b.open("a");
        let c = b.open("c");
        b.sent(a, 0, 600, t0, 1000);
        b.sent(c, 0, 600, t0, 1100);
        assert!(
            !b.may_send(c, t0, 1500),
            "600 queued from 1000 leaves by 1600"
        );
        assert!(b.may_send(c, t0, 1600), "a's frame has left: 600 out");
        assert_eq!(b.in_flight(), 600);
        assert!(b.may_send(a, t0, 2199));
        assert_eq!(b.in_flight(), 600, "c's frame is still queued");
        b.may_send(a, t0, 2200);
        assert_eq!(b.in_flight(), 0, "c's frame queued behind a's left by 2200");
        b.sent(a, 1, 100, t0, 5000);
        b.may_send(a, t0, 5099);
        assert_eq!(
            b.in_flight(),
            100,
            "an idle queue starts again from the wire count"
        );
    }

    #[test]
    fn unacknowledged_frames_time_out_and_closed_streams_free_theirs() {
        let t0 = Instant::now();
        let mut b = budget();
        let a = b.open("a");
        let c = b.open("c");
        b.sent(a, 0, 1200, t0, 0);
        b.sent(c, 0, 300, t0 + Duration::from_secs(1), 0);
        assert!(!b.may_send(c, t0 + Duration::from_secs(2), 0));
        assert!(b.may_send(c, t0 + TIMEOUT, 0), "a's frame given up");
        assert_eq!(b.in_flight(), 300);
        b.closed(c);
        assert_eq!(b.in_flight(), 0);
    }
}
