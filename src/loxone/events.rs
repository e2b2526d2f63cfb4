//! Binary event tables byte by byte: value (identifier 2), text (3), daytimer (4) and
//! weather (7) states (protocol doc §3.2–§3.5), parsing and encoding.
//!
//! Owns: the entry layouts, bounds checks and their typed errors ([`EventError`]). Every
//! length and count read from the wire is checked against the bytes actually present before
//! anything is sliced or allocated, so truncated tables, negative or oversized counts and
//! garbage give an error, never a panic. Text is decoded lossily (invalid UTF-8 becomes
//! U+FFFD) and trailing NULs are stripped, as LK and EXP do. Does not own: the header (see
//! [`super::header`]) nor mapping UUIDs to controls (the state store does that).
//!
//! Value tables are the hot path (the initial table of a big installation, then a stream of
//! deltas): [`value_events`] is a zero-allocation iterator over 24-byte chunks.
//!
//! Tolerance notes: the zero padding after the LAST text entry may be missing (the table
//! simply ends); padding bytes are not checked for being zero.

use std::borrow::Cow;

use super::uuid::LoxUuid;

/// Size of one value-table entry: UUID (16) + f64 (8).
pub const VALUE_ENTRY_LEN: usize = 24;
/// Size of the fixed part of a text-table entry: UUID (16) + icon UUID (16) + length u32 (4).
pub const TEXT_ENTRY_HEAD_LEN: usize = 36;
/// Size of a daytimer block head: UUID (16) + default value f64 (8) + count i32 (4).
pub const DAYTIMER_HEAD_LEN: usize = 28;
/// Size of one daytimer entry.
pub const DAYTIMER_ENTRY_LEN: usize = 24;
/// Size of a weather block head: UUID (16) + lastUpdate u32 (4) + count i32 (4).
pub const WEATHER_HEAD_LEN: usize = 24;
/// Size of one weather entry.
pub const WEATHER_ENTRY_LEN: usize = 68;

/// Which table an error occurred in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// Value states (identifier 2).
    Value,
    /// Text states (identifier 3).
    Text,
    /// Daytimer states (identifier 4).
    Daytimer,
    /// Weather states (identifier 7).
    Weather,
}

impl std::fmt::Display for TableKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TableKind::Value => "value",
            TableKind::Text => "text",
            TableKind::Daytimer => "daytimer",
            TableKind::Weather => "weather",
        })
    }
}

/// Why an event table could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The payload length is not a multiple of the fixed entry size.
    #[error("{table} table of {len} bytes is not a multiple of {entry_len}")]
    BadLength {
        /// Table kind.
        table: TableKind,
        /// Payload length.
        len: usize,
        /// Entry size.
        entry_len: usize,
    },
    /// The table ends inside an entry.
    #[error("{table} table truncated at offset {offset}: need {needed} bytes, {available} left")]
    Truncated {
        /// Table kind.
        table: TableKind,
        /// Offset of the field that does not fit.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the payload.
        available: usize,
    },
    /// A daytimer or weather block announces a negative entry count.
    #[error("{table} table: negative entry count {count} at offset {offset}")]
    NegativeCount {
        /// Table kind.
        table: TableKind,
        /// Offset of the count field.
        offset: usize,
        /// The count read.
        count: i32,
    },
}

/// One value-state update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValueEvent {
    /// State UUID.
    pub uuid: LoxUuid,
    /// New value.
    pub value: f64,
}

/// Iterator over a value table; created by [`value_events`]. No allocation.
#[derive(Debug, Clone)]
pub struct ValueEvents<'a> {
    chunks: std::slice::ChunksExact<'a, u8>,
}

