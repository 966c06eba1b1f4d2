//! Fuzzes `ebb::procfs::smaps::parse_smaps`: any UTF-8 input must parse or fail with a ParseError, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(entries) = ebb::procfs::smaps::parse_smaps(text) {
        for e in &entries {
            let _ = (e.map.kind(), e.map.len(), e.map.is_file_backed());
        }
    }
});
