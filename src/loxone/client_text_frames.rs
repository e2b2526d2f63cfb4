//! Turns the Miniserver's WebSocket TEXT frames into BINARY frames in the raw byte stream,
//! before tungstenite sees them, so that a text payload that is not valid UTF-8 cannot end
//! the session; and cuts long data frames into fragments, so that tungstenite never holds
//! a buffer the size of the structure file for the rest of the connection.
//!
//! Why binary: tungstenite validates every text message as UTF-8 and returns an error for
//! invalid bytes, and `tokio-tungstenite` then ends the stream for good (protocol doc §2.2,
//! pitfall 5: real Miniservers have sent non-UTF-8 text). The Loxone 8-byte header that
//! precedes every payload already says whether it is text (identifier 0), so the WebSocket
//! opcode carries no information we need. The framer decodes the text itself (UTF-8, else
//! Latin-1).
//!
//! Why fragments: tungstenite reserves a frame's whole length in its read buffer, hands the
//! payload out as a view into that buffer and keeps the allocation as its read buffer
//! afterwards. A structure file sent as one frame (1.3 MB at 10k states, 13 MB at 100k)
//! would stay resident for as long as the connection lives. Cut into frames of at most
//! [`MAX_FRAGMENT`] bytes, it is assembled into a message buffer of its own, which is freed
//! once the structure is parsed. Control frames and masked frames (which a server never
//! sends) pass unchanged.
//!
//! [`TextFrameRewriter`] is a pure state machine over byte slices (no I/O): it walks the
//! inbound bytes after the HTTP upgrade response frame header by frame header.
//! [`RewriteTextFrames`] is the thin `AsyncRead`/`AsyncWrite` wrapper used by
//! `connection.rs`. Outbound bytes pass through.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
const FIN: u8 = 0x80;
const END_OF_HTTP_HEAD: &[u8; 4] = b"\r\n\r\n";

/// Data frames with a longer payload are cut into frames of at most this many bytes (the
/// largest payload with a 16-bit length field).
pub const MAX_FRAGMENT: usize = 0xffff;

/// Bytes read from the socket at a time: the wrapper's buffer, and the read buffer size
/// `connection.rs` gives tungstenite, which asks for this much per read.
pub const READ_CHUNK: usize = 4 * 1024;

/// Where the rewriter is in the inbound byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    /// Inside the HTTP upgrade response; `matched` bytes of `\r\n\r\n` seen so far.
    HttpHead { matched: usize },
    /// Inside a frame header; `have` of its bytes seen (held back until it is complete).
    FrameHead { head: [u8; 14], have: usize },
    /// Inside a frame payload that passes unchanged, with this many bytes left.
    Payload { remaining: u64 },
    /// Inside a long data frame being cut into fragments.
    Fragments {
        /// The original frame's first byte (FIN, RSV bits, opcode).
        first_byte: u8,
        /// Whether no fragment has been written yet.
        first: bool,
        /// Payload bytes of the original frame still to come.
        remaining: u64,
        /// Payload bytes of the current fragment still to come.
        in_fragment: u64,
    },
}

impl Position {
    fn next_frame() -> Self {
        Position::FrameHead {
            head: [0; 14],
            have: 0,
        }
    }
}

