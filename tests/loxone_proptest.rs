//! Property tests for the Loxone protocol core: encode → parse round trips for the header,
//! the four event tables, UUID text forms, the LL envelope and AES command encryption, and
//! "never panics" on arbitrary bytes. Complements the fuzz targets in fuzz/ (which need
//! cargo-fuzz); these run in every `cargo test`.

use std::borrow::Cow;

use loxone_exporter::loxone::crypto::{decrypt_command, encrypt_command, SaltPrefix, SessionKey};
use loxone_exporter::loxone::envelope::{encode_ll, parse_ll, CodeStyle};
use loxone_exporter::loxone::events::*;
use loxone_exporter::loxone::header::*;
use loxone_exporter::loxone::structure::parse_structure;
use loxone_exporter::loxone::uuid::LoxUuid;
use proptest::prelude::*;

fn uuid() -> impl Strategy<Value = LoxUuid> {
    any::<[u8; 16]>().prop_map(LoxUuid::from_wire)
}

fn f64_bits() -> impl Strategy<Value = f64> {
    any::<u64>().prop_map(f64::from_bits)
}

fn daytimer() -> impl Strategy<Value = DaytimerEvent> {
    let entry = (any::<[i32; 4]>(), f64_bits()).prop_map(|(i, value)| DaytimerEntry {
        mode: i[0],
        from: i[1],
        to: i[2],
        need_activate: i[3],
        value,
    });
    (uuid(), f64_bits(), prop::collection::vec(entry, 0..5)).prop_map(
        |(uuid, default_value, entries)| DaytimerEvent {
            uuid,
            default_value,
            entries,
        },
    )
}

fn weather() -> impl Strategy<Value = WeatherEvent> {
    let entry =
        (any::<[i32; 5]>(), prop::array::uniform6(f64_bits())).prop_map(|(i, f)| WeatherEntry {
            timestamp: i[0],
            weather_type: i[1],
            wind_direction: i[2],
            solar_radiation: i[3],
            relative_humidity: i[4],
            temperature: f[0],
            perceived_temperature: f[1],
            dew_point: f[2],
            precipitation: f[3],
            wind_speed: f[4],
            barometric_pressure: f[5],
        });
    (uuid(), any::<u32>(), prop::collection::vec(entry, 0..4)).prop_map(
        |(uuid, last_update, entries)| WeatherEvent {
            uuid,
            last_update,
            entries,
        },
    )
}

