//! Sans-IO swarm logic: which chunk to request from which peer, when to give up on one, what
//! the publisher seeds to whom, and which peers hold the session slots.
//!
//! No sockets, no tokio, no clocks: callers pass `now`. Unit-tested step by step.

mod picker;

pub use picker::{Availability, Picker, PickerConfig};

mod bucket;
mod seed;
mod slots;

pub use bucket::TokenBucket;
pub use seed::SeedPolicy;
pub use slots::{Admission, Slots};