/// Byte-stream state machine that rewrites server TEXT frames to BINARY frames and cuts
/// long data frames into fragments.
#[derive(Debug, Clone)]
pub struct TextFrameRewriter {
    position: Position,
    rewritten: u64,
    fragmented: u64,
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
            fragmented: 0,
        }
    }

    /// How many frames were rewritten from text to binary so far.
    pub fn rewritten_frames(&self) -> u64 {
        self.rewritten
    }

    /// How many long frames were cut into fragments so far.
    pub fn fragmented_frames(&self) -> u64 {
        self.fragmented
    }

    /// Processes the next chunk of inbound bytes, appending what the reader gets to `out`.
    /// A frame header is held back until it is complete.
    pub fn process(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < input.len() {
            match &mut self.position {
                Position::HttpHead { matched } => {
                    let b = input[i];
                    out.push(b);
                    i += 1;
                    if b == END_OF_HTTP_HEAD[*matched] {
                        *matched += 1;
                    } else if b == END_OF_HTTP_HEAD[0] {
                        *matched = 1;
                    } else {
                        *matched = 0;
                    }
                    if *matched == END_OF_HTTP_HEAD.len() {
                        self.position = Position::next_frame();
                    }
                }
                Position::FrameHead { head, have } => {
                    head[*have] = input[i];
                    *have += 1;
                    i += 1;
                    let Some(payload_len) = frame_payload_len(&head[..*have]) else {
                        continue;
                    };
                    let (mut head, have) = (*head, *have);
                    if head[0] & 0x0f == OPCODE_TEXT {
                        head[0] = (head[0] & 0xf0) | OPCODE_BINARY;
                        self.rewritten += 1;
                    }
                    let data_frame = matches!(head[0] & 0x0f, 0 | OPCODE_BINARY);
                    let masked = head[1] & 0x80 != 0;
                    self.position = if data_frame && !masked && payload_len > MAX_FRAGMENT as u64 {
                        self.fragmented += 1;
                        Position::Fragments {
                            first_byte: head[0],
                            first: true,
                            remaining: payload_len,
                            in_fragment: 0,
                        }
                    } else {
                        out.extend_from_slice(&head[..have]);
                        if payload_len == 0 {
                            Position::next_frame()
                        } else {
                            Position::Payload {
                                remaining: payload_len,
                            }
                        }
                    };
                }
                Position::Payload { remaining } => {
                    *remaining -= pass_on(input, &mut i, *remaining, out);
                    if *remaining == 0 {
                        self.position = Position::next_frame();
                    }
                }
                Position::Fragments {
                    first_byte,
                    first,
                    remaining,
                    in_fragment,
                } => {
                    if *in_fragment == 0 {
                        let len = (*remaining).min(MAX_FRAGMENT as u64);
                        let last = len == *remaining;
                        // the first fragment keeps the opcode and RSV bits, the others are
                        // continuations; only the last keeps the original FIN bit
                        let mut b0 = if *first { *first_byte & !FIN } else { 0 };
                        if last {
                            b0 |= *first_byte & FIN;
                        }
                        out.push(b0);
                        push_payload_len(out, len);
                        *first = false;
                        *in_fragment = len;
                    }
                    let taken = pass_on(input, &mut i, *in_fragment, out);
                    *in_fragment -= taken;
                    *remaining -= taken;
                    if *remaining == 0 {
                        self.position = Position::next_frame();
                    }
                }
            }
        }
    }
}

/// Appends to `out` the payload bytes from `input[*at..]` that belong to a part with
/// `wanted` bytes left, moves `at` past them and returns how many they were.
fn pass_on(input: &[u8], at: &mut usize, wanted: u64, out: &mut Vec<u8>) -> u64 {
    let available = input.len() - *at;
    let take = usize::try_from(wanted).map_or(available, |w| w.min(available));
    out.extend_from_slice(&input[*at..*at + take]);
    *at += take;
    take as u64
}

