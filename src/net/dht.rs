//! The DHT's keys and records: where a swarm's nodes provide, where its newest signed head is
//! stored, which head records are valid, and which records the store makes room for.

use libp2p::{kad, PeerId};

/// The DHT key of a swarm's newest signed head: BLAKE3("treecast/head/v1" ‖ uuid ‖ publisher
/// key). It names the key, so any DHT node can check a record without knowing the swarm.
pub fn head_key(swarm_id: &uuid::Uuid, publisher: &[u8; 32]) -> kad::RecordKey {
    let mut h = blake3::Hasher::new();
    h.update(b"treecast/head/v1");
    h.update(swarm_id.as_bytes());
    h.update(publisher);
    kad::RecordKey::new(h.finalize().as_bytes())
}

/// Check a head record offered for storage: its key must be the head key of the swarm and
/// signer it names, its signature must verify, and it must be newer than `existing`.
pub fn validate_head_record(
    record: &kad::Record,
    existing: Option<&kad::Record>,
) -> Result<crate::trust::SignedHead, HeadRecordError> {
    let invalid = |e: String| HeadRecordError::Invalid(e);
    let head =
        crate::trust::SignedHead::decode(&record.value).map_err(|e| invalid(e.to_string()))?;
    let body = head.body.clone();
    if head_key(&body.swarm_id, &body.signer) != record.key {
        return Err(invalid(
            "record key does not match the head's swarm and signer".into(),
        ));
    }
    let signer = crate::trust::PublisherPublicKey::from_bytes(body.signer)
        .map_err(|e| invalid(e.to_string()))?;
    head.clone()
        .verify(&signer, body.swarm_id)
        .map_err(|e| invalid(e.to_string()))?;
    if let Some(old) = existing.and_then(|r| crate::trust::SignedHead::decode(&r.value).ok()) {
        if old.body.revision >= body.revision {
            return Err(HeadRecordError::NotNewer {
                revision: body.revision,
                stored: old.body.revision,
            });
        }
    }
    Ok(head)
}

/// Why a head record was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadRecordError {
    /// Forged, damaged or misfiled: counts against the sender.
    #[error("{0}")]
    Invalid(String),
    /// Validly signed but not newer than the record held (republished or old): harmless.
    #[error("revision {revision} is not newer than the stored {stored}")]
    NotNewer { revision: u64, stored: u64 },
}

/// What to do with a valid record offered for the DHT store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Room {
    /// Store it.
    Store,
    /// Remove this record first, then store it.
    Evict(kad::RecordKey),
    /// Do not store it.
    Refuse(&'static str),
}

/// Whether the store, holding `held` and able to hold `capacity` records, takes `record`
/// from `source`. A record replacing one held always fits. Each sender may have at most
/// `MAX_RECORDS_PER_PEER` records stored here, so one peer cannot fill the store with heads of
/// swarms it invented; a full store refuses newcomers, except the head of this node's own
/// swarm (`own`), which takes the place of the record that expires first.
pub fn make_room<R: std::borrow::Borrow<kad::Record>>(
    held: impl IntoIterator<Item = R>,
    capacity: usize,
    record: &kad::Record,
    source: &PeerId,
    own: Option<&kad::RecordKey>,
) -> Room {
    let mine = own == Some(&record.key);
    let (mut count, mut from_source) = (0, 0);
    // The record that expires first, other than our own swarm's: the one to evict.
    let mut first_to_expire: Option<(Option<std::time::Instant>, kad::RecordKey)> = None;
    for held in held {
        let held = held.borrow();
        if held.key == record.key {
            return Room::Store;
        }
        count += 1;
        from_source += usize::from(held.publisher == Some(*source));
        if Some(&held.key) != own && first_to_expire.as_ref().is_none_or(|f| held.expires < f.0) {
            first_to_expire = Some((held.expires, held.key.clone()));
        }
    }
    if from_source >= crate::config::MAX_RECORDS_PER_PEER && !mine {
        return Room::Refuse("its sender is over its share of the store");
    }
    if count < capacity {
        return Room::Store;
    }
    match (mine, first_to_expire) {
        (true, Some((_, key))) => Room::Evict(key),
        _ => Room::Refuse("the store is full"),
    }
}

/// Kademlia protocol name: our own DHT, not the public IPFS one.
pub const KAD_PROTOCOL: &str = "/treecast/kad/1";

/// The DHT key under which the nodes of a swarm provide: BLAKE3("treecast/swarm/v1" ‖ uuid).
pub fn swarm_key(swarm_id: &uuid::Uuid) -> kad::RecordKey {
    let mut h = blake3::Hasher::new();
    h.update(b"treecast/swarm/v1");
    h.update(swarm_id.as_bytes());
    kad::RecordKey::new(h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One peer cannot fill the store; a full store still takes this node's own swarm's head,
    /// in place of the record that expires first.
    #[test]
    fn the_store_keeps_room_per_peer_and_for_its_own_swarm() {
        use crate::config::MAX_RECORDS_PER_PEER;
        let t0 = std::time::Instant::now();
        let record = |i: u32, from: PeerId| {
            let mut r = kad::Record::new(i.to_be_bytes().to_vec(), vec![]);
            r.publisher = Some(from);
            r.expires = Some(t0 + std::time::Duration::from_secs(u64::from(i)));
            r
        };
        let (sybil, honest) = (PeerId::random(), PeerId::random());
        let held: Vec<_> = (0..MAX_RECORDS_PER_PEER as u32)
            .map(|i| record(i, sybil))
            .collect();
        let room = |held: &[kad::Record], r: &kad::Record, from, own| {
            make_room(held.iter(), 100, r, from, own)
        };
        let next = record(1000, sybil);
        assert!(matches!(room(&held, &next, &sybil, None), Room::Refuse(_)));
        assert_eq!(room(&held, &next, &honest, None), Room::Store);
        assert_eq!(
            room(&held, &held[3], &sybil, None),
            Room::Store,
            "a newer copy"
        );
        // Full, from many peers: newcomers are refused, our own swarm's head is not.
        let full: Vec<_> = (0..100).map(|i| record(i, PeerId::random())).collect();
        let own = record(5000, honest);
        assert!(matches!(room(&full, &next, &honest, None), Room::Refuse(_)));
        let evict = room(&full, &own, &honest, Some(&own.key));
        assert_eq!(
            evict,
            Room::Evict(full[0].key.clone()),
            "the first to expire"
        );
    }

    #[test]
    fn head_records_over_the_handover_cap_are_refused() {
        use crate::config::MAX_SUCCESSION;
        use crate::trust::{HeadBody, PublisherKey, SignedHead, Succession};
        let key = PublisherKey::generate();
        let swarm = uuid::Uuid::new_v4();
        let body = HeadBody {
            swarm_id: swarm,
            revision: 3,
            manifest_hash: crate::tree::ContentHash::of(b"m"),
            manifest_size: 1,
            manifest_index_hash: crate::tree::ContentHash::of(b"i"),
            created_unix_ms: 0,
            signer: [0; 32],
        };
        let mut head = SignedHead::sign(body, &key).signed().clone();
        let record =
            |h: &SignedHead| kad::Record::new(head_key(&swarm, &h.body.signer), h.encode());
        assert!(validate_head_record(&record(&head), None).is_ok());
        let junk = Succession::sign(&key, swarm, PublisherKey::generate().public(), 1);
        head.succession = vec![junk; MAX_SUCCESSION + 1];
        assert!(matches!(
            validate_head_record(&record(&head), None),
            Err(HeadRecordError::Invalid(_))
        ));
    }
}
