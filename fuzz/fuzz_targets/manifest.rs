//! Manifests decoded from arbitrary bytes: whatever is accepted has only valid, unique paths
//! and re-encodes to bytes that decode to the same manifest.
#![no_main]
use libfuzzer_sys::fuzz_target;
use treecast::tree::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        let mut seen = std::collections::HashSet::new();
        for e in m.entries() {
            assert!(treecast::tree::RelPath::new(e.path.as_str()).is_ok());
            assert!(seen.insert(e.path.as_str().to_string()), "duplicate path");
        }
        let again = Manifest::decode(&m.encode()).expect("round trip");
        assert_eq!(again.entries().len(), m.entries().len());
    }
});
