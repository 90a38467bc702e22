//! Sans-IO swarm logic: which chunk to request from which peer, and when to give up on one;
//! what the publisher seeds to whom; which peers hold the session slots, which session of a
//! peer is live and what the engine heard of it; which peers learned by peer exchange to dial,
//! and at which addresses; when to look for peers and heads in the DHT and dial bootstrap peers
//! again (discovery); which relays to reserve on, how others reach us, and when a relayed
//! connection gives way to a direct one (NAT).
//!
//! No sockets, no tokio, no clocks: callers pass `now`. Unit-tested step by step.

mod picker;

pub use picker::{Availability, Picker, PickerConfig};

mod bucket;
mod dials;
mod discovery;
mod nat;
mod seed;
mod sessions;
mod slots;

pub use bucket::TokenBucket;
pub use dials::{Dial, DialLimits, Learned, PexDials};
pub use discovery::{
    Answer, Discovery, DiscoveryAction, DiscoveryConfig, HeadLookups, NewHead, Seen, Timings, View,
};
pub use nat::{AutoNat, Nat, NatConfig, Reachability, Reserve, RESERVE_RETRY};
pub use seed::SeedPolicy;
pub use sessions::{Gone, Open, SessionTable};
pub use slots::{Admission, Slots};
