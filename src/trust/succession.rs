//! Handover records: a succession record, signed by the swarm's current publisher key, names
//! the key that signs the swarm's revisions from a given revision on (see `lineage` for how
//! subscribers follow them).
//!
//! Records travel with heads (outside the signed body: each record is self-authenticating), so
//! a subscriber that was offline during a handover follows it from the first head of the new
//! publisher it sees. Because they are outside the signature, anyone can add records to a
//! genuine head: a head carries at most [`MAX_SUCCESSION`], a record that would continue the
//! lineage must verify, and a verified head carries only the chain from the swarm's first key
//! to its signer, as the lineage holds it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::TrustError;
use super::keys::{PublisherKey, PublisherPublicKey};

/// Most handover records a head may carry, and most handovers a swarm's lineage follows. A
/// swarm changes hands rarely; the cap bounds the signatures a head can make a node check. A
/// peer sending a head with more is banned like one sending a forged head.
pub const MAX_SUCCESSION: usize = 16;

const SUCCESSION_DOMAIN: &[u8] = b"treecast/succession/v1\0";

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

    /// For `swarm_id`, to another key, and signed by the key it hands over from.
    pub(super) fn valid(&self, swarm_id: Uuid) -> bool {
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
