//! The memory hints ebb gives the kernel, as a typed enum.
//!
//! Each variant is one `MADV_*` constant of madvise(2). They split into two kinds:
//!
//! - **Destructive** advice ([`Advice::Free`], [`Advice::DontNeed`]) may change what the
//!   memory holds: after it, a page reads as zero (DONTNEED at once, FREE if the kernel
//!   reclaims it before the next write). ebb only applies it through `&mut` access to the
//!   memory ([`crate::Region::advise_mut`]) or an `unsafe` call.
//! - **Non-destructive** advice (the rest) changes where the data lives or how it is mapped,
//!   never what it reads as, so it is safe through a shared reference.
//!
//! # References
//! - madvise(2), process_madvise(2)
//! - mm/madvise.c: `madvise_behavior_valid`, `process_madvise_remote_valid`

use std::fmt;
use std::str::FromStr;

/// One madvise(2) hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Advice {
    /// `MADV_FREE` (Linux 4.5): the pages' contents are garbage. The kernel may discard them
    /// under memory pressure instead of swapping them; a write before that cancels the
    /// discard for that page, with no fault and no zeroing. Until written, a page reads either
    /// its old bytes or zeros. Anonymous private memory only. Before 4.12 it discarded at once
    /// on a system without swap. Destructive.
    Free,
    /// `MADV_DONTNEED` (Linux 2.4): drop the pages now; private anonymous memory reads as zero
    /// on the next access (a page fault and a zeroed page each). Destructive.
    DontNeed,
    /// `MADV_COLD` (Linux 5.4): deactivate the pages so reclaim takes them first; contents are
    /// kept (swapped or written back when reclaimed). Valid for process_madvise.
    Cold,
    /// `MADV_PAGEOUT` (Linux 5.4): reclaim the private pages now (anonymous to swap, clean
    /// file pages dropped); contents are kept. With no swap, anonymous pages stay resident
    /// although the call succeeds. Valid for process_madvise.
    PageOut,
    /// `MADV_WILLNEED` (Linux 2.4): start reading the pages in (from the file or swap).
    /// Valid for process_madvise.
    WillNeed,
    /// `MADV_POPULATE_READ` (Linux 5.14): fault the pages in readable, as reads would; fails
    /// with an error instead of SIGBUS. Anonymous holes map the shared zero page.
    PopulateRead,
    /// `MADV_POPULATE_WRITE` (Linux 5.14): fault the pages in writable, as writes would,
    /// without changing their contents (a missing anonymous page becomes a zeroed page).
    PopulateWrite,
    /// `MADV_HUGEPAGE` (Linux 2.6.38): allow transparent huge pages for the range (needed when
    /// THP `enabled` is `madvise`).
    HugePage,
    /// `MADV_NOHUGEPAGE` (Linux 2.6.38): forbid transparent huge pages for the range.
    NoHugePage,
    /// `MADV_COLLAPSE` (Linux 6.1): synchronously collapse the range into transparent huge
    /// pages, regardless of khugepaged settings. Can stall on compaction. Valid for
    /// process_madvise.
    Collapse,
}

impl Advice {
    /// Every advice, in declaration order.
    pub const ALL: [Advice; 10] = [
        Advice::Free,
        Advice::DontNeed,
        Advice::Cold,
        Advice::PageOut,
        Advice::WillNeed,
        Advice::PopulateRead,
        Advice::PopulateWrite,
        Advice::HugePage,
        Advice::NoHugePage,
        Advice::Collapse,
    ];

    /// The `MADV_*` value passed to the kernel (include/uapi/asm-generic/mman-common.h).
    pub const fn as_raw(self) -> i32 {
        match self {
            Advice::Free => 8,
            Advice::DontNeed => 4,
            Advice::Cold => 20,
            Advice::PageOut => 21,
            Advice::WillNeed => 3,
            Advice::PopulateRead => 22,
            Advice::PopulateWrite => 23,
            Advice::HugePage => 14,
            Advice::NoHugePage => 15,
            Advice::Collapse => 25,
        }
    }

