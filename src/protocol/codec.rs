//! Framing: where one message ends and the next begins.
//!
//! The original client ends each JSON text with a NUL byte; people typing into
//! `nc` end it with a newline. We accept either, bound the frame size, and
//! never rely on read boundaries: coalesced and fragmented input decode the
//! same. Everything we send ends with `\n`, which the original client's JSON
//! parser skips as whitespace and which lets any client split our stream.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Default largest frame we accept from a client, in bytes.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// Splits input on NUL or newline (bounded) and terminates output with newline.
///
/// Hand-written rather than tokio-util's `AnyDelimiterCodec`, which keeps
/// its delimiters in two heap vectors (two allocations in every
/// connection, for its whole life) and scans byte by byte; this one
/// searches with `memchr2`. It behaves the same: a frame is what precedes
/// a terminator, a frame of more than `max_frame` bytes is an error, and
/// after that error the rest of that frame is skipped.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    /// Where the search for a terminator resumes: the bytes before it
    /// hold none.
    next_index: usize,
    /// Skipping the rest of an over-long frame, up to its terminator.
    discarding: bool,
    max_frame: usize,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer sent more than the limit without a terminator. The stream
    /// cannot be resynchronised cheaply, so the connection is closed after
    /// an error reply.
    #[error("frame longer than {0} bytes")]
    TooLong(usize),
    /// A frame was begun and not finished within this time (a client
    /// trickling bytes to hold the connection and its buffer).
    #[error("frame not finished within {0:?}")]
    Stalled(std::time::Duration),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl FrameCodec {
    /// A codec refusing frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameCodec {
            next_index: 0,
            discarding: false,
            max_frame,
        }
    }

    /// The next chunk up to a terminator (blank ones included), if one is
    /// complete.
    fn chunk(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        loop {
            let read_to = self.max_frame.saturating_add(1).min(buf.len());
            let found = buf
                .get(self.next_index..read_to)
                .and_then(|tail| memchr::memchr2(b'\n', 0, tail))
                .map(|at| at + self.next_index);
            match (self.discarding, found) {
                (true, Some(at)) => {
                    buf.advance(at + 1);
                    self.discarding = false;
                    self.next_index = 0;
                }
                (true, None) => {
                    buf.advance(read_to);
                    self.next_index = 0;
                    if buf.is_empty() {
                        return Ok(None);
                    }
                }
                (false, Some(at)) => {
                    self.next_index = 0;
                    let mut chunk = buf.split_to(at + 1);
                    chunk.truncate(at);
                    return Ok(Some(chunk.freeze()));
                }
                (false, None) if buf.len() > self.max_frame => {
                    self.discarding = true;
                    return Err(FrameError::TooLong(self.max_frame));
                }
                (false, None) => {
                    self.next_index = read_to;
                    return Ok(None);
                }
            }
        }
    }
}

impl FrameCodec {
    /// The largest frame accepted.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        loop {
            match self.chunk(src)? {
                // `{..}\0\n` or `\r\n`-less blank lines yield empty chunks; they
                // carry nothing, so they are not frames.
                Some(chunk) if chunk.iter().all(u8::is_ascii_whitespace) => continue,
                other => return Ok(other),
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        loop {
            let chunk = match self.chunk(src)? {
                Some(chunk) => chunk,
                // What is left without a terminator is the last frame.
                None if !src.is_empty() => {
                    self.next_index = 0;
                    src.split_to(src.len()).freeze()
                }
                None => return Ok(None),
            };
            if !chunk.iter().all(u8::is_ascii_whitespace) {
                return Ok(Some(chunk));
            }
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        dst.reserve(item.len() + 1);
        dst.put_slice(&item);
        dst.put_u8(b'\n');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut FrameCodec, buf: &mut BytesMut) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(f) = codec.decode(buf).expect("decode") {
            out.push(f);
        }
        out
    }

    #[test]
    fn coalesced_frames_with_either_terminator_split_apart() {
        let mut c = FrameCodec::default();
        let mut buf = BytesMut::from(&b"{\"a\":1}\0{\"b\":2}\n\n\0{\"c\":3}\r\n"[..]);
        let frames = decode_all(&mut c, &mut buf);
        assert_eq!(frames.len(), 3);
        assert_eq!(&frames[0][..], b"{\"a\":1}");
        assert_eq!(&frames[1][..], b"{\"b\":2}");
        // a CR before the newline stays in the frame; JSON treats it as whitespace
        assert_eq!(&frames[2][..], b"{\"c\":3}\r");
    }

