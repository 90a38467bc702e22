//! Which provider records of other nodes the DHT store keeps: a sans-IO book of them, by key
//! and by the network each came from.
//!
//! kad's own store keeps the first 20 providers of a key and ignores every later one, and holds
//! at most 1,024 keys: twenty keys made in a second, or a thousand invented swarms, would shut
//! honest nodes out of the swarm's key for as long as the attacker refreshes them. Here a
//! record counts against the network of the connection it came on (an IPv4 /24, an IPv6 /48, or
//! the address itself where it is not global: loopback, LAN), as BitTorrent's DHT counts per
//! address:
//! - one network holds at most [`MAX_PROVIDERS_PER_NETWORK`] records over all keys;
//! - when a key's list is full, a newcomer from a network with fewer records there than the
//!   largest one takes the place of that network's newest record, so an attacker from a few
//!   networks holds at most their share of every list, and a node from any other network gets in;
//! - a provider proven useful to this node (in its own swarm: a live session that moved verified
//!   chunks, or holds the newest revision) is never evicted, and takes the place of one that is
//!   not;
//! - the keys of other swarms leave room for this node's own swarm's key;
//! - expired records leave the store (kad removes them only when a lookup asks for their key).
//!
//! A node only needs one honest provider to join a swarm (peer exchange finds the rest), so a
//! list spread over networks is what matters, not its length.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use libp2p::kad::RecordKey;
use libp2p::PeerId;

/// Providers kept per key (kad's replication factor: the most a lookup asks for).
pub const MAX_PROVIDERS_PER_KEY: usize = 20;
/// Provider records of one network, over all keys.
pub const MAX_PROVIDERS_PER_NETWORK: usize = 64;
/// Keys with providers (kad's store holds 1,024; one stays free for this node's own swarm).
pub const MAX_PROVIDER_KEYS: usize = 1_023;

/// The network a record counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Network {
    /// A global IPv4 address's /24.
    V4([u8; 3]),
    /// A global IPv6 address's /48.
    V6([u8; 6]),
    /// A loopback, LAN or other non-global address: itself.
    Host(IpAddr),
    /// The address is not known (a relayed connection names no address of the peer's own).
    Unknown,
}

impl Network {
    /// The network of a connection from `ip`.
    pub fn of(ip: Option<IpAddr>) -> Self {
        let Some(ip) = ip else {
            return Network::Unknown;
        };
        match ip.to_canonical() {
            IpAddr::V4(v4) if super::addr::is_global(IpAddr::V4(v4)) => {
                let [a, b, c, _] = v4.octets();
                Network::V4([a, b, c])
            }
            IpAddr::V6(v6) if super::addr::is_global(IpAddr::V6(v6)) => {
                let o = v6.octets();
                Network::V6([o[0], o[1], o[2], o[3], o[4], o[5]])
            }
            other => Network::Host(other),
        }
    }
}

/// What to do with a provider record offered for the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Store it (a new record, or a refresh of one held).
    Store,
    /// Remove `evict`'s record of the same key, then store it.
    Replace { evict: PeerId },
    /// Do not store it.
    Refuse(&'static str),
}

/// A provider record offered for the store.
#[derive(Debug, Clone)]
pub struct Offer<'a> {
    pub key: &'a RecordKey,
    pub provider: PeerId,
    /// The network of the connection it came on.
    pub network: Network,
    pub expires: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Held {
    provider: PeerId,
    network: Network,
    added: Instant,
    expires: Option<Instant>,
}

/// The provider records of other nodes held in the store.
#[derive(Debug, Default)]
pub struct ProviderBook {
    keys: HashMap<RecordKey, Vec<Held>>,
    per_network: HashMap<Network, usize>,
}