    /// The short lowercase name used on the command line and in JSON (`pageout`).
    pub const fn name(self) -> &'static str {
        match self {
            Advice::Free => "free",
            Advice::DontNeed => "dontneed",
            Advice::Cold => "cold",
            Advice::PageOut => "pageout",
            Advice::WillNeed => "willneed",
            Advice::PopulateRead => "populate_read",
            Advice::PopulateWrite => "populate_write",
            Advice::HugePage => "hugepage",
            Advice::NoHugePage => "nohugepage",
            Advice::Collapse => "collapse",
        }
    }

    /// The kernel's name for it (`MADV_PAGEOUT`).
    pub const fn kernel_name(self) -> &'static str {
        match self {
            Advice::Free => "MADV_FREE",
            Advice::DontNeed => "MADV_DONTNEED",
            Advice::Cold => "MADV_COLD",
            Advice::PageOut => "MADV_PAGEOUT",
            Advice::WillNeed => "MADV_WILLNEED",
            Advice::PopulateRead => "MADV_POPULATE_READ",
            Advice::PopulateWrite => "MADV_POPULATE_WRITE",
            Advice::HugePage => "MADV_HUGEPAGE",
            Advice::NoHugePage => "MADV_NOHUGEPAGE",
            Advice::Collapse => "MADV_COLLAPSE",
        }
    }

    /// The first kernel release that accepts it, as (major, minor).
    pub const fn min_kernel(self) -> (u32, u32) {
        match self {
            Advice::Free => (4, 5),
            Advice::DontNeed | Advice::WillNeed => (2, 4),
            Advice::Cold | Advice::PageOut => (5, 4),
            Advice::PopulateRead | Advice::PopulateWrite => (5, 14),
            Advice::HugePage | Advice::NoHugePage => (2, 6),
            Advice::Collapse => (6, 1),
        }
    }

    /// Whether it may change what the memory reads as (FREE, DONTNEED).
    pub const fn is_destructive(self) -> bool {
        matches!(self, Advice::Free | Advice::DontNeed)
    }

    /// Whether process_madvise(2) accepts it for another process
    /// (`process_madvise_remote_valid` in mm/madvise.c: COLD, PAGEOUT, WILLNEED, COLLAPSE).
    pub const fn is_remote_valid(self) -> bool {
        matches!(
            self,
            Advice::Cold | Advice::PageOut | Advice::WillNeed | Advice::Collapse
        )
    }
}

impl fmt::Display for Advice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The text was not the name of an advice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown advice {given:?}: expected one of free, dontneed, cold, pageout, willneed, populate_read, populate_write, hugepage, nohugepage, collapse"
)]
pub struct UnknownAdvice {
    /// What was given.
    pub given: String,
}

impl FromStr for Advice {
    type Err = UnknownAdvice;

    /// Accepts the short name (`pageout`), with `-` for `_`, or the kernel name (`MADV_PAGEOUT`),
    /// in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        let norm = norm.strip_prefix("madv_").unwrap_or(&norm);
        Advice::ALL
            .into_iter()
            .find(|a| a.name() == norm)
            .ok_or_else(|| UnknownAdvice {
                given: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Advice::ALL {
            assert_eq!(a.name().parse::<Advice>(), Ok(a));
            assert_eq!(a.kernel_name().parse::<Advice>(), Ok(a));
        }
        assert_eq!("Populate-Read".parse::<Advice>(), Ok(Advice::PopulateRead));
        assert!("pagein".parse::<Advice>().is_err());
    }

    #[test]
    fn raw_values_match_libc() {
        assert_eq!(Advice::Free.as_raw(), libc::MADV_FREE);
        assert_eq!(Advice::DontNeed.as_raw(), libc::MADV_DONTNEED);
        assert_eq!(Advice::WillNeed.as_raw(), libc::MADV_WILLNEED);
        assert_eq!(Advice::HugePage.as_raw(), libc::MADV_HUGEPAGE);
        assert_eq!(Advice::NoHugePage.as_raw(), libc::MADV_NOHUGEPAGE);
        assert_eq!(Advice::Cold.as_raw(), libc::MADV_COLD);
        assert_eq!(Advice::PageOut.as_raw(), libc::MADV_PAGEOUT);
        assert_eq!(Advice::PopulateRead.as_raw(), libc::MADV_POPULATE_READ);
        assert_eq!(Advice::PopulateWrite.as_raw(), libc::MADV_POPULATE_WRITE);
    }

    #[test]
    fn kinds() {
        let destructive: Vec<_> = Advice::ALL
            .into_iter()
            .filter(|a| a.is_destructive())
            .collect();
        assert_eq!(destructive, [Advice::Free, Advice::DontNeed]);
        let remote: Vec<_> = Advice::ALL
            .into_iter()
            .filter(|a| a.is_remote_valid())
            .collect();
        assert_eq!(
            remote,
            [
                Advice::Cold,
                Advice::PageOut,
                Advice::WillNeed,
                Advice::Collapse
            ]
        );
    }
}
