//! Chunk bytes per peer and per source, and transfer rates over a sliding window.
//!
//! Lanes and chunk servers count every verified or sent chunk against the peer; the net loop
//! says whether that peer is the publisher and whether its connection goes through a relay,
//! which decides the source the bytes are counted under.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Rates are measured over this window.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);

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
    peers: HashMap<PeerId, ByteCounts>,
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

    fn count(&self, peer: PeerId, n: ByteCounts) {
        let mut inner = self.lock();
        let link = inner.links.entry(peer).or_default();
        link.bytes.up += n.up;
        link.bytes.down += n.down;
        let source = link.source();
        let s = inner.by_source.entry(source).or_default();
        s.up += n.up;
        s.down += n.down;
        inner.total.up += n.up;
        inner.total.down += n.down;
    }

    /// What the net loop knows of `peer`: its connection goes through a relay; it is the
    /// publisher. `None` leaves that fact as it was.
    pub fn set_link(&self, peer: PeerId, relayed: Option<bool>, publisher: Option<bool>) {
        let mut inner = self.lock();
        let link = inner.links.entry(peer).or_default();
        if let Some(r) = relayed {
            link.relayed = r;
        }
        if let Some(p) = publisher {
            link.publisher = p;
        }
    }

    /// Take a sample for the rates; call about once a second.
    pub fn sample(&self, now: Instant) {
        let mut inner = self.lock();
        let sample = Sample {
            at: now,
            total: inner.total,
            peers: inner.links.iter().map(|(p, l)| (*p, l.bytes)).collect(),
        };
        while inner
            .samples
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.at) > RATE_WINDOW)
        {
            inner.samples.pop_front();
        }
        let (rate, peer_rates) = match inner.samples.front() {
            Some(old) => {
                let secs = now.saturating_duration_since(old.at).as_secs_f64();
                let per = |new: ByteCounts, old: ByteCounts| ByteRates {
                    up: new.up.saturating_sub(old.up) as f64 / secs.max(1e-3),
                    down: new.down.saturating_sub(old.down) as f64 / secs.max(1e-3),
                };
                let peers = sample
                    .peers
                    .iter()
                    .map(|(p, b)| (*p, per(*b, old.peers.get(p).copied().unwrap_or_default())))
                    .collect();
                (per(sample.total, old.total), peers)
            }
            None => (ByteRates::default(), HashMap::new()),
        };
        inner.rate = rate;
        inner.peer_rates = peer_rates;
        inner.samples.push_back(sample);
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
}