impl ProviderBook {
    /// Whether to store the record `offer`. `own` is this node's swarm key, and whether the
    /// key's list also holds this node's own record (kept by kad, never by this book).
    /// `useful` says whether a provider has proven useful to this node (a live session that
    /// sent verified chunks or holds the newest revision): its record is never evicted, and it
    /// takes the place of one that is not. On `Store` or `Replace` the book counts the record
    /// as held.
    pub fn admit(
        &mut self,
        offer: Offer<'_>,
        now: Instant,
        own: Option<(&RecordKey, bool)>,
        useful: impl Fn(&PeerId) -> bool,
    ) -> Admit {
        let Offer {
            key,
            provider,
            network,
            expires,
        } = offer;
        if let Some(held) = self
            .keys
            .get_mut(key)
            .and_then(|l| l.iter_mut().find(|h| h.provider == provider))
        {
            // A refresh keeps the record's place; it counts against the network it first came
            // from.
            held.expires = expires;
            return Admit::Store;
        }
        if self.per_network.get(&network).copied().unwrap_or(0) >= MAX_PROVIDERS_PER_NETWORK {
            return Admit::Refuse("its network is over its share of the store");
        }
        let mine = own.is_some_and(|(k, _)| k == key);
        let own_held = own.is_some_and(|(_, held)| held);
        if !self.keys.contains_key(key) && self.keys.len() >= MAX_PROVIDER_KEYS && !mine {
            return Admit::Refuse("the store holds providers of as many keys as it can");
        }
        let list = self.keys.entry(key.clone()).or_default();
        let room = MAX_PROVIDERS_PER_KEY - usize::from(mine && own_held);
        let mut admit = Admit::Store;
        if list.len() >= room {
            let mut counts: HashMap<Network, usize> = HashMap::new();
            for h in list.iter() {
                *counts.entry(h.network).or_default() += 1;
            }
            let ours = counts.get(&network).copied().unwrap_or(0);
            // Only records of providers not proven useful can be evicted. A useful newcomer
            // takes the place of any of them; another only that of the largest network's, and
            // only if that spreads the list further. Of those, the newest goes.
            let evictable = |h: &&Held| !useful(&h.provider);
            let largest = list
                .iter()
                .filter(evictable)
                .map(|h| counts[&h.network])
                .max()
                .unwrap_or(0);
            let newcomer_useful = useful(&provider);
            let evict = list
                .iter()
                .enumerate()
                .filter(|(_, h)| evictable(h) && counts[&h.network] == largest)
                .max_by_key(|(_, h)| h.added)
                .map(|(i, _)| i)
                .filter(|_| newcomer_useful || ours + 1 < largest);
            match evict {
                Some(i) => {
                    let gone = list.remove(i);
                    admit = Admit::Replace {
                        evict: gone.provider,
                    };
                    self.release(gone.network);
                }
                _ => return Admit::Refuse("the key's providers are full, spread over networks"),
            }
        }
        let list = self.keys.entry(key.clone()).or_default();
        list.push(Held {
            provider,
            network,
            added: now,
            expires,
        });
        *self.per_network.entry(network).or_default() += 1;
        admit
    }

    fn release(&mut self, network: Network) {
        if let Some(n) = self.per_network.get_mut(&network) {
            *n -= 1;
            if *n == 0 {
                self.per_network.remove(&network);
            }
        }
    }

    /// Take out the records expired at `now`: the (key, provider) pairs to remove from the
    /// store.
    pub fn expire(&mut self, now: Instant) -> Vec<(RecordKey, PeerId)> {
        let mut gone = Vec::new();
        let mut released = Vec::new();
        self.keys.retain(|key, list| {
            list.retain(|h| {
                let expired = h.expires.is_some_and(|e| e <= now);
                if expired {
                    gone.push((key.clone(), h.provider));
                    released.push(h.network);
                }
                !expired
            });
            !list.is_empty()
        });
        for n in released {
            self.release(n);
        }
        gone
    }

