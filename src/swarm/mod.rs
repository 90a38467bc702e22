//! Sans-IO swarm logic: which chunk to request from whom, and when to give up on one; how a
//! download spreads its requests over chunk streams to its peers, and what it does when one
//! fails; what the publisher seeds to whom; which peers hold the session slots, which session of
//! a peer is live and what the engine heard of it; which peers learned by peer exchange to dial,
//! and at which addresses, and when to announce new ones; when to look for peers and heads in
//! the DHT and dial bootstrap peers again (discovery); which relays to reserve on, how others
//! reach us, and when a relayed connection gives way to a direct one (NAT).
//!
//! No sockets, no tokio, no clocks: callers pass `now`. Unit-tested step by step.

mod picker;

pub use picker::{Availability, Picker, PickerConfig};

mod availability;
mod bucket;
mod dials;
mod discovery;
mod lanes;
mod nat;
mod newcomers;
mod schedule;
mod seed;
mod sessions;
mod slots;
mod upload;
mod window;

pub use availability::{OwnAvailability, PeerView};
pub use bucket::TokenBucket;
pub use dials::{Dial, DialLimits, Learned, PexDials};
pub use discovery::{
    Answer, Discovery, DiscoveryAction, DiscoveryConfig, HeadLookups, NewHead, Seen, Timings, View,
};
pub use lanes::LaneId;
pub use nat::{AutoNat, Nat, NatConfig, Reachability, Reserve, RESERVE_RETRY};
pub use newcomers::Newcomers;
pub use schedule::{Action, FeedPeer, ScheduleConfig, Scheduler};
pub use seed::SeedPolicy;
pub use sessions::{dial_target, Gone, Open, Opening, SessionTable};
pub use slots::{Admission, Slots};
pub use upload::UploadBudget;
