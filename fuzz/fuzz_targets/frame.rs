//! Length-prefixed frames and the version handshake, read from arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    futures::executor::block_on(async {
        let mut r = futures::io::Cursor::new(data);
        // Frames up to a small cap, as the control stream reads them, until the input ends or
        // is refused.
        while let Ok(Some(frame)) = treecast::wire::read_frame(&mut r, 4096).await {
            assert!(frame.len() <= 4096);
        }
        let mut r = futures::io::Cursor::new(data);
        let _ = treecast::wire::read_handshake(&mut r, treecast::wire::PROTOCOL_VERSION).await;
    });
});
