//! `/proc/PID/smaps` (per mapping) and `/proc/PID/smaps_rollup` (summed over mappings).
//!
//! ```text
//! 55d7ca772000-55d7ca774000 r--p 00000000 fe:00 247030                     /usr/bin/cat
//! Size:                  8 kB
//! Rss:                   8 kB
//! ...
//! THPeligible:           0
//! VmFlags: rd mr mw me
//! ```
//!
//! `smaps_rollup` has the same counters under a single `[rollup]` header (which is optional
//! here). Counters are in bytes; a counter the kernel does not print is 0.
//!
//! What is skipped and what is rejected:
//! - unknown `Key: value` lines are skipped whatever their value (e.g. `ProtectionKey`);
//! - a known counter whose value is not `N kB`, or overflows when turned into bytes, is an error;
//! - any other line that is not a mapping header is an error, as is a counter before the
//!   first header in `smaps`;
//! - an empty `smaps` is an empty list (kernel threads, zombies); an empty `smaps_rollup`
//!   is an error (the kernel fails the read with ESRCH instead of writing nothing).
//!
//! `smaps_rollup` costs one walk of the page tables, like `smaps`, but is far cheaper to
//! format and parse: prefer it when per-mapping detail is not needed.

use super::maps::MapsEntry;
use super::{Error, FileKind, ParseError, parse_kb, pid_path, read_parsed, split_key};

/// Memory counters of `smaps` / `smaps_rollup`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SmapsCounters {
    /// `Rss`: resident memory.
    pub rss: u64,
    /// `Pss`: proportional set size (shared pages divided among their mappers).
    pub pss: u64,
    /// `Pss_Dirty`: the dirty part of the PSS.
    pub pss_dirty: u64,
    /// `Pss_Anon`: PSS of anonymous pages (rollup only).
    pub pss_anon: u64,
    /// `Pss_File`: PSS of file pages (rollup only).
    pub pss_file: u64,
    /// `Pss_Shmem`: PSS of shmem pages (rollup only).
    pub pss_shmem: u64,
    /// `Shared_Clean`.
    pub shared_clean: u64,
    /// `Shared_Dirty`.
    pub shared_dirty: u64,
    /// `Private_Clean`.
    pub private_clean: u64,
    /// `Private_Dirty`.
    pub private_dirty: u64,
    /// `Referenced`: memory marked referenced (accessed recently).
    pub referenced: u64,
    /// `Anonymous`: memory not backed by a file.
    pub anonymous: u64,
    /// `KSM`: memory merged by KSM.
    pub ksm: u64,
    /// `LazyFree`: memory released with MADV_FREE and not yet reclaimed or re-dirtied.
    pub lazy_free: u64,
    /// `AnonHugePages`: anonymous memory mapped with transparent huge pages.
    pub anon_huge_pages: u64,
    /// `ShmemPmdMapped`: shmem mapped with huge pages.
    pub shmem_pmd_mapped: u64,
    /// `FilePmdMapped`: file memory mapped with huge pages.
    pub file_pmd_mapped: u64,
    /// `Shared_Hugetlb`.
    pub shared_hugetlb: u64,
    /// `Private_Hugetlb`.
    pub private_hugetlb: u64,
    /// `Swap`: memory swapped out.
    pub swap: u64,
    /// `SwapPss`: proportional share of the swapped-out memory.
    pub swap_pss: u64,
    /// `Locked`: memory locked with mlock.
    pub locked: u64,
}

/// The counters of `/proc/PID/smaps_rollup`: the whole process.
pub type SmapsRollup = SmapsCounters;

impl SmapsCounters {
    /// The field for a kernel key, or `None` for a key that is not a counter.
    fn field(&mut self, key: &str) -> Option<&mut u64> {
        Some(match key {
            "Rss" => &mut self.rss,
            "Pss" => &mut self.pss,
            "Pss_Dirty" => &mut self.pss_dirty,
            "Pss_Anon" => &mut self.pss_anon,
            "Pss_File" => &mut self.pss_file,
            "Pss_Shmem" => &mut self.pss_shmem,
            "Shared_Clean" => &mut self.shared_clean,
            "Shared_Dirty" => &mut self.shared_dirty,
            "Private_Clean" => &mut self.private_clean,
            "Private_Dirty" => &mut self.private_dirty,
            "Referenced" => &mut self.referenced,
            "Anonymous" => &mut self.anonymous,
            "KSM" => &mut self.ksm,
            "LazyFree" => &mut self.lazy_free,
            "AnonHugePages" => &mut self.anon_huge_pages,
            "ShmemPmdMapped" => &mut self.shmem_pmd_mapped,
            "FilePmdMapped" => &mut self.file_pmd_mapped,
            "Shared_Hugetlb" => &mut self.shared_hugetlb,
            "Private_Hugetlb" => &mut self.private_hugetlb,
            "Swap" => &mut self.swap,
            "SwapPss" => &mut self.swap_pss,
            "Locked" => &mut self.locked,
            _ => return None,
        })
    }
}

