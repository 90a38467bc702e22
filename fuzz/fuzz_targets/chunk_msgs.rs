//! Chunk requests and chunk replies decoded from arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use treecast::wire;

fuzz_target!(|data: &[u8]| {
    if let Ok(wire::LaneMsg::Ask(requests)) = wire::decode_lane_msg(data) {
        assert!(!requests.hashes.is_empty());
        assert!(requests.hashes.len() <= wire::MAX_CHUNKS_PER_FRAME);
    }
    if let Ok(replies) = wire::decode_replies(data) {
        let bytes: usize = replies.chunks.iter().flatten().map(|c| c.len()).sum();
        assert!(bytes <= data.len());
        assert!(!replies.chunks.is_empty());
        assert!(replies.chunks.len() <= wire::MAX_CHUNKS_PER_FRAME);
    }
});
