//! Turns the Miniserver's WebSocket TEXT frames into BINARY frames in the raw byte stream,
//! before tungstenite sees them, so that a text payload that is not valid UTF-8 cannot end
//! the session.
//!
//! Why: tungstenite validates every text message as UTF-8 and returns an error for invalid
//! bytes, and `tokio-tungstenite` then ends the stream for good (protocol doc §2.2, pitfall 5:
//! real Miniservers have sent non-UTF-8 text). The Loxone 8-byte header that precedes every
//! payload already says whether it is text (identifier 0), so the WebSocket opcode carries
//! no information we need. [`TextFrameRewriter`] walks the inbound bytes after the HTTP
//! upgrade response, frame header by frame header, and flips opcode 0x1 (text) to 0x2
//! (binary) in place; continuation frames, control frames and payload bytes are untouched
//! and nothing is inserted or removed, so lengths stay valid. The framer decodes the text
//! itself (UTF-8, else Latin-1).
//!
//! Pure state machine over byte slices (no I/O); [`RewriteTextFrames`] is the thin
//! `AsyncRead`/`AsyncWrite` wrapper used by `connection.rs`. Outbound bytes pass through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
const END_OF_HTTP_HEAD: &[u8; 4] = b"\r\n\r\n";

/// Where the rewriter is in the inbound byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    /// Inside the HTTP upgrade response; `matched` bytes of `\r\n\r\n` seen so far.
    HttpHead { matched: usize },
    /// Inside a frame header; `have` of its bytes seen (byte 0 already rewritten).
    FrameHead { head: [u8; 14], have: usize },
    /// Inside a frame payload with this many bytes left.
    Payload { remaining: u64 },
}

/// Byte-stream state machine that rewrites server TEXT frames to BINARY frames.
#[derive(Debug, Clone)]
pub struct TextFrameRewriter {
    position: Position,
    rewritten: u64,
}

impl Default for TextFrameRewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl TextFrameRewriter {
    /// A rewriter positioned at the start of the HTTP upgrade response.
    pub fn new() -> Self {
        TextFrameRewriter {
            position: Position::HttpHead { matched: 0 },
            rewritten: 0,
        }
    }

    /// How many frames were rewritten from text to binary so far.
    pub fn rewritten_frames(&self) -> u64 {
        self.rewritten
    }

    /// Processes the next chunk of inbound bytes in place.
    pub fn process(&mut self, data: &mut [u8]) {
        let mut i = 0;
        while i < data.len() {
            match &mut self.position {
                Position::HttpHead { matched } => {
                    let b = data[i];
                    i += 1;
                    if b == END_OF_HTTP_HEAD[*matched] {
                        *matched += 1;
                    } else if b == END_OF_HTTP_HEAD[0] {
                        *matched = 1;
                    } else {
                        *matched = 0;
                    }
                    if *matched == END_OF_HTTP_HEAD.len() {
                        self.position = Position::FrameHead {
                            head: [0; 14],
                            have: 0,
                        };
                    }
                }
                Position::FrameHead { head, have } => {
                    if *have == 0 && data[i] & 0x0f == OPCODE_TEXT {
                        data[i] = (data[i] & 0xf0) | OPCODE_BINARY;
                        self.rewritten += 1;
                    }
                    head[*have] = data[i];
                    *have += 1;
                    i += 1;
                    if let Some(payload_len) = frame_payload_len(&head[..*have]) {
                        self.position = if payload_len == 0 {
                            Position::FrameHead {
                                head: [0; 14],
                                have: 0,
                            }
                        } else {
                            Position::Payload {
                                remaining: payload_len,
                            }
                        };
                    }
                }
                Position::Payload { remaining } => {
                    let left = data.len() - i;
                    let take = usize::try_from(*remaining).map_or(left, |r| r.min(left));
                    i += take;
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.position = Position::FrameHead {
                            head: [0; 14],
                            have: 0,
                        };
                    }
                }
            }
        }
    }
}

