//! The bus's wire format between nodes: one line of receiver ids, one line
//! `CONVERSATION SEQ`, then the ready push frame. The receiving node routes
//! on the header and writes the frame as it is, parsing nothing again.
//! Payloads from nodes that send no header line (`IDS\nFRAME`) still parse.

use crate::model::{ChatMessage, Conversation, Delivery, Seq, UserId};
use crate::protocol::ChatFrame;

/// A message taken off the bus.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Published<'a> {
    pub(super) recipients: Vec<UserId>,
    pub(super) conv: Conversation,
    pub(super) seq: Seq,
    pub(super) frame: &'a [u8],
}

pub(super) fn parse_published(payload: &[u8]) -> Option<Published<'_>> {
    let (ids, rest) = split_line(payload)?;
    let recipients = String::from_utf8_lossy(ids)
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let (conv, seq, frame) = if rest.first() == Some(&b'{') {
        message_of_frame(rest).map(|m| (m.conv, m.seq, rest))?
    } else {
        let (header, frame) = split_line(rest)?;
        let (conv, seq) = std::str::from_utf8(header).ok()?.split_once(' ')?;
        (Conversation::from_key(conv)?, seq.parse().ok()?, frame)
    };
    Some(Published {
        recipients,
        conv,
        seq,
        frame,
    })
}

/// Splits at the first newline.
pub(super) fn split_line(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|b| *b == b'\n')?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

/// The bus form of a message: its header line, then its frame.
pub(super) fn bus_payload(d: &Delivery) -> Vec<u8> {
    let header = format!("{} {}\n", d.conv.key(), d.seq);
    let mut out = Vec::with_capacity(header.len() + d.frame.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&d.frame);
    out
}

/// The conversation and number of a frame from a node that sends no header.
pub(super) fn message_of_frame(frame: &[u8]) -> Option<ChatMessage> {
    ChatFrame::parse(frame)?.message()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_frames_decode_back_to_the_stored_message() {
        let m = ChatMessage {
            conv: Conversation::direct(4, 9),
            seq: 3,
            sender: 9,
            sender_name: "nine".into(),
            body: "hi\nthere".into(),
            ts_ms: 1_700_000_000_123,
        };
        assert_eq!(
            message_of_frame(&crate::protocol::render_push(&m)),
            Some(m.clone())
        );
        let g = ChatMessage {
            conv: Conversation::Group(5),
            ..m
        };
        assert_eq!(message_of_frame(&crate::protocol::render_push(&g)), Some(g));
        assert_eq!(message_of_frame(b"{\"msgid\":2}"), None);
    }

    #[test]
    fn payloads_with_and_without_a_header_line_parse_to_the_same_message() {
        let m = ChatMessage {
            conv: Conversation::Group(7),
            seq: 42,
            sender: 3,
            sender_name: "three".into(),
            body: "hello".into(),
            ts_ms: 1_700_000_000_000,
        };
        let frame = crate::protocol::render_push(&m);
        let delivery = Delivery {
            conv: m.conv,
            seq: m.seq,
            frame: frame.clone(),
            arrived: std::time::Instant::now(),
            remote: false,
        };
        let mut with_header = b"5,6\n".to_vec();
        with_header.extend_from_slice(&bus_payload(&delivery));
        let mut old = b"5,6\n".to_vec();
        old.extend_from_slice(&frame);
        let expected = Published {
            recipients: vec![5, 6],
            conv: Conversation::Group(7),
            seq: 42,
            frame: &frame[..],
        };
        assert_eq!(parse_published(&with_header), Some(expected));
        assert_eq!(parse_published(&old), parse_published(&with_header));
        assert_eq!(parse_published(b"5,6"), None);
        assert_eq!(parse_published(b"5\nnot-a-conv 1\n{}"), None);
    }
}
