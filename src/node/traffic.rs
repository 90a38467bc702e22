//! Chunk bytes per peer and per source, and transfer rates over a sliding window.
//!
//! Lanes and chunk servers count every verified or sent chunk against the peer; the net loop
//! says whether that peer is the publisher and whether its connection goes through a relay,
//! which decides the source the bytes are counted under, and when its last connection closed.
//!
//! Per-peer state is bounded: the link of a peer gone for `LINK_LINGER` is dropped (its bytes
//! stay in the totals and per-source counts, so only its own row in `status` starts again from
//! zero), and at most `MAX_LINKS` links of gone peers are kept. A rate sample holds only the
//! peers that moved bytes since the one before, so idle peers cost nothing once a second.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Rates are measured over this window.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);

/// How long the link of a peer with no connection is kept (its bytes, and whether it is the
/// publisher or relayed, for when it comes back).
pub const LINK_LINGER: Duration = Duration::from_secs(300);

/// Most links of gone peers kept; past it the longest gone are dropped first.
pub const MAX_LINKS: usize = 1024;

/// Where chunk bytes came from or went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// The publisher, over a direct connection.
    Publisher,
    /// Another subscriber, over a direct connection.
    Peer,
    /// Any peer, through a relay.
    Relay,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::Publisher, Source::Peer, Source::Relay];

    pub fn name(self) -> &'static str {
        match self {
            Source::Publisher => "publisher",
            Source::Peer => "peer",
            Source::Relay => "relay",
        }
    }
}

/// Bytes up (sent) and down (received and verified).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ByteCounts {
    pub up: u64,
    pub down: u64,
}

impl ByteCounts {
    fn add(&mut self, n: ByteCounts) {
        self.up += n.up;
        self.down += n.down;
    }

    fn since(self, old: ByteCounts) -> ByteCounts {
        ByteCounts {
            up: self.up.saturating_sub(old.up),
            down: self.down.saturating_sub(old.down),
        }
    }
}

/// Bytes per second up and down.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ByteRates {
    pub up: f64,
    pub down: f64,
}

#[derive(Debug, Default, Clone)]
struct Link {
    relayed: bool,
    publisher: bool,
    bytes: ByteCounts,
    /// `bytes` at the last sample.
    sampled: ByteCounts,
    /// When its last connection closed; `None` while connected.
    gone_since: Option<Instant>,
}

impl Link {
    fn source(&self) -> Source {
        if self.relayed {
            Source::Relay
        } else if self.publisher {
            Source::Publisher
        } else {
            Source::Peer
        }
    }
}

#[derive(Debug)]
struct Sample {
    at: Instant,
    total: ByteCounts,
    /// Bytes each peer moved since the sample before; peers that moved none are left out.
    moved: Vec<(PeerId, ByteCounts)>,
}

#[derive(Debug, Default)]
struct Inner {
    links: HashMap<PeerId, Link>,
    by_source: HashMap<Source, ByteCounts>,
    total: ByteCounts,
    samples: VecDeque<Sample>,
    rate: ByteRates,
    peer_rates: HashMap<PeerId, ByteRates>,
}

impl Inner {
    /// Drop the links of peers gone for `LINK_LINGER`, and the longest gone past `MAX_LINKS`.
    fn prune(&mut self, now: Instant) {
        self.links.retain(|_, l| {
            l.gone_since
                .is_none_or(|t| now.saturating_duration_since(t) < LINK_LINGER)
        });
        let gone = self.links.values().filter(|l| l.gone_since.is_some());
        if gone.count() <= MAX_LINKS {
            return;
        }
        let mut gone: Vec<(Instant, PeerId)> = self
            .links
            .iter()
            .filter_map(|(p, l)| Some((l.gone_since?, *p)))
            .collect();
        gone.sort_unstable_by_key(|(t, _)| *t);
        for (_, p) in &gone[..gone.len() - MAX_LINKS] {
            self.links.remove(p);
        }
    }
}

/// Shared byte accounting of one node.
#[derive(Debug, Default)]
pub struct Traffic {
    inner: Mutex<Inner>,
}

/// A copy of the accounting at one moment.
#[derive(Debug, Clone, Default)]
pub struct TrafficSnapshot {
    pub total: ByteCounts,
    pub rate: ByteRates,
    pub by_source: Vec<(Source, ByteCounts)>,
    pub peers: HashMap<PeerId, (ByteCounts, ByteRates)>,
}

