//! The 8-byte message header the Miniserver sends before every payload (protocol doc §2.1).
//!
//! Owns: the [`MessageKind`] identifiers 0–7, the estimated flag, the payload length and the
//! bound on it. A header announcing more than the caller's maximum is refused here, before
//! anybody allocates a buffer for the payload. Does not own: pairing a header with the
//! WebSocket message that follows (the client session does that), nor the header-after-header
//! rule for estimated headers (also the session's job).
//!
//! The estimated flag is read as `info & 0x81 != 0` because sources disagree on the bit
//! (doc §2.1 \[UNSURE\]); [`Header::encode`] lets the simulator choose which bit to set.

/// Length of the header in bytes.
pub const HEADER_LEN: usize = 8;

/// Default bound on an announced payload length (64 MiB).
pub const DEFAULT_MAX_PAYLOAD: u32 = 64 * 1024 * 1024;

/// First byte of every header ("binary type").
pub const HEADER_MAGIC: u8 = 0x03;

/// The estimated flag as Loxone's own library reads it (most significant bit).
pub const ESTIMATED_MSB: u8 = 0x80;

/// The estimated flag as several third-party libraries read it (least significant bit).
pub const ESTIMATED_LSB: u8 = 0x01;

/// What the payload after a header is (byte 1 of the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageKind {
    /// A text message follows (LL response, structure file, …) as a WebSocket text frame.
    Text = 0,
    /// A binary file follows (icons, statistics, unsolicited gzip blobs).
    BinaryFile = 1,
    /// A value-state event table follows.
    ValueStates = 2,
    /// A text-state event table follows.
    TextStates = 3,
    /// A daytimer-state event table follows.
    DaytimerStates = 4,
    /// Out-of-service indicator: no payload; the Miniserver closes the socket.
    OutOfService = 5,
    /// Keepalive answer: no payload.
    Keepalive = 6,
    /// A weather-state event table follows.
    WeatherStates = 7,
}

impl MessageKind {
    /// Maps the identifier byte; `None` for an unknown identifier.
    pub fn from_u8(id: u8) -> Option<Self> {
        Some(match id {
            0 => MessageKind::Text,
            1 => MessageKind::BinaryFile,
            2 => MessageKind::ValueStates,
            3 => MessageKind::TextStates,
            4 => MessageKind::DaytimerStates,
            5 => MessageKind::OutOfService,
            6 => MessageKind::Keepalive,
            7 => MessageKind::WeatherStates,
            _ => return None,
        })
    }

    /// True for the kinds that are never followed by a payload message (5 and 6).
    pub fn has_no_payload(self) -> bool {
        matches!(self, MessageKind::OutOfService | MessageKind::Keepalive)
    }
}

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What follows.
    pub kind: MessageKind,
    /// The length is only an estimate; an exact header follows before the payload.
    pub estimated: bool,
    /// Byte length of the payload message that follows.
    pub payload_len: u32,
}

/// Why 8 bytes are not a usable header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The message is not exactly 8 bytes long.
    #[error("header must be 8 bytes, got {0}")]
    BadLength(usize),
    /// Byte 0 is not 0x03.
    #[error("header does not start with 0x03 (got {0:#04x})")]
    BadMagic(u8),
    /// Byte 1 is not one of the eight known identifiers.
    #[error("unknown message identifier {0}")]
    UnknownKind(u8),
    /// The announced payload is larger than allowed.
    #[error("announced payload of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: u32,
        /// Configured maximum.
        max: u32,
    },
}

/// Parses a header. `buf` must be exactly [`HEADER_LEN`] bytes; a length above `max_payload`
/// is refused with [`HeaderError::TooLarge`] (also for estimated headers).
pub fn parse_header(buf: &[u8], max_payload: u32) -> Result<Header, HeaderError> {
    let b: &[u8; HEADER_LEN] = buf
        .try_into()
        .map_err(|_| HeaderError::BadLength(buf.len()))?;
    if b[0] != HEADER_MAGIC {
        return Err(HeaderError::BadMagic(b[0]));
    }
    let kind = MessageKind::from_u8(b[1]).ok_or(HeaderError::UnknownKind(b[1]))?;
    let estimated = b[2] & (ESTIMATED_MSB | ESTIMATED_LSB) != 0;
    let payload_len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if payload_len > max_payload {
        return Err(HeaderError::TooLarge {
            len: payload_len,
            max: max_payload,
        });
    }
    Ok(Header {
        kind,
        estimated,
        payload_len,
    })
}

