//! [`Region`]: an owned private anonymous mapping that can be advised, probed and measured.
//!
//! A region is what `Vec<u8>` would be if it came straight from mmap(2): page-aligned
//! memory that ebb unmaps on drop. On top of the bytes it offers the three things a
//! memory-hint experiment needs:
//!
//! - [`Region::advise`] / [`Region::advise_mut`]: madvise(2) on a byte range of it, with
//!   destructive advice (FREE, DONTNEED) only through `&mut`;
//! - [`Region::residency`]: which pages are resident, from mincore(2);
//! - [`Region::stats`]: what the kernel accounts for it — Rss, AnonHugePages, LazyFree, Swap —
//!   summed over the VMAs of /proc/self/smaps that lie inside it. The region is found by its
//!   address range, which is exact even where the kernel cannot name VMAs
//!   (`CONFIG_ANON_VMA_NAME` off); where it can, the name also shows in /proc/PID/maps as
//!   `[anon:NAME]` so other tools can find it. The kernel merges adjacent anonymous mappings
//!   with equal flags into one VMA, which would mix a neighbour's pages into the counts, so a
//!   region sits between two `PROT_NONE` guard pages ([`sys::map_isolated`]).
//!
//! Two lags to know when reading the counts: MADV_FREE moves pages to the lazyfree list
//! through a per-CPU batch of 15 (mm/swap.c, `cpu_fbatches.lru_lazyfree`), so `LazyFree`
//! and vmstat's `pglazyfree` may trail by up to 14 pages per CPU; and reading a page after
//! DONTNEED maps the shared zero page, which mincore(2) reports as resident.
//!
//! A huge region ([`RegionOptions::huge`]) starts on a huge-page boundary and carries
//! `MADV_HUGEPAGE`, so with THP `enabled` set to `madvise` or `always` its first write to each
//! aligned 2 MiB gets a huge page.
//!
//! ```
//! use ebb::{Advice, Region};
//! let mut r = Region::new(1 << 20)?;
//! r.as_mut_slice().fill(1);
//! r.advise(.., Advice::Cold)?;
//! r.advise_mut(..4096, Advice::DontNeed)?;
//! assert_eq!(r.as_slice()[0], 0);
//! assert_eq!(r.as_slice()[4096], 1);
//! # Ok::<(), ebb::region::Error>(())
//! ```
#![allow(unsafe_code)]

use std::io;
use std::ops::{Bound, Range, RangeBounds};
use std::ptr::NonNull;

use crate::advice::Advice;
use crate::procfs;
use crate::sys;

/// What went wrong with a region.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A region must hold at least one byte.
    #[error("a region needs a non-zero length")]
    ZeroLength,
    /// The length does not fit the address space once rounded up to pages.
    #[error("a region of {len} bytes does not fit the address space")]
    TooLarge {
        /// The length asked for.
        len: usize,
    },
    /// A byte range reached outside the region.
    #[error("range {start}..{end} is outside the region of {len} bytes")]
    OutOfBounds {
        /// Start of the range asked for.
        start: usize,
        /// End of the range asked for.
        end: usize,
        /// The region's length.
        len: usize,
    },
    /// Destructive advice (FREE, DONTNEED) needs exclusive access.
    #[error("{advice} may change the memory's contents: use advise_mut (exclusive access) for it")]
    NeedsExclusiveAccess {
        /// The advice refused.
        advice: Advice,
    },
    /// mmap(2) failed.
    #[error("mapping {len} bytes of anonymous memory: {source}")]
    Map {
        /// Bytes asked for.
        len: usize,
        /// The errno.
        source: io::Error,
    },
    /// The kernel refused the advice.
    #[error("{} on {len} bytes at {addr:#x}: {source}{}", advice.kernel_name(), hint(advice, source))]
    Advise {
        /// The advice given.
        advice: Advice,
        /// Start address.
        addr: usize,
        /// Length in bytes.
        len: usize,
        /// The errno.
        source: io::Error,
    },
    /// mincore(2) failed.
    #[error("mincore on {len} bytes at {addr:#x}: {source}")]
    Mincore {
        /// Start address.
        addr: usize,
        /// Length in bytes.
        len: usize,
        /// The errno.
        source: io::Error,
    },
    /// Reading /proc/self/smaps failed.
    #[error("reading the region's smaps entries: {0}")]
    Smaps(#[from] procfs::Error),
}

fn hint(advice: &Advice, source: &io::Error) -> String {
    match source.raw_os_error() {
        Some(libc::EINVAL) => {
            let (maj, min) = advice.min_kernel();
            format!(
                " (the kernel does not accept it here: it needs Linux {maj}.{min}+ and a suitable mapping)"
            )
        }
        Some(libc::EAGAIN) => " (transient: try again)".to_string(),
        _ => String::new(),
    }
}

