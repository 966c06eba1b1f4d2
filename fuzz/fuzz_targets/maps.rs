//! Fuzzes `ebb::procfs::maps::parse`: any UTF-8 input must parse or fail with a ParseError, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(entries) = ebb::procfs::maps::parse(text) {
        for e in &entries {
            assert!(e.start <= e.end);
            let _ = (e.kind(), e.len(), e.is_private(), e.is_file_backed());
        }
    }
});
