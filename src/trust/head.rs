//! The head: a small signed record naming one revision of one swarm.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::TrustError;
use super::keys::{PublisherKey, PublisherPublicKey};
use super::succession::{Succession, MAX_SUCCESSION};
use crate::tree::ContentHash;

const HEAD_DOMAIN: &[u8] = b"treecast/head/v1\0";

/// What the publisher signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadBody {
    pub swarm_id: Uuid,
    pub revision: u64,
    /// BLAKE3 of the encoded manifest.
    pub manifest_hash: ContentHash,
    pub manifest_size: u64,
    /// BLAKE3 of the manifest's chunk index (the list of its chunks).
    pub manifest_index_hash: ContentHash,
    pub created_unix_ms: u64,
    pub signer: [u8; 32],
}

/// A head with its signature, as it travels and is stored. Not yet trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    pub body: HeadBody,
    pub signature: Vec<u8>,
    /// The handovers from the swarm's first key to the signer (not signed by the head: each
    /// record carries the outgoing key's signature). Empty unless the swarm was handed over.
    pub succession: Vec<Succession>,
}

/// A head whose signature and swarm were checked against the pinned key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedHead(SignedHead);

impl HeadBody {
    fn signing_bytes(&self) -> Vec<u8> {
        let mut msg = HEAD_DOMAIN.to_vec();
        msg.extend(postcard::to_stdvec(self).expect("head body encodes"));
        msg
    }
}

impl SignedHead {
    /// Sign `body` (its `signer` is set to `key`'s public half).
    pub fn sign(mut body: HeadBody, key: &PublisherKey) -> VerifiedHead {
        body.signer = key.public().to_bytes();
        let signature = key.sign(&body.signing_bytes()).to_vec();
        VerifiedHead(SignedHead {
            body,
            signature,
            succession: Vec::new(),
        })
    }

    /// Check signer, signature and swarm, and that the handover records are within
    /// `MAX_SUCCESSION` (the records themselves are checked by [`super::Lineage`]).
    pub fn verify(
        self,
        pinned: &PublisherPublicKey,
        swarm_id: Uuid,
    ) -> Result<VerifiedHead, TrustError> {
        if self.succession.len() > MAX_SUCCESSION {
            return Err(TrustError::SuccessionTooLong {
                len: self.succession.len(),
                max: MAX_SUCCESSION,
            });
        }
        if self.body.signer != pinned.to_bytes() {
            let got = data_encoding::HEXLOWER.encode(&self.body.signer);
            return Err(TrustError::WrongSigner {
                pinned: pinned.to_string(),
                got,
            });
        }
        if !pinned.verify(&self.body.signing_bytes(), &self.signature) {
            return Err(TrustError::BadSignature);
        }
        if self.body.swarm_id != swarm_id {
            return Err(TrustError::WrongSwarm {
                expected: swarm_id,
                got: self.body.swarm_id,
            });
        }
        Ok(VerifiedHead(self))
    }

    /// Decode from postcard bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, TrustError> {
        postcard::from_bytes(bytes).map_err(|e| TrustError::HeadDecode(e.to_string()))
    }

    /// Encode as postcard bytes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("head encodes")
    }
}

impl VerifiedHead {
    pub fn body(&self) -> &HeadBody {
        &self.0.body
    }

    pub fn revision(&self) -> u64 {
        self.0.body.revision
    }

    /// Attach the handover records that lead from the swarm's first key to this head's signer.
    pub fn with_succession(mut self, chain: Vec<Succession>) -> Self {
        self.0.succession = chain;
        self
    }

    /// The signed form, for sending to peers.
    pub fn signed(&self) -> &SignedHead {
        &self.0
    }

    /// Re-create from storage that only ever held verified heads, checking again anyway.
    pub fn from_stored(
        bytes: &[u8],
        pinned: &PublisherPublicKey,
        swarm_id: Uuid,
    ) -> Result<Self, TrustError> {
        SignedHead::decode(bytes)?.verify(pinned, swarm_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(swarm_id: Uuid) -> HeadBody {
        HeadBody {
            swarm_id,
            revision: 7,
            manifest_hash: ContentHash::of(b"m"),
            manifest_size: 1,
            manifest_index_hash: ContentHash::of(b"i"),
            created_unix_ms: 0,
            signer: [0; 32],
        }
    }

    #[test]
    fn signed_head_verifies_and_tampering_is_caught() {
        let key = PublisherKey::generate();
        let swarm = Uuid::new_v4();
        let head = SignedHead::sign(body(swarm), &key);
        let signed = head.signed().clone();
        assert!(signed.clone().verify(&key.public(), swarm).is_ok());

        let mut tampered = signed.clone();
        tampered.body.revision = 8;
        assert!(matches!(
            tampered.verify(&key.public(), swarm),
            Err(TrustError::BadSignature)
        ));

        let other = PublisherKey::generate();
        assert!(matches!(
            signed.clone().verify(&other.public(), swarm),
            Err(TrustError::WrongSigner { .. })
        ));
        assert!(matches!(
            signed.verify(&key.public(), Uuid::new_v4()),
            Err(TrustError::WrongSwarm { .. })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let _ = SignedHead::decode(&bytes);
        }
    }
}