impl Traffic {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `n` chunk bytes sent to `peer`.
    pub fn sent(&self, peer: PeerId, n: u64) {
        self.count(peer, ByteCounts { up: n, down: 0 });
    }

    /// `n` verified chunk bytes received from `peer`.
    pub fn received(&self, peer: PeerId, n: u64) {
        self.count(peer, ByteCounts { up: 0, down: n });
    }

    /// Chunk bytes moved with `peer` so far (0 for a peer never seen, or gone long enough to
    /// be forgotten).
    pub fn moved_with(&self, peer: &PeerId) -> ByteCounts {
        self.lock()
            .links
            .get(peer)
            .map_or_else(ByteCounts::default, |l| l.bytes)
    }

    fn count(&self, peer: PeerId, n: ByteCounts) {
        let mut inner = self.lock();
        let link = inner.links.entry(peer).or_default();
        link.bytes.add(n);
        let source = link.source();
        inner.by_source.entry(source).or_default().add(n);
        inner.total.add(n);
    }

    /// What the net loop knows of `peer`: its connection goes through a relay (told while a
    /// connection is up, so it also brings back a gone peer); it is the publisher. `None`
    /// leaves that fact as it was.
    pub fn set_link(&self, peer: PeerId, relayed: Option<bool>, publisher: Option<bool>) {
        let mut inner = self.lock();
        let link = inner.links.entry(peer).or_default();
        if let Some(r) = relayed {
            link.relayed = r;
            link.gone_since = None;
        }
        if let Some(p) = publisher {
            link.publisher = p;
        }
    }

    /// The last connection to `peer` closed at `now`: its link goes `LINK_LINGER` later unless
    /// it comes back.
    pub fn gone(&self, peer: PeerId, now: Instant) {
        if let Some(link) = self.lock().links.get_mut(&peer) {
            link.gone_since = Some(now);
        }
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let inner = self.lock();
        let sampled = inner.samples.back().map_or(0, |s| s.moved.len());
        (inner.links.len(), sampled)
    }

    /// Take a sample for the rates, and drop links of peers gone a while; call about once a
    /// second.
    pub fn sample(&self, now: Instant) {
        let mut inner = self.lock();
        let moved = inner
            .links
            .iter_mut()
            .filter(|(_, l)| l.bytes != l.sampled)
            .map(|(p, l)| {
                let n = l.bytes.since(l.sampled);
                l.sampled = l.bytes;
                (*p, n)
            })
            .collect();
        let sample = Sample {
            at: now,
            total: inner.total,
            moved,
        };
        while inner
            .samples
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.at) > RATE_WINDOW)
        {
            inner.samples.pop_front();
        }
        inner.samples.push_back(sample);
        let (rate, peer_rates) = rates(&inner.samples);
        inner.rate = rate;
        inner.peer_rates = peer_rates;
        inner.prune(now);
    }

    pub fn snapshot(&self) -> TrafficSnapshot {
        let inner = self.lock();
        let mut by_source: Vec<(Source, ByteCounts)> = Source::ALL
            .iter()
            .map(|s| (*s, inner.by_source.get(s).copied().unwrap_or_default()))
            .collect();
        by_source.sort_by_key(|(s, _)| *s);
        TrafficSnapshot {
            total: inner.total,
            rate: inner.rate,
            by_source,
            peers: inner
                .links
                .iter()
                .map(|(p, l)| {
                    let rate = inner.peer_rates.get(p).copied().unwrap_or_default();
                    (*p, (l.bytes, rate))
                })
                .collect(),
        }
    }
}

