//! Frames over a WebSocket: one text (or binary) message per frame, so no
//! terminator and no splitting; the size limit applies as on TCP.

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::SinkExt;

use crate::protocol::codec::FrameError;

/// Frames over one WebSocket: each text (or binary) message is one frame.
#[derive(Debug)]
pub struct WsFrames {
    socket: WebSocket,
    max_frame: usize,
}

impl WsFrames {
    pub fn new(socket: WebSocket, max_frame: usize) -> Self {
        WsFrames { socket, max_frame }
    }

    /// Frames longer than `max_frame` are refused from now on (before login
    /// the limit is lower, as on TCP).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// The next frame; `None` once the client closed.
    pub async fn next_frame(&mut self) -> Option<Result<Bytes, FrameError>> {
        loop {
            let message = match self.socket.recv().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(FrameError::Io(std::io::Error::other(e)))),
            };
            let frame: Bytes = match message {
                Message::Text(text) => text.into(),
                Message::Binary(bytes) => bytes,
                Message::Close(_) => return None,
                // Answered by the WebSocket layer itself.
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if frame.len() > self.max_frame {
                return Some(Err(FrameError::TooLong(self.max_frame)));
            }
            return Some(Ok(frame));
        }
    }

    /// Writes `frames`, one text message each, flushed together.
    pub async fn write_frames(&mut self, frames: &[Bytes]) -> std::io::Result<()> {
        for frame in frames {
            let text = Utf8Bytes::try_from(frame.clone()).map_err(std::io::Error::other)?;
            self.socket
                .feed(Message::Text(text))
                .await
                .map_err(std::io::Error::other)?;
        }
        self.socket.flush().await.map_err(std::io::Error::other)
    }
}