    /// Records held, over all keys.
    pub fn len(&self) -> usize {
        self.keys.values().map(Vec::len).sum()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The providers held for `key`, oldest first.
    pub fn providers(&self, key: &RecordKey) -> Vec<PeerId> {
        self.keys
            .get(key)
            .map_or_else(Vec::new, |l| l.iter().map(|h| h.provider).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(i: u32) -> RecordKey {
        RecordKey::new(&i.to_be_bytes())
    }

    fn offer(
        key: &RecordKey,
        provider: PeerId,
        network: Network,
        expires: Option<Instant>,
    ) -> Offer<'_> {
        Offer {
            key,
            provider,
            network,
            expires,
        }
    }

    fn net(i: u8) -> Network {
        Network::V4([203, 0, i])
    }

    struct Book {
        book: ProviderBook,
        t: Instant,
    }

    impl Book {
        fn new() -> Self {
            Book {
                book: ProviderBook::default(),
                t: Instant::now(),
            }
        }

        /// Offer a record a second after the last one, expiring in an hour.
        fn offer(&mut self, k: &RecordKey, p: PeerId, n: Network) -> Admit {
            self.t += Duration::from_secs(1);
            let expires = Some(self.t + Duration::from_secs(3600));
            self.book
                .admit(offer(k, p, n, expires), self.t, None, |_| false)
        }
    }

    /// The attack kad's store falls to: twenty Sybil keys from one network fill the swarm
    /// key's list first; an honest node from another network still gets in, in place of the
    /// Sybils' newest record, and another Sybil from their network does not.
    #[test]
    fn sybils_from_one_network_cannot_fill_a_key() {
        let mut b = Book::new();
        let k = key(1);
        let sybils: Vec<_> = (0..MAX_PROVIDERS_PER_KEY)
            .map(|_| PeerId::random())
            .collect();
        for s in &sybils {
            assert_eq!(b.offer(&k, *s, net(66)), Admit::Store);
        }
        assert!(matches!(
            b.offer(&k, PeerId::random(), net(66)),
            Admit::Refuse(_)
        ));
        let honest = PeerId::random();
        assert_eq!(
            b.offer(&k, honest, net(7)),
            Admit::Replace {
                evict: *sybils.last().unwrap()
            }
        );
        assert!(b.book.providers(&k).contains(&honest));
        assert_eq!(b.book.providers(&k).len(), MAX_PROVIDERS_PER_KEY);
        // The honest node refreshes without losing its place; Sybils come back and fail.
        assert_eq!(b.offer(&k, honest, net(7)), Admit::Store);
        assert!(matches!(
            b.offer(&k, *sybils.last().unwrap(), net(66)),
            Admit::Refuse(_)
        ));
    }

    /// Sybils from two networks hold at most a balanced share: newcomers from a third network
    /// keep getting in until every network holds about the same.
    #[test]
    fn a_full_list_moves_towards_an_even_spread_over_networks() {
        let mut b = Book::new();
        let k = key(1);
        for i in 0..MAX_PROVIDERS_PER_KEY {
            b.offer(&k, PeerId::random(), net(100 + (i % 2) as u8));
        }
        let mut admitted = 0;
        for _ in 0..MAX_PROVIDERS_PER_KEY {
            if !matches!(b.offer(&k, PeerId::random(), net(9)), Admit::Refuse(_)) {
                admitted += 1;
            }
        }
        // 20 over three networks: 7, 7, 6 at best; the newcomer network reaches 6 or 7.
        assert!((6..=7).contains(&admitted), "admitted {admitted}");
        assert_eq!(b.book.providers(&k).len(), MAX_PROVIDERS_PER_KEY);
    }

    /// One network cannot fill the store with the keys of invented swarms, and a full store
    /// still takes this node's own swarm's key.
    #[test]
    fn one_network_holds_its_share_of_the_store_and_the_own_key_always_fits() {
        let mut b = Book::new();
        let attacker = net(66);
        let taken = (0..MAX_PROVIDERS_PER_NETWORK as u32 + 10)
            .filter(|i| b.offer(&key(*i), PeerId::random(), attacker) == Admit::Store)
            .count();
        assert_eq!(taken, MAX_PROVIDERS_PER_NETWORK);
        assert_eq!(b.offer(&key(9999), PeerId::random(), net(1)), Admit::Store);

        // Many networks filling every key slot.
        let mut b = Book::new();
        for i in 0..MAX_PROVIDER_KEYS as u32 {
            let n = Network::V4([198, (i / 256) as u8, (i % 256) as u8]);
            assert_eq!(b.offer(&key(i), PeerId::random(), n), Admit::Store);
        }
        assert!(matches!(
            b.offer(&key(u32::MAX), PeerId::random(), net(1)),
            Admit::Refuse(_)
        ));
        let own = key(u32::MAX);
        b.t += Duration::from_secs(1);
        let got = b.book.admit(
            offer(&own, PeerId::random(), net(1), None),
            b.t,
            Some((&own, false)),
            |_| false,
        );
        assert_eq!(got, Admit::Store);
    }

    /// This node's own record in its swarm's list counts against the list's room.
    #[test]
    fn the_own_record_takes_a_place_in_the_own_list() {
        let mut b = Book::new();
        let own = key(1);
        for i in 0..MAX_PROVIDERS_PER_KEY {
            b.t += Duration::from_secs(1);
            let got = b.book.admit(
                offer(&own, PeerId::random(), net(i as u8), None),
                b.t,
                Some((&own, true)),
                |_| false,
            );
            let want_room = i < MAX_PROVIDERS_PER_KEY - 1;
            assert_eq!(got == Admit::Store, want_room, "record {i}: {got:?}");
        }
    }

    /// A provider proven useful gets into a full list, even from the network that fills it,
    /// and stays there while newcomers from other networks push that network's records out.
    #[test]
    fn useful_providers_get_in_and_stay() {
        let mut b = Book::new();
        let k = key(1);
        for _ in 0..MAX_PROVIDERS_PER_KEY {
            b.offer(&k, PeerId::random(), net(66));
        }
        let friend = PeerId::random();
        assert!(matches!(b.offer(&k, friend, net(66)), Admit::Refuse(_)));
        let useful = |p: &PeerId| *p == friend;
        let admit = |b: &mut Book, p: PeerId, n: Network| {
            b.t += Duration::from_secs(1);
            b.book.admit(offer(&k, p, n, None), b.t, None, useful)
        };
        assert!(matches!(
            admit(&mut b, friend, net(66)),
            Admit::Replace { .. }
        ));
        for i in 0..3 * MAX_PROVIDERS_PER_KEY {
            let got = admit(&mut b, PeerId::random(), net(i as u8));
            assert_ne!(got, Admit::Replace { evict: friend });
        }
        let held = b.book.providers(&k);
        assert!(held.contains(&friend));
        assert_eq!(held.len(), MAX_PROVIDERS_PER_KEY);
    }

    /// Expired records leave the book (to be removed from the store), and give their
    /// network's share back.
    #[test]
    fn expired_records_leave_and_free_their_share() {
        let mut b = Book::new();
        let t0 = b.t;
        let soon = Some(t0 + Duration::from_secs(10));
        let attacker = net(66);
        let mut first = Vec::new();
        for i in 0..MAX_PROVIDERS_PER_NETWORK as u32 {
            let p = PeerId::random();
            first.push((key(i), p));
            assert_eq!(
                b.book
                    .admit(offer(&key(i), p, attacker, soon), t0, None, |_| false),
                Admit::Store
            );
        }
        assert!(b.book.expire(t0 + Duration::from_secs(9)).is_empty());
        let mut gone = b.book.expire(t0 + Duration::from_secs(10));
        gone.sort_by_key(|(k, _)| k.to_vec());
        first.sort_by_key(|(k, _)| k.to_vec());
        assert_eq!(gone, first);
        assert!(b.book.is_empty());
        assert_eq!(b.offer(&key(5), PeerId::random(), attacker), Admit::Store);
    }

    #[test]
    fn networks_group_global_addresses_and_keep_local_ones_apart() {
        let n = |s: &str| Network::of(Some(s.parse().unwrap()));
        assert_eq!(n("203.0.113.5"), n("203.0.113.200"));
        assert_ne!(n("203.0.113.5"), n("203.0.114.5"));
        assert_eq!(n("2001:db8:1:2::1"), n("2001:db8:1:ffff::9"));
        assert_ne!(n("127.0.0.1"), n("127.0.0.2"));
        assert_ne!(n("192.168.1.2"), n("192.168.1.3"));
        assert_eq!(n("::ffff:203.0.113.5"), n("203.0.113.9"));
        assert_eq!(Network::of(None), Network::Unknown);
    }
}
