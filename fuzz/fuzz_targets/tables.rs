//! Header plus all four event tables on arbitrary bytes: no panic, and whatever parses
//! re-encodes to the same bytes (value, daytimer, weather) or to an equivalent table (text).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lox_fuzz::events::*;
use lox_fuzz::header::*;

fuzz_target!(|data: &[u8]| {
    if let Some((head, _)) = data.split_first_chunk::<HEADER_LEN>() {
        let max = u32::from(data.get(8).copied().unwrap_or(0)) << 16;
        if let Ok(h) = parse_header(head, max) {
            assert!(h.payload_len <= max);
            let flag = if head[2] & ESTIMATED_MSB != 0 {
                ESTIMATED_MSB
            } else {
                ESTIMATED_LSB
            };
            assert_eq!(parse_header(&h.encode(flag), max), Ok(h));
        }
    }
    if let Ok(values) = value_events(data) {
        let v: Vec<ValueEvent> = values.collect();
        let mut out = Vec::new();
        encode_value_events(&v, &mut out);
        assert_eq!(out, data);
    }
    if let Ok(texts) = parse_text_events(data) {
        let mut out = Vec::new();
        encode_text_events(&texts, &mut out);
        assert_eq!(parse_text_events(&out).as_ref(), Ok(&texts));
    }
    if let Ok(d) = parse_daytimer_events(data) {
        let mut out = Vec::new();
        encode_daytimer_events(&d, &mut out);
        assert_eq!(out, data);
    }
    if let Ok(w) = parse_weather_events(data) {
        let mut out = Vec::new();
        encode_weather_events(&w, &mut out);
        assert_eq!(out, data);
    }
});
