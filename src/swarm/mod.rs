//! Sans-IO swarm logic: which chunk to request from which peer, and when to give up on one.
//!
//! No sockets, no tokio, no clocks: callers pass `now`. Unit-tested step by step.

mod picker;

pub use picker::{Availability, Picker, PickerConfig};

mod bucket;
mod seed;

pub use bucket::TokenBucket;
pub use seed::SeedPolicy;