/// Rates from the oldest sample in the window to the newest: the total's, and each peer's
/// from what it moved in the samples after the oldest.
fn rates(samples: &VecDeque<Sample>) -> (ByteRates, HashMap<PeerId, ByteRates>) {
    let (Some(old), Some(new)) = (samples.front(), samples.back()) else {
        return Default::default();
    };
    if samples.len() < 2 {
        return Default::default();
    }
    let secs = new
        .at
        .saturating_duration_since(old.at)
        .as_secs_f64()
        .max(1e-3);
    let per = |n: ByteCounts| ByteRates {
        up: n.up as f64 / secs,
        down: n.down as f64 / secs,
    };
    let mut moved: HashMap<PeerId, ByteCounts> = HashMap::new();
    for (p, n) in samples.iter().skip(1).flat_map(|s| &s.moved) {
        moved.entry(*p).or_default().add(*n);
    }
    let peers = moved.into_iter().map(|(p, n)| (p, per(n))).collect();
    (per(new.total.since(old.total)), peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_counted_under_the_source_of_the_link() {
        let t = Traffic::default();
        let (publisher, peer) = (PeerId::random(), PeerId::random());
        t.set_link(publisher, Some(false), Some(true));
        t.received(publisher, 100);
        t.received(peer, 10);
        t.sent(peer, 7);
        t.set_link(peer, Some(true), None);
        t.received(peer, 1);
        let s = t.snapshot();
        assert_eq!(s.total, ByteCounts { up: 7, down: 111 });
        let get = |src| s.by_source.iter().find(|(x, _)| *x == src).unwrap().1;
        assert_eq!(get(Source::Publisher), ByteCounts { up: 0, down: 100 });
        assert_eq!(get(Source::Peer), ByteCounts { up: 7, down: 10 });
        assert_eq!(get(Source::Relay), ByteCounts { up: 0, down: 1 });
        assert_eq!(s.peers[&peer].0, ByteCounts { up: 7, down: 11 });
    }

    #[test]
    fn rates_cover_the_window() {
        let t = Traffic::default();
        let peer = PeerId::random();
        let t0 = Instant::now();
        t.sample(t0);
        t.received(peer, 4000);
        t.sample(t0 + Duration::from_secs(2));
        let s = t.snapshot();
        assert_eq!(s.rate.down, 2000.0);
        assert_eq!(s.peers[&peer].1.down, 2000.0);
        // Samples older than the window stop counting.
        t.sample(t0 + Duration::from_secs(9));
        t.sample(t0 + Duration::from_secs(10));
        assert_eq!(t.snapshot().rate.down, 0.0);
    }

    #[test]
    fn links_of_peers_gone_a_while_are_dropped_and_their_bytes_stay_counted() {
        let t = Traffic::default();
        let (gone, back, here) = (PeerId::random(), PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        for p in [gone, back, here] {
            t.set_link(p, Some(false), Some(false));
            t.received(p, 10);
        }
        t.gone(gone, t0);
        t.gone(back, t0);
        t.set_link(back, Some(true), None); // reconnected through a relay
        t.set_link(gone, None, Some(false)); // a late session event is no connection
        t.sample(t0 + LINK_LINGER - Duration::from_secs(1));
        assert_eq!(t.snapshot().peers.len(), 3, "not yet");
        t.sample(t0 + LINK_LINGER + Duration::from_secs(1));
        let s = t.snapshot();
        assert!(!s.peers.contains_key(&gone));
        assert!(s.peers.contains_key(&back) && s.peers.contains_key(&here));
        assert_eq!(s.total, ByteCounts { up: 0, down: 30 });
        let get = |src| s.by_source.iter().find(|(x, _)| *x == src).unwrap().1;
        assert_eq!(get(Source::Peer), ByteCounts { up: 0, down: 30 });
        // The relayed link kept its flag: its next bytes count as relayed.
        t.received(back, 5);
        let s = t.snapshot();
        let relayed = s.by_source.iter().find(|(x, _)| *x == Source::Relay);
        assert_eq!(relayed.unwrap().1, ByteCounts { up: 0, down: 5 });
    }

    #[test]
    fn gone_links_are_capped_the_longest_gone_first() {
        let t = Traffic::default();
        let t0 = Instant::now();
        let peers: Vec<PeerId> = (0..MAX_LINKS + 10).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().enumerate() {
            t.sent(*p, 1);
            t.gone(*p, t0 + Duration::from_millis(i as u64));
        }
        t.sample(t0 + Duration::from_secs(1));
        let s = t.snapshot();
        assert_eq!(s.peers.len(), MAX_LINKS);
        assert!(!s.peers.contains_key(&peers[9]) && s.peers.contains_key(&peers[10]));
        assert_eq!(s.total.up, (MAX_LINKS + 10) as u64);
    }

    #[test]
    fn samples_hold_only_the_peers_that_moved_bytes() {
        let t = Traffic::default();
        let t0 = Instant::now();
        let busy = PeerId::random();
        for _ in 0..100 {
            t.set_link(PeerId::random(), Some(false), None);
        }
        t.sample(t0);
        t.received(busy, 3000);
        t.sample(t0 + Duration::from_secs(1));
        assert_eq!(t.held(), (101, 1));
        t.sample(t0 + Duration::from_secs(2));
        assert_eq!(t.held(), (101, 0));
        // The rate still spans the window: 3000 bytes over 2 s.
        assert_eq!(t.snapshot().peers[&busy].1.down, 1500.0);
    }
}
