//! Handover: a succession record, signed by the swarm's current publisher key, names the key
//! that signs the swarm's revisions from a given revision on. A [`Lineage`] is the pinned key
//! followed by every handover; subscribers follow it and from then on refuse heads signed by an
//! earlier key.
//!
//! Records travel with heads (outside the signed body: each record is self-authenticating), so
//! a subscriber that was offline during a handover follows it from the first head of the new
//! publisher it sees.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{PublisherKey, PublisherPublicKey, SignedHead, TrustError, VerifiedHead};

const SUCCESSION_DOMAIN: &[u8] = b"treecast/succession/v1\0";
/// Most handovers a lineage follows (a bound on what a peer can make us verify).
pub const MAX_LINKS: usize = 64;

/// What the outgoing key signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuccessionBody {
    pub swarm_id: Uuid,
    pub from: [u8; 32],
    pub to: [u8; 32],
    /// The first revision the new key signs.
    pub from_revision: u64,
    pub created_unix_ms: u64,
}

/// A succession record with the outgoing key's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Succession {
    pub body: SuccessionBody,
    pub signature: Vec<u8>,
}

fn signing_bytes(body: &SuccessionBody) -> Vec<u8> {
    let mut msg = SUCCESSION_DOMAIN.to_vec();
    msg.extend(postcard::to_stdvec(body).expect("succession encodes"));
    msg
}

impl Succession {
    /// Sign a handover of `swarm_id` from `key` to `to`, effective at `from_revision`.
    pub fn sign(
        key: &PublisherKey,
        swarm_id: Uuid,
        to: PublisherPublicKey,
        from_revision: u64,
    ) -> Self {
        let body = SuccessionBody {
            swarm_id,
            from: key.public().to_bytes(),
            to: to.to_bytes(),
            from_revision,
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let signature = key.sign(&signing_bytes(&body)).to_vec();
        Succession { body, signature }
    }

    fn valid(&self, swarm_id: Uuid) -> bool {
        self.body.swarm_id == swarm_id
            && self.body.from != self.body.to
            && PublisherPublicKey::from_bytes(self.body.from)
                .is_ok_and(|k| k.verify(&signing_bytes(&self.body), &self.signature))
    }

    /// A list of records as text (one hex line each), for `treecast handover --out`.
    pub fn to_text(chain: &[Succession]) -> String {
        chain
            .iter()
            .map(|s| {
                let bytes = postcard::to_stdvec(s).expect("succession encodes");
                format!("tcs1{}\n", data_encoding::HEXLOWER.encode(&bytes))
            })
            .collect()
    }

    /// Read records written by [`Succession::to_text`]; blank lines and `#` comments are skipped.
    pub fn from_text(text: &str) -> Result<Vec<Succession>, TrustError> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let hex = l
                    .strip_prefix("tcs1")
                    .ok_or_else(|| TrustError::Succession("a line without tcs1".into()))?;
                let bytes = data_encoding::HEXLOWER
                    .decode(hex.as_bytes())
                    .map_err(|e| TrustError::Succession(e.to_string()))?;
                postcard::from_bytes(&bytes).map_err(|e| TrustError::Succession(e.to_string()))
            })
            .collect()
    }
}

/// Who signs a swarm: the pinned key, then each key it was handed over to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pin: PublisherPublicKey,
    links: Vec<Succession>,
}

impl Lineage {
    pub fn new(pin: PublisherPublicKey) -> Self {
        Lineage {
            pin,
            links: Vec::new(),
        }
    }

    /// The pinned (first) key.
    pub fn pin(&self) -> PublisherPublicKey {
        self.pin
    }

    /// The handovers followed so far.
    pub fn links(&self) -> &[Succession] {
        &self.links
    }

    /// The key that signs new revisions now.
    pub fn current(&self) -> PublisherPublicKey {
        self.links.last().map_or(self.pin, |l| {
            PublisherPublicKey::from_bytes(l.body.to).expect("checked when followed")
        })
    }

    /// The first revision the current key may sign.
    pub fn since(&self) -> u64 {
        self.links.last().map_or(0, |l| l.body.from_revision)
    }

    fn keys(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        std::iter::once(self.pin.to_bytes()).chain(self.links.iter().map(|l| l.body.to))
    }

    /// Follow the records in `chain` that continue this lineage: each signed by the key then
    /// current, for this swarm, at a later revision than the last, to a key not seen before.
    /// Returns whether the lineage grew.
    pub fn extend(&mut self, chain: &[Succession], swarm_id: Uuid) -> bool {
        let mut grew = false;
        while self.links.len() < MAX_LINKS {
            let current = self.current().to_bytes();
            let since = self.since();
            let next = chain.iter().find(|l| {
                l.body.from == current
                    && l.body.from_revision > since
                    && !self.keys().any(|k| k == l.body.to)
                    && PublisherPublicKey::from_bytes(l.body.to).is_ok()
                    && l.valid(swarm_id)
            });
            match next {
                Some(l) => {
                    self.links.push(l.clone());
                    grew = true;
                }
                None => break,
            }
        }
        grew
    }

