//! Signed heads decoded from arbitrary bytes, and checked against a key: a random input never
//! verifies.
#![no_main]
use libfuzzer_sys::fuzz_target;
use treecast::trust::{PublisherKey, SignedHead};

fuzz_target!(|data: &[u8]| {
    if let Ok(head) = SignedHead::decode(data) {
        static KEY: std::sync::OnceLock<treecast::trust::PublisherPublicKey> =
            std::sync::OnceLock::new();
        let key = KEY.get_or_init(|| PublisherKey::generate().public());
        let swarm = head.body.swarm_id;
        assert!(head.verify(key, swarm).is_err(), "a fuzzed head verified");
    }
});
