//! Control messages (hello, head, peers, have, goodbye) decoded from arbitrary bytes; whatever
//! decodes must encode back to something that decodes to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use treecast::wire::{self, ControlMsg};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = wire::decode::<ControlMsg>(data) {
        let again: ControlMsg = wire::decode(&wire::encode(&msg)).expect("round trip");
        assert_eq!(format!("{msg:?}"), format!("{again:?}"));
    }
});
