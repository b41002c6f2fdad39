//! Feeds arbitrary bytes to `airlock_proto::decode` (and `peek_message_type`);
//! whatever decodes must re-encode to a frame that decodes to the same value.
//! Run with `cargo fuzz run decode` from /work/main/fuzz (nightly toolchain).
#![no_main]

use airlock_proto::{decode, peek_message_type, DecodeOptions};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let peeked = peek_message_type(data);
    for verify_digest in [true, false] {
        let opts = DecodeOptions {
            max_frame_len: 1 << 20,
            verify_digest,
        };
        if let Ok(frame) = decode(Bytes::copy_from_slice(data), &opts) {
            assert_eq!(peeked.as_ref(), Some(&frame.message_type));
            let again = decode(frame.encode(true), &DecodeOptions::default())
                .expect("a decoded frame must re-encode to a valid frame");
            assert_eq!(again, frame);
            let lax = DecodeOptions {
                verify_digest: false,
                ..DecodeOptions::default()
            };
            assert_eq!(decode(frame.encode(false), &lax).as_ref(), Ok(&frame));
        }
    }
});
