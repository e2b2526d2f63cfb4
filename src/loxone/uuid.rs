//! Loxone UUIDs: the 16-byte wire layout and the two text forms, mapped to one canonical key.
//!
//! On the wire (event tables) a UUID is a Microsoft-GUID struct: Data1 u32 LE, Data2 u16 LE,
//! Data3 u16 LE, Data4 8 raw bytes (protocol doc §3.1). The structure file writes it as
//! lowercase `8-4-4-16` (`185b0f92-0070-3b3d-ffff3a3fe38eb401`); generic tools write
//! `8-4-4-4-12`. [`LoxUuid`] stores the 16 wire bytes, parses both text forms (any case,
//! with or without dashes) and prints the Loxone `8-4-4-16` form, so lookups never depend on
//! which form a source used.

use std::fmt;
use std::str::FromStr;

/// A Loxone UUID, stored as the 16 bytes seen on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LoxUuid([u8; 16]);

/// Why a UUID string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Loxone UUID {0:?}: expected 32 hex digits as 8-4-4-16 or 8-4-4-4-12")]
pub struct UuidError(pub String);

impl LoxUuid {
    /// From the 16 bytes of an event-table entry.
    pub const fn from_wire(bytes: [u8; 16]) -> Self {
        LoxUuid(bytes)
    }

    /// The 16 bytes as they appear on the wire.
    pub const fn to_wire(self) -> [u8; 16] {
        self.0
    }

    /// From the four struct fields (Data1, Data2, Data3, Data4).
    pub fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&d1.to_le_bytes());
        b[4..6].copy_from_slice(&d2.to_le_bytes());
        b[6..8].copy_from_slice(&d3.to_le_bytes());
        b[8..16].copy_from_slice(&d4);
        LoxUuid(b)
    }

    /// The four struct fields (Data1, Data2, Data3, Data4).
    pub fn fields(self) -> (u32, u16, u16, [u8; 8]) {
        let b = self.0;
        let mut d4 = [0u8; 8];
        d4.copy_from_slice(&b[8..16]);
        (
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            d4,
        )
    }

    /// Parses `8-4-4-16`, `8-4-4-4-12` or 32 bare hex digits, any case. Dashes are only
    /// accepted at those positions.
    pub fn parse(s: &str) -> Result<Self, UuidError> {
        let err = || UuidError(s.chars().take(64).collect());
        let bytes = s.as_bytes();
        let dash_positions: &[usize] = match bytes.len() {
            32 => &[],
            35 => &[8, 13, 18],
            36 => &[8, 13, 18, 23],
            _ => return Err(err()),
        };
        let mut hex = [0u8; 32];
        let mut n = 0;
        for (i, &c) in bytes.iter().enumerate() {
            if dash_positions.contains(&i) {
                if c != b'-' {
                    return Err(err());
                }
                continue;
            }
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return Err(err()),
            };
            if n >= 32 {
                return Err(err());
            }
            hex[n] = v;
            n += 1;
        }
        if n != 32 {
            return Err(err());
        }
        // the text is the big-endian rendering of the fields
        let mut be = [0u8; 16];
        for i in 0..16 {
            be[i] = (hex[2 * i] << 4) | hex[2 * i + 1];
        }
        let d1 = u32::from_be_bytes([be[0], be[1], be[2], be[3]]);
        let d2 = u16::from_be_bytes([be[4], be[5]]);
        let d3 = u16::from_be_bytes([be[6], be[7]]);
        let mut d4 = [0u8; 8];
        d4.copy_from_slice(&be[8..16]);
        Ok(LoxUuid::from_fields(d1, d2, d3, d4))
    }
}

impl FromStr for LoxUuid {
    type Err = UuidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LoxUuid::parse(s)
    }
}

impl fmt::Display for LoxUuid {
    /// Loxone form `8-4-4-16`, lowercase.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (d1, d2, d3, d4) = self.fields();
        write!(f, "{d1:08x}-{d2:04x}-{d3:04x}-")?;
        for b in d4 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for LoxUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LoxUuid({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_from_the_protocol_doc() {
        let u = LoxUuid::parse("185b0f92-0070-3b3d-ffff3a3fe38eb401").unwrap();
        assert_eq!(
            u.to_wire(),
            [
                0x92, 0x0f, 0x5b, 0x18, 0x70, 0x00, 0x3d, 0x3b, 0xff, 0xff, 0x3a, 0x3f, 0xe3, 0x8e,
                0xb4, 0x01
            ]
        );
        assert_eq!(u.to_string(), "185b0f92-0070-3b3d-ffff3a3fe38eb401");
    }

    #[test]
    fn both_text_forms_and_any_case_map_to_one_key() {
        let a = LoxUuid::parse("185b0f92-0070-3b3d-ffff3a3fe38eb401").unwrap();
        let b = LoxUuid::parse("185B0F92-0070-3B3D-FFFF-3A3FE38EB401").unwrap();
        let c = LoxUuid::parse("185b0f9200703b3dffff3a3fe38eb401").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn real_capture_entry() {
        // LJ CodecTest: 649a860f 0002 9b0a ffffd4c75dbaf53c
        let wire = [
            0x64, 0x9a, 0x86, 0x0f, 0x00, 0x02, 0x9b, 0x0a, 0xff, 0xff, 0xd4, 0xc7, 0x5d, 0xba,
            0xf5, 0x3c,
        ];
        assert_eq!(
            LoxUuid::from_wire(wire).to_string(),
            "0f869a64-0200-0a9b-ffffd4c75dbaf53c"
        );
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "xyz",
            "185b0f92-0070-3b3d-ffff3a3fe38eb40",
            "185b0f92-0070-3b3d-ffff3a3fe38eb401/AI1",
            "185b0f92x0070-3b3d-ffff3a3fe38eb401",
            "g85b0f92-0070-3b3d-ffff3a3fe38eb401",
            "185b0f92-0070-3b3d-fff-f3a3fe38eb401",
        ] {
            assert!(LoxUuid::parse(s).is_err(), "{s}");
        }
    }
}