/// One mapping of `/proc/PID/smaps`: the maps header line and its counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SmapsEntry {
    /// The mapping, as in `/proc/PID/maps`.
    pub map: MapsEntry,
    /// `Size`: virtual size of the mapping, in bytes.
    pub size: u64,
    /// `KernelPageSize`: page size the kernel backs the mapping with, in bytes.
    pub kernel_page_size: u64,
    /// `MMUPageSize`: page size the MMU uses, in bytes.
    pub mmu_page_size: u64,
    /// The memory counters.
    pub counters: SmapsCounters,
    /// `THPeligible`: whether the mapping may get transparent huge pages; `None` if absent.
    pub thp_eligible: Option<bool>,
    /// `VmFlags`: two-letter flags (`rd`, `wr`, `hg` for MADV_HUGEPAGE, `nh`, ...).
    pub vm_flags: Vec<String>,
}

impl SmapsEntry {
    /// Applies one `Key: value` line; unknown keys are ignored.
    fn apply(
        &mut self,
        kind: FileKind,
        line_no: usize,
        line: &str,
        key: &str,
        value: &str,
    ) -> Result<(), ParseError> {
        match key {
            "Size" => self.size = parse_kb(kind, line_no, line, value)?,
            "KernelPageSize" => self.kernel_page_size = parse_kb(kind, line_no, line, value)?,
            "MMUPageSize" => self.mmu_page_size = parse_kb(kind, line_no, line, value)?,
            "THPeligible" => {
                self.thp_eligible = Some(match value {
                    "0" => false,
                    "1" => true,
                    _ => {
                        return Err(ParseError::new(
                            kind,
                            line_no,
                            "THPeligible is not 0 or 1",
                            line,
                        ));
                    }
                })
            }
            "VmFlags" => self.vm_flags = value.split_whitespace().map(str::to_owned).collect(),
            _ => {
                if let Some(field) = self.counters.field(key) {
                    *field = parse_kb(kind, line_no, line, value)?;
                }
            }
        }
        Ok(())
    }
}

/// Parses the text of `/proc/PID/smaps_rollup`.
pub fn parse_rollup(text: &str) -> Result<SmapsRollup, ParseError> {
    let kind = FileKind::SmapsRollup;
    let mut counters = SmapsCounters::default();
    let mut seen_counter = false;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        match split_key(line) {
            Some((key, value)) => {
                if let Some(field) = counters.field(key) {
                    *field = parse_kb(kind, line_no, line, value)?;
                    seen_counter = true;
                }
            }
            None if line_no == 1 => {
                MapsEntry::parse_line(kind, line_no, line)?;
            }
            None => return Err(ParseError::new(kind, line_no, "expected `Key: N kB`", line)),
        }
    }
    if !seen_counter {
        return Err(ParseError::new(kind, 0, "no counters", text));
    }
    Ok(counters)
}

/// Alias of [`parse_rollup`], so every module has a `parse`.
pub fn parse(text: &str) -> Result<SmapsRollup, ParseError> {
    parse_rollup(text)
}

/// Parses the text of `/proc/PID/smaps`.
pub fn parse_smaps(text: &str) -> Result<Vec<SmapsEntry>, ParseError> {
    let kind = FileKind::Smaps;
    let mut entries: Vec<SmapsEntry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        match split_key(line) {
            Some((key, value)) => {
                let entry = entries.last_mut().ok_or_else(|| {
                    ParseError::new(kind, line_no, "counter before any mapping header", line)
                })?;
                entry.apply(kind, line_no, line, key, value)?;
            }
            None => entries.push(SmapsEntry {
                map: MapsEntry::parse_line(kind, line_no, line)?,
                ..SmapsEntry::default()
            }),
        }
    }
    Ok(entries)
}

