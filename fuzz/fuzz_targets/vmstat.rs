//! Fuzzes `ebb::procfs::vmstat::parse`: any UTF-8 input must parse or fail with a ParseError, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = ebb::procfs::vmstat::parse(text) {
        let _ = (v.pgsteal_total(), v.allocstall_total());
        assert!(v.delta(&v).entries().all(|(_, d)| d == 0));
    }
});