impl Iterator for ValueEvents<'_> {
    type Item = ValueEvent;

    #[inline]
    fn next(&mut self) -> Option<ValueEvent> {
        self.chunks.next().and_then(value_entry)
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for ValueEvents<'_> {}

#[inline]
fn value_entry(chunk: &[u8]) -> Option<ValueEvent> {
    // chunks_exact guarantees 24 bytes; these never yield None
    let (uuid, rest) = chunk.split_first_chunk::<16>()?;
    let value = rest.first_chunk::<8>()?;
    Some(ValueEvent {
        uuid: LoxUuid::from_wire(*uuid),
        value: f64::from_le_bytes(*value),
    })
}

/// Iterates a value table. The payload must be a whole number of 24-byte entries.
pub fn value_events(buf: &[u8]) -> Result<ValueEvents<'_>, EventError> {
    if !buf.len().is_multiple_of(VALUE_ENTRY_LEN) {
        return Err(EventError::BadLength {
            table: TableKind::Value,
            len: buf.len(),
            entry_len: VALUE_ENTRY_LEN,
        });
    }
    Ok(ValueEvents {
        chunks: buf.chunks_exact(VALUE_ENTRY_LEN),
    })
}

/// One text-state update.
#[derive(Debug, Clone, PartialEq)]
pub struct TextEvent<'a> {
    /// State UUID.
    pub uuid: LoxUuid,
    /// Icon UUID (all zeros unless the control is a TextState/"Status").
    pub icon: LoxUuid,
    /// The text, lossily decoded, trailing NULs removed; borrowed when valid UTF-8.
    pub text: Cow<'a, str>,
}

/// One switching point of a daytimer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DaytimerEntry {
    /// Operating-mode id.
    pub mode: i32,
    /// Start, minutes since midnight.
    pub from: i32,
    /// End, minutes since midnight.
    pub to: i32,
    /// "needActivate" (trigger) as int.
    pub need_activate: i32,
    /// Value (analog daytimers).
    pub value: f64,
}

/// A daytimer's complete schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct DaytimerEvent {
    /// The daytimer's `entriesAndDefaultValue` state UUID.
    pub uuid: LoxUuid,
    /// Default value.
    pub default_value: f64,
    /// Entries.
    pub entries: Vec<DaytimerEntry>,
}

/// One weather data point (actual or forecast hour).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeatherEntry {
    /// Timestamp (unit undocumented, likely Loxone epoch).
    pub timestamp: i32,
    /// Weather type id.
    pub weather_type: i32,
    /// Wind direction.
    pub wind_direction: i32,
    /// Solar radiation.
    pub solar_radiation: i32,
    /// Relative humidity.
    pub relative_humidity: i32,
    /// Temperature.
    pub temperature: f64,
    /// Perceived temperature.
    pub perceived_temperature: f64,
    /// Dew point.
    pub dew_point: f64,
    /// Precipitation.
    pub precipitation: f64,
    /// Wind speed.
    pub wind_speed: f64,
    /// Barometric pressure.
    pub barometric_pressure: f64,
}

/// A weather block (`weatherServer.states.actual` or `.forecast`).
#[derive(Debug, Clone, PartialEq)]
pub struct WeatherEvent {
    /// State UUID.
    pub uuid: LoxUuid,
    /// Last update, seconds since 2009-01-01.
    pub last_update: u32,
    /// Entries.
    pub entries: Vec<WeatherEntry>,
}

/// Bounds-checked little-endian reader.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    table: TableKind,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], table: TableKind) -> Self {
        Reader { buf, pos: 0, table }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn at_end(&self) -> bool {
        self.remaining() == 0
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], EventError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let out = rest.get(..n).ok_or(EventError::Truncated {
            table: self.table,
            offset: self.pos,
            needed: n,
            available: rest.len(),
        })?;
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EventError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn uuid(&mut self) -> Result<LoxUuid, EventError> {
        self.array::<16>().map(LoxUuid::from_wire)
    }

    fn u32(&mut self) -> Result<u32, EventError> {
        self.array::<4>().map(u32::from_le_bytes)
    }

    fn i32(&mut self) -> Result<i32, EventError> {
        self.array::<4>().map(i32::from_le_bytes)
    }

    fn f64(&mut self) -> Result<f64, EventError> {
        self.array::<8>().map(f64::from_le_bytes)
    }

    /// Reads an entry count and checks that `count * entry_len` bytes are present.
    fn count(&mut self, entry_len: usize) -> Result<usize, EventError> {
        let offset = self.pos;
        let count = self.i32()?;
        let n = usize::try_from(count).map_err(|_| EventError::NegativeCount {
            table: self.table,
            offset,
            count,
        })?;
        let needed = n.saturating_mul(entry_len);
        if needed > self.remaining() {
            return Err(EventError::Truncated {
                table: self.table,
                offset: self.pos,
                needed,
                available: self.remaining(),
            });
        }
        Ok(n)
    }
}