    /// Check a head: signed by the key that held the swarm at its revision. A key handed over
    /// from can no longer sign revisions at or after its successor's first one; what it signed
    /// before stays valid history.
    pub fn verify(&self, head: SignedHead, swarm_id: Uuid) -> Result<VerifiedHead, TrustError> {
        let rev = head.body.revision;
        let mut key = self.pin;
        for l in &self.links {
            if rev >= l.body.from_revision {
                key = PublisherPublicKey::from_bytes(l.body.to).expect("checked when followed");
            }
        }
        head.verify(&key, swarm_id)
    }

    /// The head is signed by a key this swarm was handed over from: outdated, not forged.
    pub fn is_earlier_key(&self, signer: &[u8; 32]) -> bool {
        *signer != self.current().to_bytes() && self.keys().any(|k| k == *signer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::HeadBody;

    fn head(key: &PublisherKey, swarm: Uuid, revision: u64) -> SignedHead {
        let body = HeadBody {
            swarm_id: swarm,
            revision,
            manifest_hash: crate::tree::ContentHash::of(b"m"),
            manifest_size: 1,
            manifest_index_hash: crate::tree::ContentHash::of(b"i"),
            created_unix_ms: 0,
            signer: [0; 32],
        };
        SignedHead::sign(body, key).signed().clone()
    }

    #[test]
    fn a_handover_moves_signing_to_the_new_key_and_refuses_the_old() {
        let (a, b, c) = (
            PublisherKey::generate(),
            PublisherKey::generate(),
            PublisherKey::generate(),
        );
        let swarm = Uuid::new_v4();
        let mut lineage = Lineage::new(a.public());
        assert!(lineage.verify(head(&a, swarm, 4), swarm).is_ok());
        let ab = Succession::sign(&a, swarm, b.public(), 5);
        let bc = Succession::sign(&b, swarm, c.public(), 9);
        // Records may arrive in any order; only a chain from the pin is followed.
        assert!(!lineage.clone().extend(std::slice::from_ref(&bc), swarm));
        assert!(lineage.extend(&[bc.clone(), ab.clone()], swarm));
        assert_eq!(lineage.current(), c.public());
        assert_eq!(lineage.since(), 9);
        assert!(lineage.verify(head(&c, swarm, 9), swarm).is_ok());
        // The old keys can sign nothing from their successors' revisions on.
        assert!(lineage.verify(head(&a, swarm, 10), swarm).is_err());
        assert!(lineage.verify(head(&b, swarm, 10), swarm).is_err());
        assert!(lineage.verify(head(&c, swarm, 8), swarm).is_err());
        assert!(lineage.is_earlier_key(&a.public().to_bytes()));
        assert!(!lineage.is_earlier_key(&PublisherKey::generate().public().to_bytes()));
        // What was signed before a handover stays valid as history.
        assert!(lineage.verify(head(&a, swarm, 4), swarm).is_ok());
        assert!(lineage.verify(head(&b, swarm, 6), swarm).is_ok());
        assert!(lineage.verify(head(&a, swarm, 6), swarm).is_err());
        // Following the same records again changes nothing.
        assert!(!lineage.extend(&[ab, bc], swarm));
    }

    #[test]
    fn forged_or_misplaced_records_are_not_followed() {
        let (a, b, m) = (
            PublisherKey::generate(),
            PublisherKey::generate(),
            PublisherKey::generate(),
        );
        let swarm = Uuid::new_v4();
        let mut lineage = Lineage::new(a.public());
        // Signed by a stranger, claiming to be from a.
        let mut forged = Succession::sign(&m, swarm, m.public(), 2);
        forged.body.from = a.public().to_bytes();
        // For another swarm; and backwards in revisions after a real handover.
        let other_swarm = Succession::sign(&a, Uuid::new_v4(), m.public(), 2);
        assert!(!lineage.extend(&[forged, other_swarm], swarm));
        assert!(lineage.extend(&[Succession::sign(&a, swarm, b.public(), 5)], swarm));
        assert!(!lineage.extend(&[Succession::sign(&b, swarm, m.public(), 3)], swarm));
        // Back to a key already in the lineage.
        assert!(!lineage.extend(&[Succession::sign(&b, swarm, a.public(), 8)], swarm));
        let text = Succession::to_text(lineage.links());
        assert_eq!(Succession::from_text(&text).unwrap(), lineage.links());
        assert!(Succession::from_text("tcs1zz").is_err());
    }
}
