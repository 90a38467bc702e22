//! Tickets parsed from arbitrary text: whatever parses prints back to a ticket that parses to
//! the same swarm and key.
#![no_main]
use libfuzzer_sys::fuzz_target;
use treecast::trust::Ticket;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(t) = text.parse::<Ticket>() {
            let again: Ticket = t.to_string().parse().expect("round trip");
            assert_eq!((again.swarm_id, again.publisher), (t.swarm_id, t.publisher));
        }
    }
});
