//! Handover records decoded from arbitrary bytes, mixed with a genuine chain, followed by a
//! lineage: too many records is an error that changes nothing, a forged record is never
//! followed, and a genuine head verified afterwards carries the genuine chain to its signer and
//! nothing else (what a node keeps and forwards is never bigger than what it could build).
//!
//! Input: one byte choosing which genuine records join and where, then a postcard list of
//! records. A record whose `from` (or `to`) starts with an even byte (low bit clear) is re-addressed from (to)
//! one of the fixture's keys and put in its swarm, so that fuzzed records reach the signature
//! check instead of being skipped as strangers.
#![no_main]
use libfuzzer_sys::fuzz_target;
use treecast::config::MAX_SUCCESSION;
use treecast::tree::ContentHash;
use treecast::trust::{HeadBody, Lineage, PublisherKey, SignedHead, Succession, TrustError};

struct Fixture {
    swarm: uuid::Uuid,
    /// `keys[0]` is the pinned key; `chain[i]` hands over from `keys[i]` to `keys[i + 1]`.
    keys: Vec<PublisherKey>,
    chain: Vec<Succession>,
}

fn fixture() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let swarm = uuid::Uuid::from_bytes([7; 16]);
        let keys: Vec<PublisherKey> = (1..=4u8)
            .map(|i| PublisherKey::from_secret([i; 32]))
            .collect();
        let chain = keys
            .windows(2)
            .zip(1u64..)
            .map(|(w, i)| Succession::sign(&w[0], swarm, w[1].public(), 10 * i))
            .collect();
        Fixture { swarm, keys, chain }
    })
}

fn steer(f: &Fixture, r: &mut Succession) {
    let pick = |b: &[u8; 32]| f.keys[b[1] as usize % f.keys.len()].public().to_bytes();
    if r.body.from[0] & 1 == 0 {
        r.body.from = pick(&r.body.from);
        r.body.swarm_id = f.swarm;
    }
    if r.body.to[0] & 1 == 0 {
        r.body.to = pick(&r.body.to);
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(records) = Succession::from_text(text) {
            let again = Succession::from_text(&Succession::to_text(&records)).expect("round trip");
            assert_eq!(again, records);
        }
    }
    let Some((&mix, rest)) = data.split_first() else {
        return;
    };
    let Ok(mut list) = postcard::from_bytes::<Vec<Succession>>(rest) else {
        return;
    };
    list.iter_mut().for_each(|r| steer(f, r));
    for (i, genuine) in f.chain.iter().enumerate() {
        if mix & (1 << i) != 0 {
            let at = (mix as usize >> 3).wrapping_add(i * 5) % (list.len() + 1);
            list.insert(at, genuine.clone());
        }
    }

    let fresh = Lineage::new(f.keys[0].public());
    let mut extended = fresh.clone();
    extended.extend(&list, f.swarm);
    assert_eq!(extended.links(), &f.chain[..extended.links().len()]);

    let mut lineage = fresh.clone();
    match lineage.follow(&list, f.swarm) {
        Err(TrustError::SuccessionTooLong { len, max }) => {
            assert!(len == list.len() && len > max && max == MAX_SUCCESSION);
            assert_eq!(lineage, fresh, "an over-long list changed the lineage");
            return;
        }
        Err(TrustError::ForgedSuccession { .. }) => {
            assert_eq!(lineage, fresh, "a forged list changed the lineage");
            return;
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => {}
    }
    assert!(list.len() <= MAX_SUCCESSION);
    let links = lineage.links();
    assert_eq!(
        links,
        &f.chain[..links.len()],
        "followed a record not in the chain"
    );

    // A genuine head of the current key, carrying the fuzzed list: verified, it carries the
    // chain and nothing else.
    let signer = &f.keys[links.len()];
    assert_eq!(lineage.current(), signer.public());
    let body = HeadBody {
        swarm_id: f.swarm,
        revision: lineage.since() + u64::from(mix),
        manifest_hash: ContentHash::of(b"m"),
        manifest_size: 1,
        manifest_index_hash: ContentHash::of(b"i"),
        created_unix_ms: 0,
        signer: [0; 32],
    };
    let mut head: SignedHead = SignedHead::sign(body, signer).signed().clone();
    head.succession = list;
    let verified = lineage
        .verify(head, f.swarm)
        .expect("a genuine head verifies");
    assert_eq!(verified.signed().succession, links);
});
