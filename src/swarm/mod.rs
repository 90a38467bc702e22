//! Sans-IO swarm logic: which chunk to request from whom, and when to give up on one; how a
//! download spreads its requests over chunk streams to its peers, and what it does when one
//! fails; what the publisher seeds to whom; which peers hold the session slots; which peers
//! learned by peer exchange to dial, and at which addresses.
//!
//! No sockets, no tokio, no clocks: callers pass `now`. Unit-tested step by step.

mod picker;

pub use picker::{Availability, Picker, PickerConfig};

mod availability;
mod bucket;
mod dials;
mod lanes;
mod schedule;
mod seed;
mod slots;
mod window;

pub use availability::OwnAvailability;
pub use bucket::TokenBucket;
pub use dials::{Dial, DialLimits, Learned, PexDials};
pub use lanes::LaneId;
pub use schedule::{Action, FeedPeer, ScheduleConfig, Scheduler};
pub use seed::SeedPolicy;
pub use slots::{Admission, Slots};
