//! Who signs a swarm: a [`Lineage`] is the pinned key followed by every handover record
//! (`succession`); subscribers follow it and from then on refuse heads signed by an earlier key.

use uuid::Uuid;

use super::error::TrustError;
use super::head::{SignedHead, VerifiedHead};
use super::keys::PublisherPublicKey;
use super::succession::{Succession, MAX_SUCCESSION};

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

    /// Whether `l` is the next handover: for this swarm, from the key now current, at a later
    /// revision than the last handover, to a valid key not seen before. The signature is not
    /// checked here.
    fn continued_by(&self, l: &Succession, swarm_id: Uuid) -> bool {
        l.body.swarm_id == swarm_id
            && l.body.from == self.current().to_bytes()
            && l.body.from_revision > self.since()
            && !self.keys().any(|k| k == l.body.to)
            && PublisherPublicKey::from_bytes(l.body.to).is_ok()
    }

    /// Follow the records in `chain` that continue this lineage and verify, skipping the rest:
    /// for records of this node's own (the state database, `--succession`). Returns whether
    /// the lineage grew.
    pub fn extend(&mut self, chain: &[Succession], swarm_id: Uuid) -> bool {
        let mut grew = false;
        while self.links.len() < MAX_SUCCESSION {
            let next = chain
                .iter()
                .find(|l| self.continued_by(l, swarm_id) && l.valid(swarm_id));
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

    /// Follow the records of a head a peer sent. More than `MAX_SUCCESSION` records, or a
    /// record that would continue the lineage but does not verify, is an error (no honest node
    /// sends either) and nothing is followed. Records that do not continue the lineage cost no
    /// signature check; [`Lineage::verify`] drops them. Returns whether the lineage grew.
    pub fn follow(&mut self, chain: &[Succession], swarm_id: Uuid) -> Result<bool, TrustError> {
        if chain.len() > MAX_SUCCESSION {
            return Err(TrustError::SuccessionTooLong {
                len: chain.len(),
                max: MAX_SUCCESSION,
            });
        }
        let mut grown = self.clone();
        while grown.links.len() < MAX_SUCCESSION {
            let Some(l) = chain.iter().find(|l| grown.continued_by(l, swarm_id)) else {
                break;
            };
            if !l.valid(swarm_id) {
                let from = data_encoding::HEXLOWER.encode(&l.body.from);
                return Err(TrustError::ForgedSuccession { from });
            }
            grown.links.push(l.clone());
        }
        let grew = grown.links.len() > self.links.len();
        *self = grown;
        Ok(grew)
    }

    /// Check a head: signed by the key that held the swarm at its revision. A key handed over
    /// from can no longer sign revisions at or after its successor's first one; what it signed
    /// before stays valid history. The verified head carries the handovers from the first key
    /// to its signer as this lineage holds them, whatever the head came with: what a node keeps
    /// and passes on is never more than it could have built itself.
    pub fn verify(&self, mut head: SignedHead, swarm_id: Uuid) -> Result<VerifiedHead, TrustError> {
        let rev = head.body.revision;
        // Handovers are followed in increasing revision order: those in force are a prefix.
        let in_force = self
            .links
            .iter()
            .take_while(|l| rev >= l.body.from_revision)
            .count();
        let chain = &self.links[..in_force];
        let key = chain.last().map_or(self.pin, |l| {
            PublisherPublicKey::from_bytes(l.body.to).expect("checked when followed")
        });
        head.succession = chain.to_vec();
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
    use crate::trust::{HeadBody, PublisherKey};

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

    #[test]
    fn a_head_keeps_only_the_chain_to_its_signer() {
        let (a, b, c, m) = (
            PublisherKey::generate(),
            PublisherKey::generate(),
            PublisherKey::generate(),
            PublisherKey::generate(),
        );
        let swarm = Uuid::new_v4();
        let (ab, bc) = (
            Succession::sign(&a, swarm, b.public(), 5),
            Succession::sign(&b, swarm, c.public(), 9),
        );
        // Genuine records of a stranger, which continue nothing: no signature check, no error.
        let stray = Succession::sign(&m, swarm, a.public(), 2);
        let mut padded = head(&c, swarm, 9);
        padded.succession = vec![stray.clone(), bc.clone(), stray, ab.clone()];
        let mut lineage = Lineage::new(a.public());
        assert!(lineage.follow(&padded.succession, swarm).unwrap());
        let verified = lineage.verify(padded, swarm).unwrap();
        assert_eq!(verified.signed().succession, vec![ab.clone(), bc]);
        // A head from before the second handover carries the first one only.
        let older = lineage.verify(head(&b, swarm, 6), swarm).unwrap();
        assert_eq!(older.signed().succession, vec![ab]);
        assert!(lineage
            .verify(head(&a, swarm, 4), swarm)
            .unwrap()
            .signed()
            .succession
            .is_empty());
    }

    #[test]
    fn too_many_or_forged_records_are_an_error_and_nothing_is_followed() {
        let (a, b, m) = (
            PublisherKey::generate(),
            PublisherKey::generate(),
            PublisherKey::generate(),
        );
        let swarm = Uuid::new_v4();
        let ab = Succession::sign(&a, swarm, b.public(), 5);
        let mut lineage = Lineage::new(a.public());
        let long = vec![ab.clone(); MAX_SUCCESSION + 1];
        assert!(matches!(
            lineage.follow(&long, swarm),
            Err(TrustError::SuccessionTooLong { len, max: MAX_SUCCESSION }) if len == long.len()
        ));
        // Claims to come from b, the next key to hand over, but m signed it.
        let mut forged = Succession::sign(&m, swarm, m.public(), 7);
        forged.body.from = b.public().to_bytes();
        assert!(matches!(
            lineage.follow(&[ab.clone(), forged], swarm),
            Err(TrustError::ForgedSuccession { .. })
        ));
        assert_eq!(
            lineage,
            Lineage::new(a.public()),
            "followed part of a forged chain"
        );
        // The same over-long list on a head signed by the pinned key.
        let mut h = head(&a, swarm, 1);
        h.succession = long;
        assert!(matches!(
            h.clone().verify(&a.public(), swarm),
            Err(TrustError::SuccessionTooLong { .. })
        ));
        // A lineage verifies what it holds, so a head kept from before the cap loads again.
        assert!(lineage
            .verify(h, swarm)
            .unwrap()
            .signed()
            .succession
            .is_empty());
    }
}