/// Appends the unmasked length field of a frame header for a payload of `len` bytes (the
/// rewriter writes at most [`MAX_FRAGMENT`]; the tests build longer frames with it too).
fn push_payload_len(out: &mut Vec<u8>, len: u64) {
    match u16::try_from(len) {
        Ok(n) if n < 126 => out.push(n as u8),
        Ok(n) => {
            out.push(126);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Err(_) => {
            out.push(127);
            out.extend_from_slice(&len.to_be_bytes());
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
    /// Bytes read from `inner`, before rewriting.
    raw: Box<[u8]>,
    /// Rewritten bytes not yet handed to the reader; `taken` of them were.
    pending: Vec<u8>,
    taken: usize,
    /// When bytes last came in (liveness counts bytes of a message still arriving).
    last_read: Option<tokio::time::Instant>,
}

impl<S> RewriteTextFrames<S> {
    /// Wraps a stream positioned before the HTTP upgrade response.
    pub fn new(inner: S) -> Self {
        RewriteTextFrames {
            inner,
            rewriter: TextFrameRewriter::new(),
            raw: vec![0; READ_CHUNK].into_boxed_slice(),
            pending: Vec::with_capacity(READ_CHUNK + 64),
            taken: 0,
            last_read: None,
        }
    }

    /// When the last bytes were read from the stream, if any were.
    pub fn last_read(&self) -> Option<tokio::time::Instant> {
        self.last_read
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RewriteTextFrames<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let this = &mut *self;
        loop {
            if this.taken < this.pending.len() {
                let n = (this.pending.len() - this.taken).min(buf.remaining());
                buf.put_slice(&this.pending[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.pending.len() {
                    this.pending.clear();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut raw = ReadBuf::new(&mut this.raw);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut raw))?;
            if raw.filled().is_empty() {
                // end of stream (a header cut off by it is dropped with the connection)
                return Poll::Ready(Ok(()));
            }
            this.last_read = Some(tokio::time::Instant::now());
            // may produce nothing (a header still incomplete): then read on
            this.rewriter.process(raw.filled(), &mut this.pending);
        }
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
        push_payload_len(&mut f, payload.len() as u64);
        f.extend_from_slice(payload);
        f
    }

    /// A payload whose bytes differ, so a misplaced byte shows.
    fn counting(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn stream() -> (Vec<u8>, Vec<u8>) {
        // header (binary), text with a byte that is a text opcode lookalike, 300-byte text,
        // ping, fragmented text (text + continuation), 70000-byte binary (cut in two),
        // empty text.
        let mut input = HEAD.to_vec();
        let mut expected = HEAD.to_vec();
        let parts: Vec<(u8, u8, Vec<u8>)> = vec![
            (0x82, 0x82, vec![3, 0, 0, 0, 5, 0, 0, 0]),
            (0x81, 0x82, vec![0x81, 0xff, b'a', 0x01, b'z']),
            (0x81, 0x82, vec![0x81; 300]),
            (0x89, 0x89, b"ping".to_vec()),
            (0x01, 0x02, b"hel".to_vec()),
            (0x80, 0x80, b"lo".to_vec()),
            (0x81, 0x82, Vec::new()),
        ];
        for (first_in, first_out, payload) in parts {
            input.extend(frame(first_in, &payload));
            expected.extend(frame(first_out, &payload));
        }
        let long = counting(70_000);
        input.extend(frame(0x82, &long));
        expected.extend(frame(0x02, &long[..MAX_FRAGMENT]));
        expected.extend(frame(0x80, &long[MAX_FRAGMENT..]));
        (input, expected)
    }

    fn run(r: &mut TextFrameRewriter, input: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            r.process(piece, &mut out);
        }
        out
    }

    #[test]
    fn rewrites_text_opcodes_and_cuts_long_frames() {
        let (input, expected) = stream();
        let mut r = TextFrameRewriter::new();
        assert_eq!(run(&mut r, &input, input.len()), expected);
        assert_eq!(r.rewritten_frames(), 4);
        assert_eq!(r.fragmented_frames(), 1);
    }

    #[test]
    fn same_result_for_every_chunking() {
        let (input, expected) = stream();
        for chunk in [1usize, 2, 3, 7, 13, 64, 1000, 4096] {
            let mut r = TextFrameRewriter::new();
            assert_eq!(run(&mut r, &input, chunk), expected, "chunk size {chunk}");
        }
    }

    #[test]
    fn long_text_frame_becomes_binary_fragments_with_the_same_payload() {
        // a structure file sent as one text frame with a 64-bit length, ending a message
        let payload = counting(3 * MAX_FRAGMENT + 100);
        let mut input = HEAD.to_vec();
        input.extend(frame(0x81, &payload));
        let mut r = TextFrameRewriter::new();
        let out = run(&mut r, &input, 1500);
        let mut expected = HEAD.to_vec();
        expected.extend(frame(0x02, &payload[..MAX_FRAGMENT]));
        expected.extend(frame(0x00, &payload[MAX_FRAGMENT..2 * MAX_FRAGMENT]));
        expected.extend(frame(0x00, &payload[2 * MAX_FRAGMENT..3 * MAX_FRAGMENT]));
        expected.extend(frame(0x80, &payload[3 * MAX_FRAGMENT..]));
        assert_eq!(out, expected);
        assert_eq!((r.rewritten_frames(), r.fragmented_frames()), (1, 1));
    }

    #[test]
    fn a_long_frame_inside_a_fragmented_message_stays_unfinished() {
        // text (FIN 0) + long continuation (FIN 0) + short continuation (FIN 1)
        let long = counting(MAX_FRAGMENT + 1);
        let mut input = HEAD.to_vec();
        input.extend(frame(0x01, b"ab"));
        input.extend(frame(0x00, &long));
        input.extend(frame(0x80, b"z"));
        let mut r = TextFrameRewriter::new();
        let out = run(&mut r, &input, 999);
        let mut expected = HEAD.to_vec();
        expected.extend(frame(0x02, b"ab"));
        expected.extend(frame(0x00, &long[..MAX_FRAGMENT]));
        expected.extend(frame(0x00, &long[MAX_FRAGMENT..]));
        expected.extend(frame(0x80, b"z"));
        assert_eq!(out, expected);
    }

    #[test]
    fn frames_of_exactly_the_limit_pass_unchanged() {
        let payload = counting(MAX_FRAGMENT);
        let mut input = HEAD.to_vec();
        input.extend(frame(0x82, &payload));
        let mut r = TextFrameRewriter::new();
        assert_eq!(run(&mut r, &input, 777), input);
        assert_eq!(r.fragmented_frames(), 0);
    }

    #[test]
    fn http_head_with_partial_terminators_is_skipped() {
        let mut input = b"HTTP/1.1 101 OK\r\nX: \r\r\n\n\r\n\r\n".to_vec();
        let head_len = input.len();
        input.extend(frame(0x81, b"x"));
        let mut r = TextFrameRewriter::new();
        let out = run(&mut r, &input, input.len());
        assert_eq!(out[head_len], 0x82);
        assert_eq!(&out[..head_len], &input[..head_len]);
    }

    #[test]
    fn masked_frames_are_tracked_and_never_cut() {
        let mut input = HEAD.to_vec();
        // masked text frame, 3 payload bytes
        input.extend([0x81, 0x83, 1, 2, 3, 4, 9, 9, 9]);
        // masked binary frame longer than the limit: passes whole
        let long = counting(MAX_FRAGMENT + 10);
        input.extend([0x82, 0x80 | 127]);
        input.extend((long.len() as u64).to_be_bytes());
        input.extend([5, 6, 7, 8]);
        input.extend(&long);
        input.extend(frame(0x81, b"ok"));
        let mut r = TextFrameRewriter::new();
        let out = run(&mut r, &input, 4096);
        let mut expected = input.clone();
        expected[HEAD.len()] = 0x82;
        let last = expected.len() - 4;
        expected[last] = 0x82;
        assert_eq!(out, expected);
        assert_eq!((r.rewritten_frames(), r.fragmented_frames()), (2, 0));
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

    #[tokio::test]
    async fn tungstenite_reassembles_the_fragments() {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::protocol::Role;
        use tokio_tungstenite::tungstenite::Message;
        // the upgrade response is the handshake's business: start the stream after it
        let payload = counting(2 * MAX_FRAGMENT + 5);
        let mut input = HEAD.to_vec();
        input.extend(frame(0x82, &payload));
        input.extend(frame(0x82, b"after"));
        let mut wrapped = RewriteTextFrames::new(&input[..]);
        let mut head = vec![0; HEAD.len()];
        tokio::io::AsyncReadExt::read_exact(&mut wrapped, &mut head)
            .await
            .unwrap();
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            tokio::io::join(wrapped, tokio::io::sink()),
            Role::Client,
            None,
        )
        .await;
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], &payload[..]),
            other => panic!("expected the long binary message, got {other:?}"),
        }
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], b"after"),
            other => panic!("expected the short binary message, got {other:?}"),
        }
    }
}
