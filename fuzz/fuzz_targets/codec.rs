//! The frame codec on arbitrary bytes cut into arbitrary reads: no panic, no
//! frame over the limit or with a terminator inside, no unfinished frame
//! kept past the limit, and the same frames however the input is cut.
#![no_main]

use bytes::BytesMut;
use chat::protocol::codec::{FrameCodec, FrameError};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const MAX: usize = 256;

/// Decodes `input` read `step` bytes at a time (all at once for 0); the
/// frames, and whether it ended in an error.
fn decode(input: &[u8], step: usize) -> (Vec<Vec<u8>>, bool) {
    let mut codec = FrameCodec::new(MAX);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let step = if step == 0 { input.len().max(1) } else { step };
    for piece in input.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => {
                    assert!(f.len() <= MAX, "frame over the limit");
                    assert!(!f.contains(&b'\n') && !f.contains(&0), "terminator inside");
                    frames.push(f.to_vec());
                }
                Ok(None) => {
                    assert!(buf.len() <= MAX, "unfinished frame kept past the limit");
                    break;
                }
                Err(FrameError::TooLong(_)) => return (frames, true),
                Err(e) => panic!("unexpected error {e}"),
            }
        }
    }
    (frames, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let (whole, whole_err) = decode(input, 0);
    let (cut, cut_err) = decode(input, usize::from(step % 17));
    if !whole_err && !cut_err {
        assert_eq!(whole, cut, "the frames depend on how the input was cut");
    }
});