/// The payload length once `head` holds a complete frame header, else `None`.
fn frame_payload_len(head: &[u8]) -> Option<u64> {
    let b1 = *head.get(1)?;
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7f;
    let ext = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let need = 2 + ext + if masked { 4 } else { 0 };
    if head.len() < need {
        return None;
    }
    let len = match len7 {
        126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[2..10]);
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    Some(len)
}

/// An I/O stream whose inbound bytes go through a [`TextFrameRewriter`].
#[derive(Debug)]
pub struct RewriteTextFrames<S> {
    inner: S,
    rewriter: TextFrameRewriter,
}

impl<S> RewriteTextFrames<S> {
    /// Wraps a stream positioned before the HTTP upgrade response.
    pub fn new(inner: S) -> Self {
        RewriteTextFrames {
            inner,
            rewriter: TextFrameRewriter::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RewriteTextFrames<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            let filled = buf.filled_mut();
            if let Some(new_bytes) = filled.get_mut(before..) {
                this.rewriter.process(new_bytes);
            }
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RewriteTextFrames<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";

    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 0xffff => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    fn stream() -> (Vec<u8>, Vec<u8>) {
        // header (binary), text with a byte that is a text opcode lookalike, 300-byte text,
        // ping, fragmented text (text + continuation), 70000-byte binary.
        let mut input = HEAD.to_vec();
        let mut expected = HEAD.to_vec();
        let parts: Vec<(u8, u8, Vec<u8>)> = vec![
            (0x82, 0x82, vec![3, 0, 0, 0, 5, 0, 0, 0]),
            (0x81, 0x82, vec![0x81, 0xff, b'a', 0x01, b'z']),
            (0x81, 0x82, vec![0x81; 300]),
            (0x89, 0x89, b"ping".to_vec()),
            (0x01, 0x02, b"hel".to_vec()),
            (0x80, 0x80, b"lo".to_vec()),
            (0x82, 0x82, vec![0x81; 70_000]),
            (0x81, 0x82, Vec::new()),
        ];
        for (first_in, first_out, payload) in parts {
            input.extend(frame(first_in, &payload));
            expected.extend(frame(first_out, &payload));
        }
        (input, expected)
    }

    #[test]
    fn rewrites_text_opcodes_only() {
        let (mut input, expected) = stream();
        let mut r = TextFrameRewriter::new();
        r.process(&mut input);
        assert_eq!(input, expected);
        assert_eq!(r.rewritten_frames(), 4);
    }

    #[test]
    fn same_result_for_every_chunking() {
        let (input, expected) = stream();
        for chunk in [1usize, 2, 3, 7, 13, 64, 1000] {
            let mut data = input.clone();
            let mut r = TextFrameRewriter::new();
            for piece in data.chunks_mut(chunk) {
                r.process(piece);
            }
            assert_eq!(data, expected, "chunk size {chunk}");
        }
    }

    #[test]
    fn http_head_with_partial_terminators_is_skipped() {
        let mut input = b"HTTP/1.1 101 OK\r\nX: \r\r\n\n\r\n\r\n".to_vec();
        let head_len = input.len();
        input.extend(frame(0x81, b"x"));
        let mut r = TextFrameRewriter::new();
        r.process(&mut input);
        assert_eq!(input[head_len], 0x82);
        assert_eq!(
            &input[..head_len],
            b"HTTP/1.1 101 OK\r\nX: \r\r\n\n\r\n\r\n"
        );
    }

    #[test]
    fn masked_frames_are_tracked() {
        let mut input = HEAD.to_vec();
        // masked text frame, 3 payload bytes
        input.extend([0x81, 0x83, 1, 2, 3, 4, 9, 9, 9]);
        input.extend(frame(0x81, b"ok"));
        let mut r = TextFrameRewriter::new();
        r.process(&mut input);
        assert_eq!(input[HEAD.len()], 0x82);
        assert_eq!(input[HEAD.len() + 9], 0x82);
        assert_eq!(r.rewritten_frames(), 2);
    }

    #[tokio::test]
    async fn wrapper_rewrites_while_reading() {
        use tokio::io::AsyncReadExt;
        let (input, expected) = stream();
        let mut wrapped = RewriteTextFrames::new(&input[..]);
        let mut out = Vec::new();
        wrapped.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, expected);
    }
}