/// Reads `/proc/PID/smaps_rollup`.
///
/// A kernel thread has no memory map: the kernel fails the read with ESRCH, which is
/// reported as [`Error::Io`] (the process exists), not [`Error::NoProcess`].
pub fn read_rollup(pid: u32) -> Result<SmapsRollup, Error> {
    read_parsed(pid_path(pid, "smaps_rollup"), parse_rollup)
}

/// Reads `/proc/self/smaps_rollup`.
pub fn read_rollup_self() -> Result<SmapsRollup, Error> {
    read_parsed("/proc/self/smaps_rollup", parse_rollup)
}

/// Reads `/proc/PID/smaps`.
pub fn read_smaps(pid: u32) -> Result<Vec<SmapsEntry>, Error> {
    read_parsed(pid_path(pid, "smaps"), parse_smaps)
}

/// Reads `/proc/self/smaps`.
pub fn read_smaps_self() -> Result<Vec<SmapsEntry>, Error> {
    read_parsed("/proc/self/smaps", parse_smaps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::maps::MapKind;
    use proptest::prelude::*;

    /// `cat /proc/self/smaps_rollup` on the lab machine (Linux 6.18).
    const ROLLUP: &str = "\
56383a166000-7fff45a7f000 ---p 00000000 00:00 0                          [rollup]
Rss:                1752 kB
Pss:                 518 kB
Pss_Dirty:           116 kB
Pss_Anon:            116 kB
Pss_File:            402 kB
Pss_Shmem:             0 kB
Shared_Clean:       1596 kB
Shared_Dirty:          0 kB
Private_Clean:        40 kB
Private_Dirty:       116 kB
Referenced:         1752 kB
Anonymous:           116 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
";

    /// Two entries of `cat /proc/self/smaps` on the lab machine, the second edited to show
    /// a MADV_HUGEPAGE region with lazily freed memory and a protection key.
    const SMAPS: &str = "\
55d7ca772000-55d7ca774000 r--p 00000000 fe:00 247030                     /usr/bin/cat
Size:                  8 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   8 kB
Pss:                   8 kB
Pss_Dirty:             0 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         8 kB
Private_Dirty:         0 kB
Referenced:            8 kB
Anonymous:             0 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
VmFlags: rd mr mw me 
7f0000000000-7f0010000000 rw-p 00000000 00:00 0 
Size:             262144 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:              262144 kB
Anonymous:        262144 kB
LazyFree:          49152 kB
AnonHugePages:    262144 kB
ProtectionKey:         0
THPeligible:           1
VmFlags: rd wr mr mw me ac hg 
";

    #[test]
    fn parses_real_rollup() {
        let r = parse_rollup(ROLLUP).unwrap();
        assert_eq!(r.rss, 1752 * 1024);
        assert_eq!(r.pss, 518 * 1024);
        assert_eq!(r.pss_anon, 116 * 1024);
        assert_eq!(r.pss_file, 402 * 1024);
        assert_eq!(r.shared_clean, 1596 * 1024);
        assert_eq!(r.private_dirty, 116 * 1024);
        assert_eq!(r.referenced, 1752 * 1024);
        assert_eq!(r.lazy_free, 0);
        assert_eq!(parse(ROLLUP), Ok(r));
    }

    #[test]
    fn rollup_header_optional_missing_zero_unknown_skipped() {
        let r = parse_rollup("Rss: 4 kB\nNewKey: whatever\n").unwrap();
        assert_eq!(
            r,
            SmapsCounters {
                rss: 4096,
                ..Default::default()
            }
        );
    }

    #[test]
    fn rollup_errors() {
        for (text, line) in [
            ("", 0),
            ("NewKey: 1 kB\n", 0),
            ("Rss: 4\n", 1),
            ("Rss: x kB\n", 1),
            ("Rss: 4 kB\ngarbage\n", 2),
            ("Rss: 18014398509481984 kB\n", 1),
            ("not a header\nRss: 4 kB\n", 1),
        ] {
            let e = parse_rollup(text).unwrap_err();
            assert_eq!(
                (e.kind, e.line),
                (FileKind::SmapsRollup, line),
                "{text:?}: {e}"
            );
        }
        // The largest kB value that still fits in u64 bytes.
        let max = u64::MAX / 1024;
        assert_eq!(
            parse_rollup(&format!("Rss: {max} kB")).unwrap().rss,
            max * 1024
        );
    }

    #[test]
    fn parses_real_smaps() {
        let entries = parse_smaps(SMAPS).unwrap();
        assert_eq!(entries.len(), 2);
        let cat = &entries[0];
        assert_eq!(cat.map.kind(), MapKind::File("/usr/bin/cat"));
        assert_eq!(cat.size, 8192);
        assert_eq!(cat.kernel_page_size, 4096);
        assert_eq!(cat.counters.rss, 8192);
        assert_eq!(cat.counters.private_clean, 8192);
        assert_eq!(cat.thp_eligible, Some(false));
        assert_eq!(cat.vm_flags, ["rd", "mr", "mw", "me"]);
        let heap = &entries[1];
        assert_eq!(heap.map.kind(), MapKind::Anonymous);
        assert_eq!(heap.map.len(), 256 << 20);
        assert_eq!(heap.counters.anon_huge_pages, 256 << 20);
        assert_eq!(heap.counters.lazy_free, 48 << 20);
        assert_eq!(heap.counters.pss, 0);
        assert_eq!(heap.thp_eligible, Some(true));
        assert!(heap.vm_flags.iter().any(|f| f == "hg"));
    }

    #[test]
    fn smaps_edge_cases() {
        assert_eq!(parse_smaps(""), Ok(vec![]));
        let e = parse_smaps("Rss: 4 kB\n").unwrap_err();
        assert_eq!((e.kind, e.line), (FileKind::Smaps, 1));
        let header = "4000-5000 rw-p 00000000 00:00 0\n";
        let entries = parse_smaps(header).unwrap();
        assert_eq!(entries[0].thp_eligible, None);
        assert!(entries[0].vm_flags.is_empty());
        for bad in [
            "THPeligible: 2\n",
            "Size: 4\n",
            "Rss: 99999999999999999999 kB\n",
            "garbage\n",
        ] {
            let e = parse_smaps(&format!("{header}{bad}")).unwrap_err();
            assert_eq!(e.line, 2, "{bad:?}");
        }
    }

    #[test]
    fn live_self_and_missing_pid() {
        let rollup = read_rollup_self().unwrap();
        assert!(rollup.rss > 0 && rollup.pss > 0 && rollup.pss <= rollup.rss);
        let mine = read_rollup(std::process::id()).unwrap();
        assert!(mine.rss > 0);
        let smaps = read_smaps_self().unwrap();
        assert!(!smaps.is_empty());
        assert!(smaps.iter().all(|e| e.size == e.map.len()));
        assert!(smaps.iter().all(|e| !e.vm_flags.is_empty()));
        assert!(!read_smaps(std::process::id()).unwrap().is_empty());
        assert!(matches!(
            read_rollup(4_194_311),
            Err(Error::NoProcess { pid: 4_194_311 })
        ));
        assert!(matches!(
            read_smaps(4_194_311),
            Err(Error::NoProcess { pid: 4_194_311 })
        ));
    }

    #[test]
    fn kernel_thread_rollup_is_io_not_no_process() {
        // kthreadd is pid 2 in the initial pid namespace; skip (visibly) elsewhere.
        let Ok(status) = crate::procfs::status::read(2) else {
            eprintln!("skipped: no pid 2 in this pid namespace");
            return;
        };
        if status.kthread != Some(true) {
            eprintln!("skipped: pid 2 is not a kernel thread here");
            return;
        }
        assert!(matches!(read_rollup(2), Err(Error::Io { .. })));
    }

    proptest! {
        #[test]
        fn never_panics(text in "(?s).{0,400}") {
            let _ = parse_rollup(&text);
            let _ = parse_smaps(&text);
        }

        #[test]
        fn never_panics_on_smaps_like_lines(text in "([0-9a-f]{1,5}-[0-9a-f]{1,5} rw-p 0 0:0 0\n)?([A-Za-z_]{1,14}: *[0-9]{0,22}( kB)?\n){0,10}") {
            let _ = parse_rollup(&text);
            let _ = parse_smaps(&text);
        }

        #[test]
        fn rollup_counters_round_trip(rss in 0..=u64::MAX / 1024, swap in 0..=u64::MAX / 1024, lazy in 0..=u64::MAX / 1024) {
            let text = format!("Rss: {rss:>14} kB\nLazyFree: {lazy} kB\nSwap: {swap} kB\n");
            let r = parse_rollup(&text).unwrap();
            prop_assert_eq!((r.rss, r.lazy_free, r.swap), (rss * 1024, lazy * 1024, swap * 1024));
        }
    }
}