/// How to map a [`Region`].
#[derive(Debug, Clone, Default)]
pub struct RegionOptions {
    /// Align the start to the huge-page size and advise `MADV_HUGEPAGE`.
    pub huge: bool,
    /// Name the VMA (`[anon:NAME]` in /proc/PID/maps) where the kernel supports it.
    pub name: Option<String>,
    /// Fault every page in writable at creation (`MADV_POPULATE_WRITE`, or a write per
    /// page on kernels before 5.14).
    pub populate: bool,
}

/// Per-region counters from /proc/self/smaps, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RegionStats {
    /// Resident bytes (`Rss`).
    pub rss: u64,
    /// Bytes mapped by transparent huge pages (`AnonHugePages`).
    pub anon_huge_pages: u64,
    /// Bytes lazily freed with MADV_FREE and not yet reused or reclaimed (`LazyFree`).
    pub lazy_free: u64,
    /// Bytes in swap (`Swap`).
    pub swap: u64,
    /// How many VMAs the region spans now (madvise can split one mapping into several).
    pub vmas: usize,
}

/// Which pages of a range are resident, from mincore(2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Residency {
    resident: Vec<bool>,
}

impl Residency {
    /// Pages in the range.
    pub fn pages(&self) -> usize {
        self.resident.len()
    }
    /// Pages resident (in RAM or the swap cache).
    pub fn resident_pages(&self) -> usize {
        self.resident.iter().filter(|r| **r).count()
    }
    /// Whether page `i` of the range is resident.
    pub fn is_resident(&self, i: usize) -> bool {
        self.resident.get(i).copied().unwrap_or(false)
    }
    /// Residency per page, in order.
    pub fn as_slice(&self) -> &[bool] {
        &self.resident
    }
}

/// An owned private anonymous mapping, unmapped on drop.
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    huge: bool,
    name: Option<String>,
    named_in_kernel: bool,
}

// SAFETY: a Region owns its mapping exclusively, like a Box<[u8]>; moving it to another
// thread moves that ownership.
unsafe impl Send for Region {}
// SAFETY: shared access only reads the bytes or gives non-destructive advice, both of which
// are sound from several threads at once.
unsafe impl Sync for Region {}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len)
            .field("huge", &self.huge)
            .field("name", &self.name)
            .finish()
    }
}

impl Region {
    /// Maps `len` bytes (rounded up to whole pages) of zeroed anonymous memory.
    pub fn new(len: usize) -> Result<Region, Error> {
        Region::with_options(len, &RegionOptions::default())
    }

    /// Maps `len` bytes (rounded up to whole pages) with `options`.
    pub fn with_options(len: usize, options: &RegionOptions) -> Result<Region, Error> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let page = sys::page_size();
        let len_rounded = len
            .checked_next_multiple_of(page)
            .filter(|l| *l <= isize::MAX as usize / 2)
            .ok_or(Error::TooLarge { len })?;
        let align = if options.huge {
            sys::huge_page_size()
        } else {
            page
        };
        let ptr = sys::map_isolated(len_rounded, align).map_err(|source| Error::Map {
            len: len_rounded,
            source,
        })?;
        let mut region = Region {
            ptr,
            len: len_rounded,
            huge: options.huge,
            name: options.name.clone(),
            named_in_kernel: false,
        };
        if options.huge {
            region.advise(.., Advice::HugePage)?;
        }
        if let Some(name) = &options.name {
            // Naming is best effort: kernels without CONFIG_ANON_VMA_NAME say EINVAL, and
            // the region is still found by its address range.
            region.named_in_kernel =
                sys::name_anonymous(ptr.as_ptr() as usize, len_rounded, name).is_ok();
        }
        if options.populate && region.advise(.., Advice::PopulateWrite).is_err() {
            // Kernels before 5.14: a write per page does the same.
            let slice = region.as_mut_slice();
            for i in (0..slice.len()).step_by(page) {
                slice[i] = 0;
            }
        }
        Ok(region)
    }

    /// Start address.
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// Raw pointer to the start, for code that manages the memory itself.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes (a whole number of pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a region holds at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the region was mapped for transparent huge pages.
    pub fn is_huge(&self) -> bool {
        self.huge
    }

    /// The name given, if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether the kernel took the name (it shows as `[anon:NAME]` in /proc/PID/maps).
    pub fn is_named_in_kernel(&self) -> bool {
        self.named_in_kernel
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes owned by self; shared access cannot
        // change them (destructive advice needs &mut self).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, and &mut self makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Turns a byte range of the region into absolute bounds, checking it.
    pub fn resolve(&self, range: impl RangeBounds<usize>) -> Result<Range<usize>, Error> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => self.len,
        };
        if start > end || end > self.len {
            return Err(Error::OutOfBounds {
                start,
                end,
                len: self.len,
            });
        }
        Ok(start..end)
    }

    /// The page-aligned span covering `range`: madvise(2) wants a page-aligned start, and
    /// rounding the end up is what the kernel does itself.
    fn page_span(&self, range: impl RangeBounds<usize>) -> Result<(usize, usize), Error> {
        let r = self.resolve(range)?;
        let page = sys::page_size();
        let start = r.start - r.start % page;
        let end = r.end.next_multiple_of(page).min(self.len);
        Ok((self.addr() + start, end.saturating_sub(start)))
    }

    /// Gives non-destructive `advice` for a byte range (widened to whole pages).
    /// FREE and DONTNEED are refused with [`Error::NeedsExclusiveAccess`]: use
    /// [`Region::advise_mut`].
    pub fn advise(&self, range: impl RangeBounds<usize>, advice: Advice) -> Result<(), Error> {
        if advice.is_destructive() {
            return Err(Error::NeedsExclusiveAccess { advice });
        }
        let (addr, len) = self.page_span(range)?;
        if len == 0 {
            return Ok(());
        }
        sys::madvise_hint(addr, len, advice).map_err(|source| Error::Advise {
            advice,
            addr,
            len,
            source,
        })
    }

    /// Gives any advice for a byte range (widened to whole pages), destructive advice
    /// included. After `DontNeed` the range reads as zero. After `Free` each page reads
    /// either its old bytes or zero until it is next written, whichever the kernel chose:
    /// write before you rely on the contents.
    pub fn advise_mut(
        &mut self,
        range: impl RangeBounds<usize>,
        advice: Advice,
    ) -> Result<(), Error> {
        let (addr, len) = self.page_span(range)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: &mut self means no reference into the region is alive, so the contents
        // may change under destructive advice; the range lies inside our mapping.
        unsafe { sys::madvise(addr as *mut u8, len, advice) }.map_err(|source| Error::Advise {
            advice,
            addr,
            len,
            source,
        })
    }

    /// Which pages of a byte range (widened to whole pages) are resident.
    pub fn residency(&self, range: impl RangeBounds<usize>) -> Result<Residency, Error> {
        let (addr, len) = self.page_span(range)?;
        let pages = len / sys::page_size();
        let mut out = vec![0u8; pages];
        if pages > 0 {
            sys::mincore(addr, len, &mut out).map_err(|source| Error::Mincore {
                addr,
                len,
                source,
            })?;
        }
        Ok(Residency {
            resident: out.iter().map(|b| b & 1 == 1).collect(),
        })
    }

    /// What the kernel accounts for the region now, summed over the VMAs of
    /// /proc/self/smaps inside it.
    pub fn stats(&self) -> Result<RegionStats, Error> {
        let entries = procfs::smaps::read_smaps_self()?;
        Ok(stats_within(
            &entries,
            self.addr() as u64,
            (self.addr() + self.len) as u64,
        ))
    }
}

