//! Fuzzes `ebb::procfs::oom::parse_oom_score_adj`: any UTF-8 input must parse or fail with a ParseError, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = ebb::procfs::oom::parse_oom_score_adj(text) {
        assert!((-1000..=1000).contains(&v));
    }
    let _ = ebb::procfs::oom::parse_oom_score(text);
});