proptest! {
    #[test]
    fn header_round_trip(id in 0u8..8, estimated: bool, len: u32, lsb: bool) {
        let kind = MessageKind::from_u8(id).unwrap();
        let h = Header { kind, estimated, payload_len: len };
        let flag = if lsb { ESTIMATED_LSB } else { ESTIMATED_MSB };
        prop_assert_eq!(parse_header(&h.encode(flag), u32::MAX), Ok(h));
        let too_small = len.checked_sub(1);
        if let Some(max) = too_small {
            let refused = matches!(
                parse_header(&h.encode(flag), max),
                Err(HeaderError::TooLarge { .. })
            );
            prop_assert!(refused);
        }
    }

    #[test]
    fn value_table_round_trip(events in prop::collection::vec((uuid(), f64_bits()), 0..50)) {
        let events: Vec<ValueEvent> =
            events.into_iter().map(|(uuid, value)| ValueEvent { uuid, value }).collect();
        let mut buf = Vec::new();
        encode_value_events(&events, &mut buf);
        prop_assert_eq!(buf.len(), events.len() * VALUE_ENTRY_LEN);
        let back: Vec<ValueEvent> = value_events(&buf).unwrap().collect();
        prop_assert_eq!(back.len(), events.len());
        for (a, b) in back.iter().zip(&events) {
            prop_assert_eq!(a.uuid, b.uuid);
            prop_assert_eq!(a.value.to_bits(), b.value.to_bits());
        }
    }

    #[test]
    fn text_table_round_trip(
        events in prop::collection::vec((uuid(), uuid(), "[^\u{0}]{0,40}"), 0..20)
    ) {
        let events: Vec<TextEvent> = events
            .into_iter()
            .map(|(uuid, icon, t)| TextEvent { uuid, icon, text: Cow::Owned(t) })
            .collect();
        let mut buf = Vec::new();
        encode_text_events(&events, &mut buf);
        prop_assert_eq!(buf.len() % 4, 0);
        prop_assert_eq!(parse_text_events(&buf).unwrap(), events);
    }

    #[test]
    fn daytimer_and_weather_round_trip(
        d in prop::collection::vec(daytimer(), 0..4),
        w in prop::collection::vec(weather(), 0..3),
    ) {
        let mut buf = Vec::new();
        encode_daytimer_events(&d, &mut buf);
        let mut again = Vec::new();
        encode_daytimer_events(&parse_daytimer_events(&buf).unwrap(), &mut again);
        prop_assert_eq!(&again, &buf);

        let mut buf = Vec::new();
        encode_weather_events(&w, &mut buf);
        let mut again = Vec::new();
        encode_weather_events(&parse_weather_events(&buf).unwrap(), &mut again);
        prop_assert_eq!(&again, &buf);
    }

    #[test]
    fn parsers_never_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = data.get(..8).map(|h| parse_header(h, DEFAULT_MAX_PAYLOAD));
        let _ = value_events(&data).map(|it| it.count());
        let _ = parse_text_events(&data);
        let _ = parse_daytimer_events(&data);
        let _ = parse_weather_events(&data);
        let _ = parse_structure(&data);
        let _ = parse_ll(&String::from_utf8_lossy(&data));
    }

    #[test]
    fn truncated_tables_are_errors_not_panics(d in prop::collection::vec(daytimer(), 1..3), cut: prop::sample::Index) {
        let mut buf = Vec::new();
        encode_daytimer_events(&d, &mut buf);
        let cut = cut.index(buf.len());
        let r = parse_daytimer_events(&buf[..cut]);
        if cut == 0 {
            prop_assert_eq!(r, Ok(vec![]));
        } else {
            // a proper prefix ends on a block boundary only by accident: either way no panic,
            // and an error must be typed as truncation
            if let Err(e) = r {
                let is_truncated = matches!(e, EventError::Truncated { .. });
                prop_assert!(is_truncated);
            }
        }
    }

    #[test]
    fn uuid_text_forms_round_trip(u in uuid()) {
        let text = u.to_string();
        prop_assert_eq!(LoxUuid::parse(&text).unwrap(), u);
        let bare: String = text.chars().filter(|c| *c != '-').collect();
        let rfc = format!("{}-{}-{}-{}-{}", &bare[..8], &bare[8..12], &bare[12..16], &bare[16..20], &bare[20..]);
        prop_assert_eq!(LoxUuid::parse(&rfc.to_uppercase()).unwrap(), u);
    }

    #[test]
    fn ll_round_trip(control in ".{0,60}", code: u16, style in 0usize..4, value in ".{0,30}") {
        let style = [CodeStyle::UpperString, CodeStyle::UpperNumber, CodeStyle::LowerString, CodeStyle::LowerNumber][style];
        let v = serde_json::Value::String(value);
        let r = parse_ll(&encode_ll(&control, code, &v, style)).unwrap();
        prop_assert_eq!(r.control, control);
        prop_assert_eq!(r.code, code);
        prop_assert_eq!(r.value, v);
    }

    #[test]
    fn encrypted_command_round_trip(
        key: [u8; 32], iv: [u8; 16],
        salt in "[0-9a-f]{1,32}", next in prop::option::of("[0-9a-f]{1,32}"),
        command in "[^\u{0}]{0,120}", full: bool,
    ) {
        let sk = SessionKey { key, iv };
        let prefix = match next {
            Some(n) => SaltPrefix::NextSalt { previous: salt, next: n },
            None => SaltPrefix::Salt(salt),
        };
        let wire = encrypt_command(&sk, &prefix, &command, full);
        let d = decrypt_command(&sk, &wire).unwrap();
        prop_assert_eq!(d.salt, prefix);
        prop_assert_eq!(d.command, command);
    }
}
