//! Sans-I/O framing: turns the stream of WebSocket messages from a Miniserver into protocol
//! messages (protocol doc §2.1, pitfalls 2, 3, 5, 25).
//!
//! Every Miniserver message is an 8-byte header message followed by one payload message,
//! except keepalive (6) and out-of-service (5), which are a header alone. An estimated
//! header (flag 0x80 or 0x01) is followed by the exact header, or — as LXC tolerates —
//! directly by the payload. A header that arrives while a payload is awaited replaces the
//! pending one. Text payloads are decoded here (UTF-8, else Latin-1; tungstenite never sees
//! them as text, see [`super::client_text_frames`]).
//!
//! Every anomaly (payload without header, length mismatch, bad header) is a typed
//! [`FrameError`]; the framer stays usable afterwards and never panics. It does not parse
//! event tables or LL envelopes (`events.rs`, `envelope.rs`) and does no I/O.

use super::header::{parse_header, Header, HeaderError, MessageKind, HEADER_LEN};

/// One WebSocket data message as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireMessage {
    /// A binary message (headers, tables, and — after rewriting — text payloads).
    Binary(Vec<u8>),
    /// A text message (only when the transport did not rewrite text frames).
    Text(String),
}

impl WireMessage {
    fn len(&self) -> usize {
        match self {
            WireMessage::Binary(b) => b.len(),
            WireMessage::Text(t) => t.len(),
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        match self {
            WireMessage::Binary(b) => b,
            WireMessage::Text(t) => t.into_bytes(),
        }
    }
}

/// A complete protocol message.
#[derive(Debug, Clone, PartialEq)]
pub enum ProtocolMessage {
    /// Identifier 0: a command answer or a file (structure JSON).
    Text {
        /// Decoded text.
        text: String,
        /// The bytes were not UTF-8 and were decoded as Latin-1.
        latin1_fallback: bool,
    },
    /// Identifier 1: a binary file.
    BinaryFile(Vec<u8>),
    /// Identifier 2: value-state table.
    ValueStates(Vec<u8>),
    /// Identifier 3: text-state table.
    TextStates(Vec<u8>),
    /// Identifier 4: daytimer-state table.
    DaytimerStates(Vec<u8>),
    /// Identifier 7: weather-state table.
    WeatherStates(Vec<u8>),
    /// Identifier 6: keepalive answer (header only).
    Keepalive,
    /// Identifier 5: the Miniserver goes out of service and will close the socket.
    OutOfService,
}

/// A framing anomaly. The framer has already recovered when it returns one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    /// An 8-byte header that does not parse.
    #[error("invalid message header: {0}")]
    Header(#[from] HeaderError),
    /// A payload message arrived when a header was expected; it was dropped.
    #[error("unexpected {len}-byte payload without a header")]
    UnexpectedPayload {
        /// Size of the dropped message.
        len: usize,
    },
    /// The payload's size differs from the exact header's; it was dropped.
    #[error("payload of {got} bytes does not match the announced {expected} bytes ({kind:?})")]
    LengthMismatch {
        /// Message kind announced.
        kind: MessageKind,
        /// Announced length.
        expected: u32,
        /// Received length.
        got: usize,
    },
    /// A new exact header arrived while the payload of the previous one was still awaited;
    /// the new header replaced it.
    #[error("header for a {kind:?} payload was followed by another header")]
    MissingPayload {
        /// Kind whose payload never came.
        kind: MessageKind,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    AwaitHeader,
    AwaitPayload(Header),
}

/// The framing state machine for one socket.
#[derive(Debug, Clone)]
pub struct Framer {
    state: State,
    max_payload: u32,
}

impl Framer {
    /// A framer that rejects headers announcing more than `max_payload` bytes.
    pub fn new(max_payload: u32) -> Self {
        Framer {
            state: State::AwaitHeader,
            max_payload,
        }
    }

    /// The header whose payload is awaited, if any (its length tells how much is coming).
    pub fn pending(&self) -> Option<&Header> {
        match &self.state {
            State::AwaitPayload(h) => Some(h),
            State::AwaitHeader => None,
        }
    }

    /// Feeds one WebSocket message. `Ok(None)` means "need more" (a header was consumed).
    pub fn push(&mut self, msg: WireMessage) -> Result<Option<ProtocolMessage>, FrameError> {
        let state = std::mem::replace(&mut self.state, State::AwaitHeader);
        match state {
            State::AwaitHeader => {
                if !looks_like_header(&msg) {
                    return Err(FrameError::UnexpectedPayload { len: msg.len() });
                }
                self.on_header(&msg.into_bytes())
            }
            State::AwaitPayload(pending) => {
                // A header while a payload is awaited replaces the pending one (exact header
                // after an estimated one). An 8-byte payload that is really data is only
                // possible when exactly 8 bytes were announced.
                if (pending.estimated || pending.payload_len != 8) && looks_like_header(&msg) {
                    let replaced = self.on_header(&msg.into_bytes());
                    return if pending.estimated {
                        replaced
                    } else {
                        // Keep the new state; report the lost payload.
                        replaced.and(Err(FrameError::MissingPayload { kind: pending.kind }))
                    };
                }
                let got = msg.len();
                if !pending.estimated && u64::from(pending.payload_len) != got as u64 {
                    return Err(FrameError::LengthMismatch {
                        kind: pending.kind,
                        expected: pending.payload_len,
                        got,
                    });
                }
                if got > self.max_payload as usize {
                    return Err(FrameError::UnexpectedPayload { len: got });
                }
                Ok(Some(payload_message(pending.kind, msg)))
            }
        }
    }

    fn on_header(&mut self, bytes: &[u8]) -> Result<Option<ProtocolMessage>, FrameError> {
        let header = parse_header(bytes, self.max_payload)?;
        match header.kind {
            MessageKind::Keepalive => return Ok(Some(ProtocolMessage::Keepalive)),
            MessageKind::OutOfService => return Ok(Some(ProtocolMessage::OutOfService)),
            _ => {}
        }
        if header.payload_len == 0 && !header.estimated {
            // LXC: a zero-length exact header means "no payload follows".
            return Ok(Some(payload_message(
                header.kind,
                WireMessage::Binary(Vec::new()),
            )));
        }
        self.state = State::AwaitPayload(header);
        Ok(None)
    }
}

fn looks_like_header(msg: &WireMessage) -> bool {
    matches!(msg, WireMessage::Binary(b) if b.len() == HEADER_LEN && b.first() == Some(&0x03))
}

fn payload_message(kind: MessageKind, msg: WireMessage) -> ProtocolMessage {
    match kind {
        MessageKind::Text => {
            let (text, latin1_fallback) = match msg {
                WireMessage::Text(t) => (t, false),
                WireMessage::Binary(b) => decode_text(b),
            };
            ProtocolMessage::Text {
                text,
                latin1_fallback,
            }
        }
        MessageKind::BinaryFile => ProtocolMessage::BinaryFile(msg.into_bytes()),
        MessageKind::ValueStates => ProtocolMessage::ValueStates(msg.into_bytes()),
        MessageKind::TextStates => ProtocolMessage::TextStates(msg.into_bytes()),
        MessageKind::DaytimerStates => ProtocolMessage::DaytimerStates(msg.into_bytes()),
        MessageKind::WeatherStates => ProtocolMessage::WeatherStates(msg.into_bytes()),
        MessageKind::Keepalive => ProtocolMessage::Keepalive,
        MessageKind::OutOfService => ProtocolMessage::OutOfService,
    }
}

/// UTF-8 where valid; each byte that is not, as Latin-1 (the code point of the same value).
/// So a text in Latin-1 reads right, and so does a UTF-8 structure file with one stray
/// Latin-1 byte: decoding all of it as Latin-1 turned every correct "Küche" into "KÃ¼che".
/// The flag says whether the fallback was used.
pub fn decode_text(bytes: Vec<u8>) -> (String, bool) {
    match String::from_utf8(bytes) {
        Ok(s) => (s, false),
        Err(e) => {
            let bytes = e.into_bytes();
            let mut text = String::with_capacity(bytes.len() + bytes.len() / 8);
            for chunk in bytes.utf8_chunks() {
                text.push_str(chunk.valid());
                text.extend(chunk.invalid().iter().map(|&b| char::from(b)));
            }
            (text, true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u32 = 64 * 1024 * 1024;

    fn header(kind: u8, flags: u8, len: u32) -> WireMessage {
        let l = len.to_le_bytes();
        WireMessage::Binary(vec![3, kind, flags, 0, l[0], l[1], l[2], l[3]])
    }

    fn bin(len: usize) -> WireMessage {
        WireMessage::Binary(vec![0x42; len])
    }

    #[test]
    fn header_then_text_payload() {
        let mut f = Framer::new(MAX);
        assert_eq!(f.push(header(0, 0, 5)), Ok(None));
        assert_eq!(f.pending().map(|h| h.payload_len), Some(5));
        assert_eq!(
            f.push(WireMessage::Binary(b"hello".to_vec())),
            Ok(Some(ProtocolMessage::Text {
                text: "hello".into(),
                latin1_fallback: false
            }))
        );
        assert!(f.pending().is_none());
    }

    #[test]
    fn text_frame_payload_is_accepted_too() {
        let mut f = Framer::new(MAX);
        f.push(header(0, 0, 4)).unwrap();
        assert_eq!(
            f.push(WireMessage::Text("a€".into())),
            Ok(Some(ProtocolMessage::Text {
                text: "a€".into(),
                latin1_fallback: false
            })),
            "length counts UTF-8 bytes"
        );
    }

    #[test]
    fn non_utf8_text_falls_back_to_latin1() {
        let mut f = Framer::new(MAX);
        f.push(header(0, 0, 4)).unwrap();
        assert_eq!(
            f.push(WireMessage::Binary(vec![b'K', 0xfc, b'c', 0xff])),
            Ok(Some(ProtocolMessage::Text {
                text: "Küc\u{ff}".into(),
                latin1_fallback: true
            }))
        );
    }

    #[test]
    fn a_stray_latin1_byte_leaves_the_utf8_around_it_intact() {
        // "Küche" in UTF-8, then "ä" as one cp1252/Latin-1 byte
        let (text, fallback) = decode_text("Küche ".bytes().chain([0xe4]).collect());
        assert_eq!(text, "Küche ä");
        assert!(fallback);
        // a cut multi-byte sequence at the end is its bytes as Latin-1
        let (text, _) = decode_text(vec![b'a', 0xc3]);
        assert_eq!(text, "a\u{c3}");
    }

    #[test]
    fn every_table_kind() {
        let mut f = Framer::new(MAX);
        for (kind, expect) in [
            (1u8, ProtocolMessage::BinaryFile(vec![0x42; 24])),
            (2, ProtocolMessage::ValueStates(vec![0x42; 24])),
            (3, ProtocolMessage::TextStates(vec![0x42; 24])),
            (4, ProtocolMessage::DaytimerStates(vec![0x42; 24])),
            (7, ProtocolMessage::WeatherStates(vec![0x42; 24])),
        ] {
            assert_eq!(f.push(header(kind, 0, 24)), Ok(None));
            assert_eq!(f.push(bin(24)), Ok(Some(expect)));
        }
    }

    #[test]
    fn header_only_kinds() {
        let mut f = Framer::new(MAX);
        assert_eq!(
            f.push(header(6, 0, 0)),
            Ok(Some(ProtocolMessage::Keepalive))
        );
        assert_eq!(
            f.push(header(5, 0, 0)),
            Ok(Some(ProtocolMessage::OutOfService))
        );
        assert!(f.pending().is_none());
    }

    #[test]
    fn estimated_then_exact_header_both_flag_bits() {
        for flag in [0x80u8, 0x01] {
            let mut f = Framer::new(MAX);
            assert_eq!(f.push(header(0, flag, 1000)), Ok(None));
            assert_eq!(f.push(header(0, 0, 4)), Ok(None));
            assert_eq!(
                f.push(WireMessage::Binary(b"{}{}".to_vec())),
                Ok(Some(ProtocolMessage::Text {
                    text: "{}{}".into(),
                    latin1_fallback: false
                }))
            );
        }
    }

    #[test]
    fn estimated_header_directly_followed_by_payload() {
        let mut f = Framer::new(MAX);
        f.push(header(2, 0x80, 48)).unwrap();
        assert_eq!(
            f.push(bin(24)),
            Ok(Some(ProtocolMessage::ValueStates(vec![0x42; 24])))
        );
    }

    #[test]
    fn payload_without_header_is_an_error_and_recovers() {
        let mut f = Framer::new(MAX);
        assert_eq!(
            f.push(bin(24)),
            Err(FrameError::UnexpectedPayload { len: 24 })
        );
        assert_eq!(
            f.push(WireMessage::Text("{}".into())),
            Err(FrameError::UnexpectedPayload { len: 2 })
        );
        f.push(header(6, 0, 0)).unwrap();
        f.push(header(2, 0, 24)).unwrap();
        assert!(matches!(
            f.push(bin(24)),
            Ok(Some(ProtocolMessage::ValueStates(_)))
        ));
    }

    #[test]
    fn length_mismatch_drops_payload() {
        let mut f = Framer::new(MAX);
        f.push(header(2, 0, 48)).unwrap();
        assert_eq!(
            f.push(bin(24)),
            Err(FrameError::LengthMismatch {
                kind: MessageKind::ValueStates,
                expected: 48,
                got: 24
            })
        );
        assert!(f.pending().is_none());
    }

    #[test]
    fn exact_header_followed_by_header_reports_missing_payload() {
        let mut f = Framer::new(MAX);
        f.push(header(3, 0, 100)).unwrap();
        assert_eq!(
            f.push(header(2, 0, 24)),
            Err(FrameError::MissingPayload {
                kind: MessageKind::TextStates
            })
        );
        // the new header is in force
        assert!(matches!(
            f.push(bin(24)),
            Ok(Some(ProtocolMessage::ValueStates(_)))
        ));
    }

    #[test]
    fn eight_byte_payload_that_looks_like_a_header() {
        let mut f = Framer::new(MAX);
        f.push(header(1, 0, 8)).unwrap();
        let payload = header(6, 0, 0);
        assert_eq!(
            f.push(payload),
            Ok(Some(ProtocolMessage::BinaryFile(vec![
                3, 6, 0, 0, 0, 0, 0, 0
            ])))
        );
    }

    #[test]
    fn bad_and_oversized_headers() {
        let mut f = Framer::new(1000);
        assert!(matches!(
            f.push(header(2, 0, 1001)),
            Err(FrameError::Header(_))
        ));
        assert!(matches!(
            f.push(header(9, 0, 4)),
            Err(FrameError::Header(_))
        ));
        assert!(f.pending().is_none());
        // zero-length exact header of a payload kind: nothing follows
        assert_eq!(
            f.push(header(2, 0, 0)),
            Ok(Some(ProtocolMessage::ValueStates(Vec::new())))
        );
    }

    #[test]
    fn arbitrary_input_never_panics() {
        // a cheap deterministic fuzz: random lengths and bytes, sometimes headers
        let mut seed = 0x1234_5678u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let mut f = Framer::new(4096);
        for _ in 0..20_000 {
            let r = next();
            let msg = if r % 3 == 0 {
                let l = (next() % 64).to_le_bytes();
                WireMessage::Binary(vec![
                    3,
                    (next() % 10) as u8,
                    (next() % 256) as u8,
                    0,
                    l[0],
                    l[1],
                    l[2],
                    l[3],
                ])
            } else {
                let len = (next() % 80) as usize;
                WireMessage::Binary((0..len).map(|_| next() as u8).collect())
            };
            let _ = f.push(msg);
        }
    }
}