impl Header {
    /// An exact (non-estimated) header.
    pub fn new(kind: MessageKind, payload_len: u32) -> Self {
        Header {
            kind,
            estimated: false,
            payload_len,
        }
    }

    /// The 8 wire bytes. `estimated_flag` is the info bit to set when `self.estimated`
    /// ([`ESTIMATED_MSB`] or [`ESTIMATED_LSB`]); it is ignored for exact headers.
    pub fn encode(&self, estimated_flag: u8) -> [u8; HEADER_LEN] {
        let len = self.payload_len.to_le_bytes();
        let info = if self.estimated { estimated_flag } else { 0 };
        [
            HEADER_MAGIC,
            self.kind as u8,
            info,
            0,
            len[0],
            len[1],
            len[2],
            len[3],
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_examples() {
        let k = parse_header(&[3, 6, 0, 0, 0, 0, 0, 0], DEFAULT_MAX_PAYLOAD).unwrap();
        assert_eq!(k, Header::new(MessageKind::Keepalive, 0));
        let t = parse_header(&[3, 0, 0, 0, 0xab, 0, 0, 0], DEFAULT_MAX_PAYLOAD).unwrap();
        assert_eq!(t, Header::new(MessageKind::Text, 171));
        let o = parse_header(&[3, 5, 0, 0, 0, 0, 0, 0], DEFAULT_MAX_PAYLOAD).unwrap();
        assert_eq!(o.kind, MessageKind::OutOfService);
        assert!(o.kind.has_no_payload());
        assert_eq!(
            Header::new(MessageKind::Text, 171).encode(ESTIMATED_MSB),
            [3, 0, 0, 0, 0xab, 0, 0, 0]
        );
    }

    #[test]
    fn all_kinds_round_trip() {
        for id in 0..=7u8 {
            let kind = MessageKind::from_u8(id).unwrap();
            assert_eq!(kind as u8, id);
            let h = Header {
                kind,
                estimated: id % 2 == 0,
                payload_len: 0x0102_0304 + u32::from(id),
            };
            for flag in [ESTIMATED_MSB, ESTIMATED_LSB] {
                let bytes = h.encode(flag);
                assert_eq!(parse_header(&bytes, u32::MAX).unwrap(), h);
            }
        }
        assert_eq!(MessageKind::from_u8(8), None);
    }

    #[test]
    fn estimated_flag_either_bit() {
        for (info, est) in [
            (0x00, false),
            (0x80, true),
            (0x01, true),
            (0x81, true),
            (0x02, false),
        ] {
            let h = parse_header(&[3, 2, info, 0, 24, 0, 0, 0], 100).unwrap();
            assert_eq!(h.estimated, est, "info {info:#x}");
        }
        let e = Header {
            kind: MessageKind::ValueStates,
            estimated: true,
            payload_len: 24,
        };
        assert_eq!(e.encode(ESTIMATED_LSB)[2], 0x01);
        assert_eq!(e.encode(ESTIMATED_MSB)[2], 0x80);
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse_header(&[3, 0, 0, 0], 10),
            Err(HeaderError::BadLength(4))
        );
        assert_eq!(parse_header(&[0; 9], 10), Err(HeaderError::BadLength(9)));
        assert_eq!(
            parse_header(&[4, 0, 0, 0, 0, 0, 0, 0], 10),
            Err(HeaderError::BadMagic(4))
        );
        assert_eq!(
            parse_header(&[3, 8, 0, 0, 0, 0, 0, 0], 10),
            Err(HeaderError::UnknownKind(8))
        );
        assert_eq!(
            parse_header(&[3, 0, 0, 0, 11, 0, 0, 0], 10),
            Err(HeaderError::TooLarge { len: 11, max: 10 })
        );
        assert!(parse_header(&[3, 0, 0, 0, 10, 0, 0, 0], 10).is_ok());
        assert!(matches!(
            parse_header(&[3, 0, 0, 0, 0xff, 0xff, 0xff, 0xff], DEFAULT_MAX_PAYLOAD),
            Err(HeaderError::TooLarge { .. })
        ));
    }
}
