//! LL envelope, api/apiKey value, control normalisation and encrypted-command decryption on
//! arbitrary text: no panic; a parsed LL answer re-encodes to the same control and code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lox_fuzz::crypto::{decrypt_command, split_encrypted_command, SessionKey};
use lox_fuzz::envelope::*;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(r) = parse_ll(&text) {
        for style in [CodeStyle::UpperString, CodeStyle::LowerNumber] {
            let again = parse_ll(&encode_ll(&r.control, r.code, &r.value, style));
            let again = again.unwrap_or_else(|e| panic!("re-encoded answer does not parse: {e}"));
            assert_eq!(again.control, r.control);
            assert_eq!(again.code, r.code);
        }
    }
    let _ = parse_api_key_value(&text);
    let _ = normalize_control(&text);
    let _ = split_encrypted_command(&text);
    let sk = SessionKey {
        key: [7; 32],
        iv: [9; 16],
    };
    let _ = decrypt_command(&sk, &text);
});
