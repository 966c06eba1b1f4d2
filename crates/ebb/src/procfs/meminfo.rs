//! `/proc/meminfo`: system-wide memory usage.
//!
//! Every line is `Key:   N kB` or, for counts such as `HugePages_Total`, `Key:   N`.
//! Values in kB are converted to bytes; counts are kept as they are. All keys, known or
//! not, are kept in order and reachable with [`Meminfo::get`]; the common ones also have a
//! named field (0 when the kernel does not print the key). Any malformed line is a
//! [`ParseError`]: the format has been stable for decades. `MemTotal` is required.

use super::{Error, FileKind, ParseError, parse_size, read_parsed, split_key};

macro_rules! meminfo_fields {
    ($($(#[$doc:meta])* $field:ident = $key:literal,)*) => {
        /// The parts of `/proc/meminfo` ebb uses (bytes, or counts for `HugePages_*`), plus
        /// every key via [`Meminfo::get`].
        #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
        pub struct Meminfo {
            $($(#[$doc])* pub $field: u64,)*
            /// Every key in file order, with its value in bytes (or a count).
            entries: Vec<(String, u64)>,
        }

        impl Meminfo {
            fn field(&mut self, key: &str) -> Option<&mut u64> {
                match key {
                    $($key => Some(&mut self.$field),)*
                    _ => None,
                }
            }
        }
    };
}

meminfo_fields! {
    /// `MemTotal`: usable RAM.
    mem_total = "MemTotal",
    /// `MemFree`: RAM left unused.
    mem_free = "MemFree",
    /// `MemAvailable`: estimate of memory available for new work without swapping.
    mem_available = "MemAvailable",
    /// `Buffers`: block device buffers.
    buffers = "Buffers",
    /// `Cached`: page cache (excluding swap cache), including shmem.
    cached = "Cached",
    /// `SwapCached`: swapped-out memory that is also in RAM.
    swap_cached = "SwapCached",
    /// `Active`: memory on active LRU lists.
    active = "Active",
    /// `Inactive`: memory on inactive LRU lists.
    inactive = "Inactive",
    /// `Active(anon)`.
    active_anon = "Active(anon)",
    /// `Inactive(anon)`: anonymous memory that is a reclaim candidate (incl. lazily freed).
    inactive_anon = "Inactive(anon)",
    /// `Active(file)`.
    active_file = "Active(file)",
    /// `Inactive(file)`.
    inactive_file = "Inactive(file)",
    /// `Unevictable`.
    unevictable = "Unevictable",
    /// `Mlocked`.
    mlocked = "Mlocked",
    /// `SwapTotal`: swap space configured.
    swap_total = "SwapTotal",
    /// `SwapFree`: swap space unused.
    swap_free = "SwapFree",
    /// `Zswap`: memory used by the zswap pool.
    zswap = "Zswap",
    /// `Zswapped`: memory stored in zswap.
    zswapped = "Zswapped",
    /// `Dirty`: waiting to be written back.
    dirty = "Dirty",
    /// `Writeback`: being written back.
    writeback = "Writeback",
    /// `AnonPages`: anonymous pages mapped into page tables.
    anon_pages = "AnonPages",
    /// `Mapped`: files mapped with mmap.
    mapped = "Mapped",
    /// `Shmem`: shmem and tmpfs.
    shmem = "Shmem",
    /// `KReclaimable`: kernel memory the kernel can reclaim.
    kreclaimable = "KReclaimable",
    /// `Slab`.
    slab = "Slab",
    /// `SReclaimable`.
    sreclaimable = "SReclaimable",
    /// `SUnreclaim`.
    sunreclaim = "SUnreclaim",
    /// `PageTables`.
    page_tables = "PageTables",
    /// `CommitLimit`.
    commit_limit = "CommitLimit",
    /// `Committed_AS`.
    committed_as = "Committed_AS",
    /// `AnonHugePages`: anonymous transparent huge pages.
    anon_huge_pages = "AnonHugePages",
    /// `ShmemHugePages`.
    shmem_huge_pages = "ShmemHugePages",
    /// `FileHugePages`.
    file_huge_pages = "FileHugePages",
    /// `HugePages_Total`: hugetlb pool size, a count of pages.
    huge_pages_total = "HugePages_Total",
    /// `HugePages_Free`: a count of pages.
    huge_pages_free = "HugePages_Free",
    /// `Hugepagesize`: default hugetlb page size.
    hugepagesize = "Hugepagesize",
}

impl Meminfo {
    /// The value of any key as the kernel names it (`"Active(anon)"`, `"HugePages_Total"`):
    /// bytes for kB values, a count otherwise.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.entries.iter().find(|(k, _)| k == key).map(|&(_, v)| v)
    }

    /// Every key with its value, in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, u64)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

/// Parses the text of `/proc/meminfo`.
pub fn parse(text: &str) -> Result<Meminfo, ParseError> {
    let kind = FileKind::Meminfo;
    let mut m = Meminfo::default();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let (key, value) = split_key(line)
            .ok_or_else(|| ParseError::new(kind, line_no, "expected `Key: N [kB]`", line))?;
        let value = parse_size(kind, line_no, line, value)?;
        if let Some(field) = m.field(key) {
            *field = value;
        }
        match m.entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => m.entries.push((key.to_owned(), value)),
        }
    }
    if m.get("MemTotal").is_none() {
        return Err(ParseError::new(kind, 0, "MemTotal is missing", ""));
    }
    Ok(m)
}

/// Reads `/proc/meminfo`.
pub fn read() -> Result<Meminfo, Error> {
    read_parsed("/proc/meminfo", parse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `cat /proc/meminfo` on the lab machine (Linux 6.18), abridged.
    const SAMPLE: &str = "\
MemTotal:       24683656 kB
MemFree:        23812516 kB
MemAvailable:   24375128 kB
Buffers:           12200 kB
Cached:           752740 kB
SwapCached:            0 kB
Active:           258528 kB
Inactive:         502564 kB
Active(anon):       1520 kB
Inactive(anon):     3556 kB
Active(file):     257008 kB
Inactive(file):   499008 kB
SwapTotal:             0 kB
SwapFree:              0 kB
Dirty:               900 kB
AnonPages:          7128 kB
Shmem:              8924 kB
VmallocTotal:   34359738367 kB
AnonHugePages:         0 kB
FileHugePages:      8192 kB
HugePages_Total:       0
HugePages_Free:        0
Hugepagesize:       2048 kB
DirectMap1G:    25165824 kB
";

    #[test]
    fn parses_real_sample() {
        let m = parse(SAMPLE).unwrap();
        assert_eq!(m.mem_total, 24683656 * 1024);
        assert_eq!(m.mem_available, 24375128 * 1024);
        assert_eq!(m.active_anon, 1520 * 1024);
        assert_eq!(m.inactive_file, 499008 * 1024);
        assert_eq!(m.hugepagesize, 2 << 20);
        assert_eq!(m.swap_total, 0);
        assert_eq!(m.zswap, 0, "absent key reads as 0");
        assert_eq!(m.get("VmallocTotal"), Some(34359738367 * 1024));
        assert_eq!(m.get("HugePages_Total"), Some(0));
        assert_eq!(m.get("Inactive(anon)"), Some(3556 * 1024));
        assert_eq!(m.get("Zswap"), None);
        assert_eq!(m.entries().count(), 24);
        assert_eq!(m.entries().next(), Some(("MemTotal", 24683656 * 1024)));
    }

    #[test]
    fn counts_are_not_scaled() {
        let m = parse("MemTotal: 4 kB\nHugePages_Total:      12\n").unwrap();
        assert_eq!(m.huge_pages_total, 12);
    }

    #[test]
    fn edge_cases() {
        assert_eq!(parse("").unwrap_err().line, 0);
        assert_eq!(parse("MemFree: 1 kB\n").unwrap_err().line, 0);
        for (text, line) in [
            ("MemTotal: 1 kB\nMemFree 1 kB\n", 2),
            ("MemTotal: 1 kB\nMemFree:\n", 2),
            ("MemTotal: 1 MB\n", 1),
            ("MemTotal: 18014398509481984 kB\n", 1),
            ("MemTotal: 99999999999999999999\n", 1),
            ("MemTotal: 1 kB\nMem Free: 1 kB\n", 2),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!((e.kind, e.line), (FileKind::Meminfo, line), "{text:?}");
        }
    }

    #[test]
    fn live() {
        let m = read().unwrap();
        assert!(m.mem_total > 0);
        assert!(m.mem_free <= m.mem_total && m.mem_available <= m.mem_total);
        assert!(m.get("MemTotal").is_some());
    }

    proptest! {
        #[test]
        fn never_panics(text in "(?s).{0,400}") {
            let _ = parse(&text);
        }

        #[test]
        fn never_panics_on_meminfo_like_lines(text in "([A-Za-z_()]{1,12}: *[0-9]{0,22}( kB)?\n){0,10}") {
            let _ = parse(&text);
        }

        #[test]
        fn round_trips(values in proptest::collection::btree_map("[A-Za-z_()]{1,12}", (0..=u64::MAX / 1024, any::<bool>()), 0..20)) {
            let mut text = String::from("MemTotal:       1 kB\n");
            for (k, (v, kb)) in &values {
                text += &format!("{k}: {v:>12}{}\n", if *kb { " kB" } else { "" });
            }
            let m = parse(&text).unwrap();
            for (k, (v, kb)) in &values {
                prop_assert_eq!(m.get(k), Some(if *kb { v * 1024 } else { *v }));
            }
        }
    }
}