/// Sums the smaps entries lying in `[start, end)`.
pub(crate) fn stats_within(
    entries: &[procfs::smaps::SmapsEntry],
    start: u64,
    end: u64,
) -> RegionStats {
    let mut s = RegionStats::default();
    for e in entries {
        if e.map.start >= start && e.map.end <= end {
            s.rss += e.counters.rss;
            s.anon_huge_pages += e.counters.anon_huge_pages;
            s.lazy_free += e.counters.lazy_free;
            s.swap += e.counters.swap;
            s.vmas += 1;
        }
    }
    s
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: we own the mapping and, being dropped, hold the last reference to it.
        // munmap of a range we mapped cannot fail short of a kernel bug; nothing to do then.
        let _ = unsafe { sys::unmap_isolated(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_length_and_overflow_are_errors() {
        assert!(matches!(Region::new(0), Err(Error::ZeroLength)));
        assert!(matches!(
            Region::new(usize::MAX),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn length_rounds_to_pages() {
        let r = Region::new(1).unwrap();
        assert_eq!(r.len(), sys::page_size());
        assert!(r.as_slice().iter().all(|b| *b == 0));
    }

    #[test]
    fn out_of_bounds_ranges_are_refused() {
        let r = Region::new(8192).unwrap();
        assert!(matches!(
            r.advise(4096..12288, Advice::Cold),
            Err(Error::OutOfBounds { .. })
        ));
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = r.resolve(10..5);
        assert!(reversed.is_err());
    }

    #[test]
    fn destructive_advice_needs_mut() {
        let mut r = Region::new(8192).unwrap();
        assert!(matches!(
            r.advise(.., Advice::Free),
            Err(Error::NeedsExclusiveAccess {
                advice: Advice::Free
            })
        ));
        r.as_mut_slice().fill(9);
        r.advise_mut(..4096, Advice::DontNeed).unwrap();
        assert_eq!(r.as_slice()[0], 0);
        assert_eq!(r.as_slice()[4096], 9);
    }

    #[test]
    fn residency_follows_touches() {
        let mut r = Region::new(16 * 4096).unwrap();
        assert_eq!(r.residency(..).unwrap().resident_pages(), 0);
        r.as_mut_slice()[5 * 4096] = 1;
        let res = r.residency(..).unwrap();
        assert_eq!(res.pages(), 16);
        assert_eq!(res.resident_pages(), 1);
        assert!(res.is_resident(5));
    }
}
