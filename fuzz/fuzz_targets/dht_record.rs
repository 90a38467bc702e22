//! DHT head records checked as a DHT node checks a record offered for storage or found in a
//! lookup (`validate_head_record`): whatever is accepted is filed under its own swarm and
//! signer, verifies against that signer, carries at most `MAX_SUCCESSION` handover records and
//! is newer than the record held; a genuinely signed, well-filed record within the cap is
//! accepted unless an equal or newer one is held.
//!
//! Input: a mode byte, a key length byte, the key, a `u16` LE value length, the value, and
//! the rest as the record already held (if any). Mode bit 0 re-signs the value's head with a
//! fixed key (so that signed records reach the later checks), bit 1 files it under its own
//! head key, bit 2 re-signs the held record too, bit 3 means no record is held.
#![no_main]
use libfuzzer_sys::fuzz_target;
use libp2p::kad::{Record, RecordKey};
use treecast::config::MAX_SUCCESSION;
use treecast::net::{head_key, validate_head_record, HeadRecordError};
use treecast::trust::{PublisherKey, PublisherPublicKey, SignedHead};

fn fixed_key() -> &'static PublisherKey {
    static K: std::sync::OnceLock<PublisherKey> = std::sync::OnceLock::new();
    K.get_or_init(|| PublisherKey::from_secret([9; 32]))
}

/// `bytes` as a head, re-signed by the fixed key when it decodes.
fn resigned(bytes: &[u8]) -> Vec<u8> {
    match SignedHead::decode(bytes) {
        Ok(h) => {
            let mut signed = SignedHead::sign(h.body, fixed_key()).signed().clone();
            signed.succession = h.succession;
            signed.encode()
        }
        Err(_) => bytes.to_vec(),
    }
}

/// One input, cut into its parts.
struct Input<'a> {
    mode: u8,
    key: &'a [u8],
    value: &'a [u8],
    held: &'a [u8],
}

fn split(data: &[u8]) -> Option<Input<'_>> {
    let (&mode, rest) = data.split_first()?;
    let (&klen, rest) = rest.split_first()?;
    let (key, rest) = rest.split_at_checked(klen as usize)?;
    let (vlen, rest) = rest.split_at_checked(2)?;
    let (value, held) = rest.split_at_checked(u16::from_le_bytes([vlen[0], vlen[1]]) as usize)?;
    Some(Input {
        mode,
        key,
        value,
        held,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(Input {
        mode,
        key: key_bytes,
        value,
        held,
    }) = split(data)
    else {
        return;
    };
    let value = if mode & 1 != 0 {
        resigned(value)
    } else {
        value.to_vec()
    };
    let decoded = SignedHead::decode(&value).ok();
    let key = match (&decoded, mode & 2 != 0) {
        (Some(h), true) => head_key(&h.body.swarm_id, &h.body.signer),
        _ => RecordKey::new(&key_bytes),
    };
    let record = Record::new(key.clone(), value);
    let held = (mode & 8 == 0).then(|| {
        let bytes = if mode & 4 != 0 {
            resigned(held)
        } else {
            held.to_vec()
        };
        Record::new(key.clone(), bytes)
    });
    let held_revision = held
        .as_ref()
        .and_then(|r| SignedHead::decode(&r.value).ok())
        .map(|h| h.body.revision);

    match validate_head_record(&record, held.as_ref()) {
        Ok(head) => {
            assert_eq!(Some(&head), decoded.as_ref());
            assert_eq!(head_key(&head.body.swarm_id, &head.body.signer), key);
            assert!(head.succession.len() <= MAX_SUCCESSION);
            let signer = PublisherPublicKey::from_bytes(head.body.signer).expect("a valid signer");
            assert!(head.clone().verify(&signer, head.body.swarm_id).is_ok());
            assert!(held_revision.is_none_or(|r| r < head.body.revision));
        }
        Err(HeadRecordError::NotNewer { revision, stored }) => {
            assert_eq!(Some(stored), held_revision);
            assert!(stored >= revision);
        }
        Err(HeadRecordError::Invalid(_)) => {
            // Signed by us, filed under its own key, within the cap: only a held record that
            // is as new or newer may refuse it, and that is `NotNewer`.
            let ours = decoded
                .as_ref()
                .is_some_and(|h| mode & 3 == 3 && h.body.signer == fixed_key().public().to_bytes());
            if let (true, Some(h)) = (ours, &decoded) {
                assert!(
                    h.succession.len() > MAX_SUCCESSION,
                    "a genuine record was refused"
                );
            }
        }
    }
});