/// Parses a text table.
pub fn parse_text_events(buf: &[u8]) -> Result<Vec<TextEvent<'_>>, EventError> {
    let mut r = Reader::new(buf, TableKind::Text);
    let mut out = Vec::new();
    while !r.at_end() {
        let uuid = r.uuid()?;
        let icon = r.uuid()?;
        let len = r.u32()?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let raw = r.take(len)?;
        // padding to the next multiple of 4; tolerated missing at the very end
        let pad = (4 - len % 4) % 4;
        r.take(pad.min(r.remaining()))?;
        let end = raw.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let text = String::from_utf8_lossy(raw.get(..end).unwrap_or_default());
        out.push(TextEvent { uuid, icon, text });
    }
    Ok(out)
}

/// Parses a daytimer table.
pub fn parse_daytimer_events(buf: &[u8]) -> Result<Vec<DaytimerEvent>, EventError> {
    let mut r = Reader::new(buf, TableKind::Daytimer);
    let mut out = Vec::new();
    while !r.at_end() {
        let uuid = r.uuid()?;
        let default_value = r.f64()?;
        let n = r.count(DAYTIMER_ENTRY_LEN)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(DaytimerEntry {
                mode: r.i32()?,
                from: r.i32()?,
                to: r.i32()?,
                need_activate: r.i32()?,
                value: r.f64()?,
            });
        }
        out.push(DaytimerEvent {
            uuid,
            default_value,
            entries,
        });
    }
    Ok(out)
}

/// Parses a weather table.
pub fn parse_weather_events(buf: &[u8]) -> Result<Vec<WeatherEvent>, EventError> {
    let mut r = Reader::new(buf, TableKind::Weather);
    let mut out = Vec::new();
    while !r.at_end() {
        let uuid = r.uuid()?;
        let last_update = r.u32()?;
        let n = r.count(WEATHER_ENTRY_LEN)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(WeatherEntry {
                timestamp: r.i32()?,
                weather_type: r.i32()?,
                wind_direction: r.i32()?,
                solar_radiation: r.i32()?,
                relative_humidity: r.i32()?,
                temperature: r.f64()?,
                perceived_temperature: r.f64()?,
                dew_point: r.f64()?,
                precipitation: r.f64()?,
                wind_speed: r.f64()?,
                barometric_pressure: r.f64()?,
            });
        }
        out.push(WeatherEvent {
            uuid,
            last_update,
            entries,
        });
    }
    Ok(out)
}

/// Appends one value entry (24 bytes).
#[inline]
pub fn encode_value_event(event: &ValueEvent, out: &mut Vec<u8>) {
    out.extend_from_slice(&event.uuid.to_wire());
    out.extend_from_slice(&event.value.to_le_bytes());
}

/// Appends a value table.
pub fn encode_value_events(events: &[ValueEvent], out: &mut Vec<u8>) {
    out.reserve(events.len() * VALUE_ENTRY_LEN);
    for e in events {
        encode_value_event(e, out);
    }
}

