//! Structure-file parsing on arbitrary bytes: no panic, consistent counts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lox_fuzz::structure::parse_structure;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = parse_structure(data) {
        let all = s.all_controls();
        assert_eq!(all.len(), s.control_count());
        let refs: usize = s.state_owners().values().map(Vec::len).sum();
        assert_eq!(refs, s.state_ref_count());
        assert!(s.shared_state_uuid_count() <= s.state_owners().len());
        for c in all {
            if let Some(r) = &c.room {
                let _ = s.room_name(r);
            }
        }
    }
});