    #[test]
    fn fragmented_frame_waits_for_its_terminator() {
        let mut c = FrameCodec::default();
        let mut buf = BytesMut::from(&b"{\"msg"[..]);
        assert!(decode_all(&mut c, &mut buf).is_empty());
        buf.extend_from_slice(b"id\":1}");
        assert!(decode_all(&mut c, &mut buf).is_empty());
        buf.extend_from_slice(b"\0");
        assert_eq!(
            decode_all(&mut c, &mut buf),
            vec![Bytes::from_static(b"{\"msgid\":1}")]
        );
    }

    #[test]
    fn over_long_frame_is_an_error_not_a_buffer_that_grows() {
        let mut c = FrameCodec::new(16);
        let mut buf = BytesMut::from(&[b'x'; 17][..]);
        assert!(matches!(c.decode(&mut buf), Err(FrameError::TooLong(16))));
        // a frame of exactly the limit is fine
        let mut c = FrameCodec::new(16);
        let mut buf = BytesMut::from(&b"0123456789abcdef\n"[..]);
        assert_eq!(decode_all(&mut c, &mut buf).len(), 1);
    }

    #[test]
    fn unterminated_tail_is_a_frame_at_eof_and_output_is_newline_terminated() {
        let mut c = FrameCodec::default();
        let mut buf = BytesMut::from(&b"{\"x\":1}"[..]);
        assert_eq!(c.decode(&mut buf).expect("decode"), None);
        assert_eq!(
            c.decode_eof(&mut buf).expect("eof"),
            Some(Bytes::from_static(b"{\"x\":1}"))
        );
        let mut out = BytesMut::new();
        c.encode(Bytes::from_static(b"{}"), &mut out)
            .expect("encode");
        assert_eq!(&out[..], b"{}\n");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const MAX: usize = 64;

        /// A frame's body: no terminator inside, not only whitespace.
        fn body() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(
                any::<u8>().prop_filter("no terminator", |b| *b != b'\n' && *b != 0),
                1..MAX,
            )
            .prop_filter("not blank", |v| !v.iter().all(u8::is_ascii_whitespace))
        }

        /// Feeds `input` to a codec in pieces cut at `cuts`; returns the
        /// frames, the first error if any, and the longest unfinished frame
        /// the codec kept waiting for its terminator.
        fn feed(input: &[u8], cuts: &[usize]) -> (Vec<Bytes>, Option<FrameError>, usize) {
            let mut codec = FrameCodec::new(MAX);
            let mut buf = BytesMut::new();
            let (mut frames, mut held) = (Vec::new(), 0);
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
            points.push(input.len());
            points.sort_unstable();
            let mut at = 0;
            for p in points {
                buf.extend_from_slice(&input[at..p]);
                at = p;
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(f)) => frames.push(f),
                        Ok(None) => {
                            held = held.max(buf.len());
                            break;
                        }
                        Err(e) => return (frames, Some(e), held),
                    }
                }
            }
            (frames, None, held)
        }

        proptest! {
            /// However the stream is cut into reads, the frames come out
            /// whole, in order, whichever terminator each one has.
            #[test]
            fn frames_survive_any_split(
                frames in proptest::collection::vec((body(), any::<bool>()), 0..20),
                cuts in proptest::collection::vec(any::<usize>(), 0..30),
            ) {
                let mut input = Vec::new();
                for (f, nul) in &frames {
                    input.extend_from_slice(f);
                    input.push(if *nul { 0 } else { b'\n' });
                }
                let (got, err, _) = feed(&input, &cuts);
                prop_assert!(err.is_none());
                let want: Vec<&[u8]> = frames.iter().map(|(f, _)| f.as_slice()).collect();
                let got: Vec<&[u8]> = got.iter().map(|f| f.as_ref()).collect();
                prop_assert_eq!(got, want);
            }

            /// Any bytes at all: never a panic, never a frame over the limit
            /// or with a terminator inside, and an unfinished frame is never
            /// kept beyond the limit (it is an error instead).
            #[test]
            fn arbitrary_input_is_bounded(
                input in proptest::collection::vec(any::<u8>(), 0..1024),
                cuts in proptest::collection::vec(any::<usize>(), 0..30),
            ) {
                let (got, err, held) = feed(&input, &cuts);
                for f in &got {
                    prop_assert!(f.len() <= MAX);
                    prop_assert!(!f.contains(&b'\n') && !f.contains(&0));
                }
                if let Some(e) = err {
                    prop_assert!(matches!(e, FrameError::TooLong(MAX)));
                }
                prop_assert!(held <= MAX, "kept {} bytes of an unfinished frame", held);
            }
        }
    }
}
