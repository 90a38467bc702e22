//! Tickets: one copy-paste string naming a swarm, its publisher key and where to dial.
//!
//! Format: `tc1` + lowercase base32 (no padding) of `postcard(TicketBody) ‖ checksum`, where
//! checksum is the first 4 bytes of BLAKE3("treecast/ticket/v1" ‖ body). The version prefix lets
//! a later format coexist; the checksum turns a typo into a clear error.

use std::fmt;
use std::str::FromStr;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::TrustError;
use super::keys::PublisherPublicKey;

const PREFIX: &str = "tc1";
const CHECKSUM_DOMAIN: &[u8] = b"treecast/ticket/v1";
const MAX_TICKET_ADDRS: usize = 16;

/// A parsed, checksum-verified ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub swarm_id: Uuid,
    pub publisher: PublisherPublicKey,
    pub addrs: Vec<Multiaddr>,
}

#[derive(Serialize, Deserialize)]
struct TicketBody {
    swarm_id: [u8; 16],
    publisher: [u8; 32],
    addrs: Vec<Vec<u8>>,
}

fn checksum(body: &[u8]) -> [u8; 4] {
    let mut h = blake3::Hasher::new();
    h.update(CHECKSUM_DOMAIN);
    h.update(body);
    let mut out = [0u8; 4];
    out.copy_from_slice(&h.finalize().as_bytes()[..4]);
    out
}

impl Ticket {
    /// What a ticket looks like, for messages that refuse something else.
    pub const SHAPE: &'static str = "`tc1` and then 85 or more of the letters a-z and digits 2-7";

    /// The same ticket without dial addresses.
    pub fn without_addrs(&self) -> Ticket {
        Ticket {
            addrs: Vec::new(),
            ..self.clone()
        }
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = TicketBody {
            swarm_id: *self.swarm_id.as_bytes(),
            publisher: self.publisher.to_bytes(),
            addrs: self
                .addrs
                .iter()
                .take(MAX_TICKET_ADDRS)
                .map(|a| a.to_vec())
                .collect(),
        };
        let mut bytes = postcard::to_stdvec(&body).expect("ticket encodes");
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum);
        write!(
            f,
            "{PREFIX}{}",
            data_encoding::BASE32_NOPAD.encode(&bytes).to_lowercase()
        )
    }
}

impl FromStr for Ticket {
    type Err = TrustError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let Some(rest) = s.strip_prefix(PREFIX) else {
            let got: String = s.chars().take(PREFIX.len()).collect();
            return Err(TrustError::TicketPrefix {
                expected: PREFIX,
                got,
            });
        };
        let bytes = data_encoding::BASE32_NOPAD
            .decode(rest.to_uppercase().as_bytes())
            .map_err(|_| TrustError::TicketEncoding)?;
        if bytes.len() < 4 {
            return Err(TrustError::TicketChecksum);
        }
        let (body, sum) = bytes.split_at(bytes.len() - 4);
        if checksum(body) != sum {
            return Err(TrustError::TicketChecksum);
        }
        let body: TicketBody =
            postcard::from_bytes(body).map_err(|e| TrustError::TicketBody(e.to_string()))?;
        if body.addrs.len() > MAX_TICKET_ADDRS {
            return Err(TrustError::TicketBody("too many addresses".into()));
        }
        let addrs = body
            .addrs
            .into_iter()
            .map(|a| Multiaddr::try_from(a).map_err(|e| TrustError::TicketBody(e.to_string())))
            .collect::<Result<_, _>>()?;
        Ok(Ticket {
            swarm_id: Uuid::from_bytes(body.swarm_id),
            publisher: PublisherPublicKey::from_bytes(body.publisher)?,
            addrs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::PublisherKey;

    fn ticket() -> Ticket {
        Ticket {
            swarm_id: Uuid::new_v4(),
            publisher: PublisherKey::generate().public(),
            addrs: vec!["/ip4/127.0.0.1/udp/4433/quic-v1".parse().unwrap()],
        }
    }

    #[test]
    fn round_trips() {
        let t = ticket();
        let s = t.to_string();
        assert!(s.starts_with("tc1"));
        assert_eq!(s.parse::<Ticket>().unwrap(), t);
        assert_eq!(
            t.without_addrs()
                .to_string()
                .parse::<Ticket>()
                .unwrap()
                .addrs,
            vec![]
        );
    }

    #[test]
    fn tickets_have_the_shape_messages_describe() {
        let alphabet = "abcdefghijklmnopqrstuvwxyz234567";
        for t in [ticket().without_addrs(), ticket()] {
            let s = t.to_string();
            let rest = s.strip_prefix("tc1").expect("starts with tc1");
            assert!(rest.len() >= 85, "{s}");
            assert!(rest.chars().all(|c| alphabet.contains(c)), "{s}");
        }
        assert_eq!(ticket().without_addrs().to_string().len(), 3 + 85);
        assert!(Ticket::SHAPE.contains("`tc1` and then 85 or more"));
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let s = ticket().to_string();
        let alphabet = "abcdefghijklmnopqrstuvwxyz234567";
        for i in 3..s.len() {
            let orig = s.as_bytes()[i] as char;
            let replacement = alphabet.chars().find(|&c| c != orig).unwrap();
            let mut typo = s.clone();
            typo.replace_range(i..i + 1, &replacement.to_string());
            assert!(typo.parse::<Ticket>().is_err(), "typo at {i} accepted");
        }
    }

    #[test]
    fn wrong_prefix_and_truncation_are_clear_errors() {
        let s = ticket().to_string();
        assert!(matches!(
            s[1..].parse::<Ticket>(),
            Err(TrustError::TicketPrefix { .. })
        ));
        let err = s[..s.len() - 2].parse::<Ticket>().unwrap_err();
        assert!(
            matches!(err, TrustError::TicketChecksum | TrustError::TicketEncoding),
            "{err}"
        );
    }
}
