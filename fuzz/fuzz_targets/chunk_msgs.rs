//! Chunk requests and chunk replies decoded from arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use treecast::wire::{self, ChunkRequest};

fuzz_target!(|data: &[u8]| {
    let _ = wire::decode::<ChunkRequest>(data);
    if let Ok((header, body)) = wire::decode_reply(data) {
        assert!(body.len() <= data.len());
        if !header.found {
            assert!(body.is_empty());
        }
    }
});
