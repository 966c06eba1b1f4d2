//! Fuzzes `ebb::procfs::pressure::parse`: any UTF-8 input must parse or fail with a ParseError, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = ebb::procfs::pressure::parse(text) {
        for line in std::iter::once(p.some).chain(p.full) {
            for avg in [line.avg10, line.avg60, line.avg300] {
                assert!(avg.is_finite() && (0.0..=100.0).contains(&avg));
            }
        }
    }
});