/// Appends a text table (each entry padded to a multiple of 4). A text longer than
/// `u32::MAX` bytes is cut to that length.
pub fn encode_text_events(events: &[TextEvent<'_>], out: &mut Vec<u8>) {
    for e in events {
        let bytes = e.text.as_bytes();
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let bytes = bytes.get(..len as usize).unwrap_or(bytes);
        out.extend_from_slice(&e.uuid.to_wire());
        out.extend_from_slice(&e.icon.to_wire());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(bytes);
        let pad = (4 - bytes.len() % 4) % 4;
        out.extend_from_slice(&[0u8; 3][..pad]);
    }
}

/// Appends a daytimer table. More than `i32::MAX` entries are cut to that count.
pub fn encode_daytimer_events(events: &[DaytimerEvent], out: &mut Vec<u8>) {
    for e in events {
        let n = i32::try_from(e.entries.len()).unwrap_or(i32::MAX);
        out.extend_from_slice(&e.uuid.to_wire());
        out.extend_from_slice(&e.default_value.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        for d in e.entries.iter().take(n as usize) {
            for v in [d.mode, d.from, d.to, d.need_activate] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&d.value.to_le_bytes());
        }
    }
}

/// Appends a weather table. More than `i32::MAX` entries are cut to that count.
pub fn encode_weather_events(events: &[WeatherEvent], out: &mut Vec<u8>) {
    for e in events {
        let n = i32::try_from(e.entries.len()).unwrap_or(i32::MAX);
        out.extend_from_slice(&e.uuid.to_wire());
        out.extend_from_slice(&e.last_update.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        for w in e.entries.iter().take(n as usize) {
            for v in [
                w.timestamp,
                w.weather_type,
                w.wind_direction,
                w.solar_radiation,
                w.relative_humidity,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            for v in [
                w.temperature,
                w.perceived_temperature,
                w.dew_point,
                w.precipitation,
                w.wind_speed,
                w.barometric_pressure,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        hex::decode(s).unwrap()
    }

    fn u(s: &str) -> LoxUuid {
        LoxUuid::parse(s).unwrap()
    }

    #[test]
    fn value_table_real_capture() {
        // LJ CodecTest entry: operatingMode = 5.0
        let buf = hex("649a860f 0002 9b0a ffffd4c75dbaf53c 0000000000001440");
        let evs: Vec<_> = value_events(&buf).unwrap().collect();
        assert_eq!(
            evs,
            vec![ValueEvent {
                uuid: u("0f869a64-0200-0a9b-ffffd4c75dbaf53c"),
                value: 5.0
            }]
        );
        let mut enc = Vec::new();
        encode_value_events(&evs, &mut enc);
        assert_eq!(enc, buf);
    }

    #[test]
    fn value_table_lengths() {
        assert_eq!(value_events(&[]).unwrap().len(), 0);
        assert_eq!(value_events(&[0u8; 48]).unwrap().len(), 2);
        for bad in [1usize, 23, 25, 47] {
            assert_eq!(
                value_events(&vec![0u8; bad]).unwrap_err(),
                EventError::BadLength {
                    table: TableKind::Value,
                    len: bad,
                    entry_len: 24
                }
            );
        }
    }

    #[test]
    fn text_table_padding_from_capture() {
        let a = u("185b0f92-0070-3b3d-ffff3a3fe38eb401");
        let icon = u("00000000-0000-0020-2000000000000000");
        let texts = ["[", "[]", "", "2017-12-13 16:37:44 +01:00:00", "abcd"];
        let evs: Vec<TextEvent> = texts
            .iter()
            .map(|t| TextEvent {
                uuid: a,
                icon,
                text: Cow::Borrowed(*t),
            })
            .collect();
        let mut buf = Vec::new();
        encode_text_events(&evs, &mut buf);
        // 36 + roundup4(len) per entry: 40, 40, 36, 68, 40
        assert_eq!(buf.len(), 40 + 40 + 36 + 68 + 40);
        // first entry: uuid, icon, len=1, '[', 3 pad bytes
        assert_eq!(&buf[0..16], &a.to_wire());
        assert_eq!(&buf[16..32], &icon.to_wire());
        assert_eq!(&buf[32..36], &[1, 0, 0, 0]);
        assert_eq!(&buf[36..40], b"[\0\0\0");
        let back = parse_text_events(&buf).unwrap();
        assert_eq!(back, evs);
        assert!(back.iter().all(|e| matches!(e.text, Cow::Borrowed(_))));
    }

    #[test]
    fn text_table_tolerance() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&[1u8; 32]);
        buf.extend_from_slice(&5u32.to_le_bytes());
        buf.extend_from_slice(b"h\xffi\0\0"); // bad UTF-8 and trailing NULs, no padding at end
        let evs = parse_text_events(&buf).unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].text, "h\u{fffd}i");
    }

    #[test]
    fn text_table_errors() {
        let mut buf = vec![0u8; 32];
        buf.extend_from_slice(&100u32.to_le_bytes());
        buf.extend_from_slice(b"short");
        assert_eq!(
            parse_text_events(&buf).unwrap_err(),
            EventError::Truncated {
                table: TableKind::Text,
                offset: 36,
                needed: 100,
                available: 5
            }
        );
        assert!(matches!(
            parse_text_events(&[0u8; 35]),
            Err(EventError::Truncated { .. })
        ));
        let mut huge = vec![0u8; 32];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse_text_events(&huge),
            Err(EventError::Truncated { .. })
        ));
    }

    #[test]
    fn daytimer_layout_and_round_trip() {
        let ev = DaytimerEvent {
            uuid: u("185b0f92-0070-3b3d-ffff3a3fe38eb401"),
            default_value: 21.5,
            entries: vec![
                DaytimerEntry {
                    mode: 1,
                    from: 360,
                    to: 1320,
                    need_activate: 0,
                    value: 22.0,
                },
                DaytimerEntry {
                    mode: -1,
                    from: 0,
                    to: 1440,
                    need_activate: 1,
                    value: 0.0,
                },
            ],
        };
        let mut buf = Vec::new();
        encode_daytimer_events(std::slice::from_ref(&ev), &mut buf);
        assert_eq!(buf.len(), 28 + 2 * 24);
        assert_eq!(&buf[16..24], &21.5f64.to_le_bytes());
        assert_eq!(&buf[24..28], &[2, 0, 0, 0]);
        assert_eq!(&buf[28..32], &[1, 0, 0, 0]);
        assert_eq!(&buf[32..36], &360i32.to_le_bytes());
        assert_eq!(&buf[44..52], &22.0f64.to_le_bytes());
        assert_eq!(parse_daytimer_events(&buf).unwrap(), vec![ev]);
    }

    #[test]
    fn daytimer_bad_counts() {
        let mut neg = vec![0u8; 24];
        neg.extend_from_slice(&(-1i32).to_le_bytes());
        assert_eq!(
            parse_daytimer_events(&neg).unwrap_err(),
            EventError::NegativeCount {
                table: TableKind::Daytimer,
                offset: 24,
                count: -1
            }
        );
        let mut big = vec![0u8; 24];
        big.extend_from_slice(&i32::MAX.to_le_bytes());
        assert!(matches!(
            parse_daytimer_events(&big),
            Err(EventError::Truncated { needed, .. }) if needed == i32::MAX as usize * 24
        ));
        assert!(matches!(
            parse_daytimer_events(&[0u8; 27]),
            Err(EventError::Truncated { .. })
        ));
    }

    #[test]
    fn weather_layout_and_round_trip() {
        let entry = WeatherEntry {
            timestamp: 123_456,
            weather_type: 7,
            wind_direction: 270,
            solar_radiation: 500,
            relative_humidity: 60,
            temperature: 21.25,
            perceived_temperature: 20.0,
            dew_point: 11.5,
            precipitation: 0.25,
            wind_speed: 12.0,
            barometric_pressure: 1013.0,
        };
        let ev = WeatherEvent {
            uuid: u("185b0f92-0070-3b3d-ffff3a3fe38eb401"),
            last_update: 0xdead_beef,
            entries: vec![entry; 3],
        };
        let mut buf = Vec::new();
        encode_weather_events(std::slice::from_ref(&ev), &mut buf);
        assert_eq!(buf.len(), 24 + 3 * 68);
        assert_eq!(&buf[16..20], &0xdead_beefu32.to_le_bytes());
        assert_eq!(&buf[20..24], &[3, 0, 0, 0]);
        assert_eq!(&buf[24 + 16..24 + 20], &60i32.to_le_bytes());
        assert_eq!(&buf[24 + 20..24 + 28], &21.25f64.to_le_bytes());
        assert_eq!(&buf[24 + 60..24 + 68], &1013.0f64.to_le_bytes());
        assert_eq!(parse_weather_events(&buf).unwrap(), vec![ev]);
        // cut one byte: typed error
        assert!(matches!(
            parse_weather_events(&buf[..buf.len() - 1]),
            Err(EventError::Truncated { .. })
        ));
        let mut neg = vec![0u8; 20];
        neg.extend_from_slice(&i32::MIN.to_le_bytes());
        assert!(matches!(
            parse_weather_events(&neg),
            Err(EventError::NegativeCount { .. })
        ));
    }
}
