//! Volatile memory: `MADV_FREE_UNDO` on a stock kernel.
//!
//! A [`VolatileRegion`] is anonymous memory in one of two states. **Pinned** (while a
//! [`Pinned`] guard lives) it is ordinary memory, `&[u8]`/`&mut [u8]`. **Unpinned** (the rest
//! of the time) the kernel may take its pages back under memory pressure, and no access is
//! possible: the region has no accessor, only [`VolatileRegion::pin`], which answers either
//! `Ok(Pinned)` (every byte is as it was at unpin) or `Err(Purged)` (exactly these pages were
//! lost and now read as zero; all other bytes are as they were). Either way the region is
//! pinned and usable. Dropping the guard unpins it again. This is what Windows offers as
//! `MEM_RESET`/`MEM_RESET_UNDO`, macOS as purgeable memory and Android as ashmem pin/unpin;
//! Linux has only the first half, `MADV_FREE` (the `MADV_FREE_UNDO` proposed in 2015 was never
//! merged), and ebb builds the second half from the kernel's existing rules.
//!
//! ```
//! use ebb::volatile::VolatileRegion;
//! # fn main() -> Result<(), ebb::volatile::Error> {
//! let mut region = VolatileRegion::new(64 << 10)?;
//! region.pin().unwrap_or_else(|purged| purged.into_pinned())[..5].copy_from_slice(b"hello");
//! // The guard is gone: the region is unpinned and the kernel may discard it.
//! match region.pin() {
//!     Ok(pinned) => assert_eq!(&pinned[..5], b"hello"),
//!     Err(purged) => assert!(purged.lost_pages() > 0), // rebuild what was lost
//! }
//! # Ok(()) }
//! ```
//!
//! # The kernel argument
//!
//! `MADV_FREE` (mm/madvise.c, `madvise_free_pte_range`) does not free anything: for each
//! present private anonymous page it clears the PTE's dirty and accessed bits, clears the
//! folio's dirty flag and moves it to the inactive file LRU as *lazyfree* (it clears
//! `PG_swapbacked`). Later, reclaim reaches the folio and calls `try_to_unmap_one`
//! (mm/rmap.c), which for a lazyfree folio (`!folio_test_swapbacked`) discards it only if it
//! is still clean and unreferenced: when the PTE it clears is dirty, or the folio is dirty,
//! or someone holds an extra reference, it marks the folio swap-backed again ("redirtied")
//! and puts the mapping back. A discarded page leaves an empty PTE: the next read maps the
//! shared zero page, the next write a fresh zeroed page. A write to a page between the two
//! sets the PTE's dirty bit (on x86 in hardware, without a fault) and so takes the page out
//! of the kernel's hands for good. There is no third outcome.
//!
//! ebb uses exactly that. **At unpin** it records, for each 4 KiB page, a non-zero 8-byte
//! word and its offset, the *sentinel* (an all-zero page needs nothing: losing it changes
//! nothing), writes nothing, and applies `MADV_FREE` to the whole range in one call. Any
//! non-zero word detects a discard (a discarded page reads all zero); ebb keeps the previous
//! sentinel's word while it is still non-zero, and otherwise takes the first non-zero word of
//! the page. The previous word lies in the cache line the pin's exchange just touched, while
//! the first non-zero word may be several cold cache lines into the page (measured in `ebb bench
//! volatile`, whose pages have up to three leading zero lines: the unpin's recording step
//! went from ~60 to ~10-15 ns/page). **At pin**, for
//! each recorded page, it must learn whether the page is still there without allocating one
//! for a page that is gone, and then make it stay:
//! 1. *Is it there?* The textbook way is a plain atomic load of the word: zero means the
//!    page was discarded, and a load of a discarded page maps the shared zero page instead of
//!    allocating. ebb asks mincore(2) for the whole region first (one call; it reads the page
//!    tables and touches no page) and does the load only for pages mincore reports absent
//!    (discarded, or, rarely, swapped out because `MADV_FREE` skipped a page it could not
//!    lock: the load brings that one back intact). A page reported present goes straight to
//!    step 2. Measured on the lab machine, the load costs a second page-table assist per
//!    page (the accessed bit, then the dirty bit on the exchange: ~520 ns/page against ~300
//!    for the exchange alone), mincore ~10 ns/page. Where mincore fails, every page gets the
//!    load.
//! 2. *Make it stay*: `compare_exchange(v, v)`, a write of the same value, which sets the
//!    dirty bit if the page is still there, so reclaim will never discard it again, or, if
//!    reclaim discarded it since step 1, faults in a fresh zero page and fails.
//!
//! Either way the answer for that page is exact and final. A page reported intact is
//! byte-identical to its state at unpin, because a page is discarded whole or not at all.
//!
//! # Huge pages: the 2 MiB purge unit
//!
//! Re-dirtying costs one dirty-bit assist per 4 KiB page (measured on the lab machine at a
//! ~20x slowdown of a free + rewrite cycle against keeping the memory). A transparent huge
//! page avoids it: `madvise_free_huge_pmd` (mm/huge_memory.c) marks a whole, aligned,
//! PMD-mapped THP lazyfree without splitting it, one write re-dirties the PMD and with it the
//! whole 2 MiB, and reclaim discards such a folio only whole (`unmap_huge_pmd_locked`, via
//! `__discard_anon_folio_pmd_locked` in mm/huge_memory.c, Linux 6.12+). So in
//! [`HugeMode::Huge`] the purge unit is the 2 MiB page: one word per unit is recorded and
//! checked. The price: losing one unit loses 2 MiB, and memory is committed in 2 MiB steps.
//!
//! The argument only holds while the unit stays PMD-mapped: a THP split while unpinned turns
//! into 512 independent lazyfree pages, of which the sentinel covers one. Splits do happen
//! without any action of ours: in reclaim, `try_to_unmap_one` (mm/rmap.c) with
//! `TTU_SPLIT_HUGE_PMD` first tries `unmap_huge_pmd_locked`, and when
//! `__discard_anon_folio_pmd_locked` declines (an unexpected reference, e.g. a concurrent
//! GUP or pagemap reader, or a dirty PMD) it falls through to `split_huge_pmd_locked`; the
//! deferred-split shrinker splits "underused" THPs (mm/huge_memory.c `thp_underused`, when
//! `khugepaged/max_ptes_none` < 511); migration splits a THP it cannot move whole; so do
//! `MADV_PAGEOUT`/`MADV_COLD` of part of a unit (also remotely, via process_madvise) and
//! memory failure. None of these leaves a trace a process can read without a system call,
//! so the check cannot be skipped or amortised over several pins without letting a loss
//! through. ebb therefore asks the kernel whether the units are still PMD-mapped (the
//! `PAGEMAP_SCAN` ioctl, Linux 6.7, `PAGE_IS_HUGE`), once per pin, *after* the exchanges (an
//! exchange on a PMD-mapped unit dirties the whole PMD, and a split afterwards copies the
//! dirty bit into every PTE, so nothing can be lost once the check passes). In the usual case
//! (every full unit was huge at unpin) it asks the inverse question, "is any page of these
//! units *not* PMD-mapped?" with `max_pages` 1, so the kernel walks the PMDs and copies
//! nothing out; otherwise it asks for the PMD-mapped ranges. A unit recorded as huge that is
//! no longer PMD-mapped is declared lost and zeroed (`MADV_DONTNEED`), which is conservative
//! but never wrong. The same answer tells the next unpin how to record each unit: a unit
//! that is not PMD-mapped (THP allocation failed, or the tail of the region) is recorded page
//! by page like 4 KiB mode (the unpin scans again if a full unit was not huge, e.g. memory
//! first touched while pinned). Where `PAGEMAP_SCAN` is missing, huge mode is not used.
//!
//! *Pinning a huge unit* goes straight to the exchange (no load, no mincore: at 2 MiB per
//! unit the floor is ~0.5 ns per 4 KiB page and each extra step showed up as 20-35% of it).
//! The price is paid only when a unit was lost: the failing exchange faults in a fresh zeroed
//! huge page, which ebb gives back at once with `MADV_DONTNEED`. The PMD check is the cost
//! ebb keeps for correctness: one ioctl per pin, measured at ~1.6 µs for 64 MiB (32 units) on
//! the lab machine, of which ~0.6 µs is the bare system call; `ebb bench volatile` reports
//! the cycle ratio to the floor.
//!
//! [`HugeMode::Auto`], the default, uses huge units for regions of at least one huge page when
//! THP is available, and 4 KiB pages (with `MADV_NOHUGEPAGE`) otherwise: pin/unpin cycles of
//! large regions are then nearly free, at the cost of a coarser loss. Caches of small objects
//! that want to lose as little as possible should ask for [`HugeMode::Never`].
//!
//! # Fallbacks
//!
//! [`VolatileRegion::is_purgeable`] says whether the kernel may take the region back:
//! - `MADV_FREE` refused (kernels before 4.5, `EINVAL` on an `mlock`ed or `mlockall`ed range):
//!   the region switches to never-purge mode at the first refusal. It works as ordinary memory
//!   and every pin succeeds; no call returns an error for it.
//! - Kernels before 4.12 discard `MADV_FREE`d memory at once on a system without swap. A probe
//!   run once per process (write, free, read back) detects it and every region then never
//!   purges.
//!
//! # Where the guarantee weakens
//!
//! - **userfaultfd**: a missing-page handler registered on the range fills discarded pages
//!   with whatever it likes instead of zero; a sentinel that the handler restores hides the
//!   loss. Do not register volatile regions with userfaultfd.
//! - **fork**: `madvise_free_pte_range` skips folios mapped by more than one process, so a
//!   region unpinned while a child still shares its pages copy-on-write is silently not
//!   purgeable (until the next unpin after the sharing ends). A fork while the region is
//!   unpinned leaves both processes with lazily freed pages; each side's pin checks them
//!   correctly (the pagemap descriptor is reopened in the child).
//! - **KSM**: merged pages are not anonymous-exclusive and are never discarded.
//! - **khugepaged**: collapsing 4 KiB pages into a THP copies them into a new, dirty folio, so
//!   the region stops being purgeable until the next unpin. 4 KiB-mode regions are marked
//!   `MADV_NOHUGEPAGE` so this cannot happen to them; a huge unit that was split and then
//!   re-collapsed while unpinned would escape the PMD check (khugepaged needs recently
//!   referenced pages to collapse, which an unpinned region does not have).
//!
//! # Safety contract of this module
//!
//! The mapping is owned by the region; the only references into it are the `&[u8]`/`&mut
//! [u8]` a [`Pinned`] guard hands out, which borrow the guard, which borrows the region
//! mutably. Destructive advice (`MADV_FREE`, `MADV_DONTNEED`) is applied only when no such
//! reference exists (at unpin, or inside pin before the guard is made). The sentinel loads and
//! exchanges go through `AtomicU64` on 8-byte-aligned words inside the mapping, with no other
//! access to them at the same time.
//!
//! # References
//! - madvise(2) `MADV_FREE`; mm/madvise.c `madvise_free_pte_range`; mm/huge_memory.c
//!   `madvise_free_huge_pmd`, `__discard_anon_folio_pmd_locked`; mm/rmap.c `try_to_unmap_one`
//! - The MADV_FREE thread on linux-kernel, November 2015 (MADV_FREE_UNDO)
#![allow(unsafe_code)]

mod pagemap;
pub mod shared;

use std::fmt;
use std::ops::{Deref, DerefMut, Range};
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::advice::Advice;
use crate::sys;

pub use shared::{SharedPin, SharedVolatile};

/// Errors creating a volatile region.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A region must hold at least one byte.
    #[error("a volatile region must be at least one byte long")]
    ZeroLength,
    /// The length does not fit the address space once rounded up to whole pages.
    #[error(
        "a volatile region of {len} bytes cannot be mapped: rounding it to whole pages overflows"
    )]
    TooLarge {
        /// The length asked for.
        len: usize,
    },
    /// mmap(2) refused the mapping.
    #[error(
        "mapping {len} bytes of anonymous memory failed: {source} (check RLIMIT_AS and vm.overcommit_memory)"
    )]
    Map {
        /// The mapping length.
        len: usize,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

/// Whether a region uses 2 MiB transparent huge pages as its purge unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HugeMode {
    /// Huge units for regions of at least one huge page when THP and `PAGEMAP_SCAN` are
    /// available, else 4 KiB pages.
    #[default]
    Auto,
    /// Huge units where the kernel can provide them (falls back to 4 KiB per unit otherwise).
    Huge,
    /// 4 KiB purge units, `MADV_NOHUGEPAGE`.
    Never,
}

/// How a region is made.
#[derive(Debug, Clone, Default)]
pub struct VolatileOptions {
    /// The purge unit choice.
    pub huge: HugeMode,
    /// A name for /proc/PID/maps (best effort: needs `CONFIG_ANON_VMA_NAME`).
    pub name: Option<String>,
}

/// Counters of volatile memory, for one region or the whole process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct VolatileStats {
    /// Bytes currently pinned.
    pub bytes_pinned: u64,
    /// Bytes currently unpinned (the kernel may take them).
    pub bytes_unpinned: u64,
    /// Pins done.
    pub pins: u64,
    /// Pins that reported lost pages.
    pub purged_pins: u64,
    /// 4 KiB pages reported lost.
    pub pages_lost: u64,
}

struct Global {
    bytes_pinned: AtomicU64,
    bytes_unpinned: AtomicU64,
    pins: AtomicU64,
    purged_pins: AtomicU64,
    pages_lost: AtomicU64,
}

static GLOBAL: Global = Global {
    bytes_pinned: AtomicU64::new(0),
    bytes_unpinned: AtomicU64::new(0),
    pins: AtomicU64::new(0),
    purged_pins: AtomicU64::new(0),
    pages_lost: AtomicU64::new(0),
};

/// Counters over every volatile region of this process (the byte counts are current, the
/// others cumulative).
pub fn process_stats() -> VolatileStats {
    VolatileStats {
        bytes_pinned: GLOBAL.bytes_pinned.load(Ordering::Relaxed),
        bytes_unpinned: GLOBAL.bytes_unpinned.load(Ordering::Relaxed),
        pins: GLOBAL.pins.load(Ordering::Relaxed),
        purged_pins: GLOBAL.purged_pins.load(Ordering::Relaxed),
        pages_lost: GLOBAL.pages_lost.load(Ordering::Relaxed),
    }
}

/// What the kernel does with `MADV_FREE`, probed once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Lazy free works: memory is discarded only under pressure.
    Lazy,
    /// `MADV_FREE` is refused (errno): memory is never purged.
    Refused(i32),
    /// Freed memory is discarded at once (kernels before 4.12 without swap): never purged.
    DiscardsAtOnce,
}

/// Probes `MADV_FREE` on this kernel (once per process): write a page, free it, read it back.
pub fn support() -> Support {
    static PROBE: OnceLock<Support> = OnceLock::new();
    *PROBE.get_or_init(|| {
        let page = sys::page_size();
        let Ok(ptr) = sys::map_anonymous(page, page) else {
            return Support::Refused(libc::ENOMEM);
        };
        let word = ptr.as_ptr().cast::<u64>();
        // SAFETY: `word` is the aligned start of the page just mapped, which nothing else
        // refers to.
        unsafe { word.write_volatile(0x5eed) };
        // SAFETY: the page is ours and no reference into it exists.
        let res = unsafe { sys::madvise(ptr.as_ptr(), page, Advice::Free) };
        let out = match res {
            Err(e) => Support::Refused(e.raw_os_error().unwrap_or(libc::EINVAL)),
            // SAFETY: as above; a discarded page reads as zero.
            Ok(()) if unsafe { word.read_volatile() } == 0 => Support::DiscardsAtOnce,
            Ok(()) => Support::Lazy,
        };
        // SAFETY: the probe page is unmapped once, with no reference into it left.
        let _ = unsafe { sys::unmap(ptr, page) };
        out
    })
}

fn thp_available() -> bool {
    static AVAIL: OnceLock<bool> = OnceLock::new();
    *AVAIL.get_or_init(|| {
        let enabled = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if enabled.is_empty() || enabled.contains("[never]") {
            return false;
        }
        // PAGEMAP_SCAN must work, or a split unit could go unnoticed.
        let mut v = Vec::new();
        let probe = 0u64;
        let at = &probe as *const u64 as usize & !(sys::page_size() - 1);
        pagemap::huge_ranges(at, at + sys::page_size(), &mut v).is_ok()
    })
}

/// How many pages ahead pin and unpin prefetch.
const PREFETCH_PAGES: usize = 8;

/// No sentinel: the page (or unit) was all zero at unpin.
const NONE: u32 = u32::MAX;

/// A page's or unit's sentinel: a word that was non-zero at unpin.
#[derive(Debug, Clone, Copy)]
struct Sentinel {
    /// Word index from the start of the page (or unit); [`NONE`] if all zero.
    word: u32,
    value: u64,
}

/// Anonymous memory the kernel may discard while it is unpinned. See the [module
/// docs](self).
///
/// The types rule out access while unpinned and use after drop. A guard cannot outlive its
/// region:
/// ```compile_fail,E0505
/// let mut region = ebb::volatile::VolatileRegion::new(4096).unwrap();
/// let pinned = region.pin().unwrap();
/// drop(region); // error: `region` is borrowed by `pinned`
/// let _ = pinned[0];
/// ```
/// and the memory is reachable only through a guard, so no slice survives the unpin:
/// ```compile_fail,E0597
/// let mut region = ebb::volatile::VolatileRegion::new(4096).unwrap();
/// let bytes: &[u8] = {
///     let pinned = region.pin().unwrap();
///     &pinned[..] // error: `pinned` is dropped (the region unpinned) while borrowed
/// };
/// let _ = bytes[0];
/// ```
pub struct VolatileRegion {
    ptr: NonNull<u8>,
    /// Length asked for (the slice length).
    len: usize,
    /// Mapped length: `len` rounded up to whole pages.
    map_len: usize,
    /// Bytes per purge unit (4 KiB, or 2 MiB in huge mode).
    unit: usize,
    purgeable: bool,
    pinned: bool,
    /// Per 4 KiB page: the sentinel (4 KiB units, and the units of huge mode recorded page by
    /// page).
    sentinels: Vec<Sentinel>,
    /// Per unit in huge mode: the sentinel of a unit recorded as huge (word index from the
    /// unit's start). Kept apart from `sentinels`, where the units' entries would lie 8 KiB
    /// apart (a cache miss and often a TLB miss each when cold), so that a pin reads a few
    /// dense lines.
    unit_sentinels: Vec<Sentinel>,
    /// Per unit in huge mode: whether it was PMD-mapped at unpin.
    huge_at_unpin: Vec<bool>,
    /// Whether `huge_at_unpin` was refreshed by the last pin's scan.
    huge_fresh: bool,
    /// mincore(2) output, one byte per 4 KiB page.
    residency: Vec<u8>,
    scratch: Vec<(usize, usize)>,
    /// Per unit in huge mode, during a pin: whether its sentinel exchange failed.
    unit_lost: Vec<bool>,
    stats: VolatileStats,
}

// SAFETY: the region owns its mapping exclusively (like a `Box<[u8]>`); moving it to another
// thread moves that ownership. Access needs `&mut self`, so `&VolatileRegion` gives no access
// to the memory and sharing it is harmless.
unsafe impl Send for VolatileRegion {}
// SAFETY: see `Send`: `&self` methods only read the bookkeeping fields.
unsafe impl Sync for VolatileRegion {}

impl fmt::Debug for VolatileRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VolatileRegion")
            .field("addr", &self.ptr)
            .field("len", &self.len)
            .field("unit", &self.unit)
            .field("purgeable", &self.purgeable)
            .field("pinned", &self.pinned)
            .finish()
    }
}

impl VolatileRegion {
    /// Maps `len` bytes of zeroed volatile memory, unpinned, with default options.
    pub fn new(len: usize) -> Result<Self, Error> {
        Self::with_options(len, &VolatileOptions::default())
    }

    /// Maps `len` bytes of zeroed volatile memory, unpinned. A fresh region pins as intact.
    pub fn with_options(len: usize, opts: &VolatileOptions) -> Result<Self, Error> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let page = sys::page_size();
        let hpage = sys::huge_page_size();
        let map_len = len
            .checked_next_multiple_of(page)
            .filter(|l| *l <= isize::MAX as usize)
            .ok_or(Error::TooLarge { len })?;
        let huge = match opts.huge {
            HugeMode::Never => false,
            HugeMode::Auto => map_len >= hpage && thp_available(),
            HugeMode::Huge => thp_available(),
        };
        let align = if huge { hpage } else { page };
        let ptr = sys::map_anonymous(map_len, align).map_err(|source| Error::Map {
            len: map_len,
            source,
        })?;
        let advice = if huge {
            Advice::HugePage
        } else {
            Advice::NoHugePage
        };
        // Best effort: NOHUGEPAGE fails only where THP is compiled out, HUGEPAGE likewise.
        let _ = sys::madvise_hint(ptr.as_ptr() as usize, map_len, advice);
        if let Some(name) = &opts.name {
            let _ = sys::name_anonymous(ptr.as_ptr() as usize, map_len, name);
        }
        let pages = map_len / page;
        let unit = if huge { hpage } else { page };
        let purgeable = support() == Support::Lazy;
        GLOBAL
            .bytes_unpinned
            .fetch_add(len as u64, Ordering::Relaxed);
        Ok(VolatileRegion {
            ptr,
            len,
            map_len,
            unit,
            purgeable,
            pinned: false,
            sentinels: vec![
                Sentinel {
                    word: NONE,
                    value: 0
                };
                pages
            ],
            unit_sentinels: if huge {
                vec![
                    Sentinel {
                        word: NONE,
                        value: 0
                    };
                    map_len.div_ceil(hpage)
                ]
            } else {
                Vec::new()
            },
            huge_at_unpin: if huge {
                vec![false; map_len.div_ceil(hpage)]
            } else {
                Vec::new()
            },
            huge_fresh: false,
            residency: Vec::new(),
            scratch: Vec::new(),
            unit_lost: Vec::new(),
            stats: VolatileStats {
                bytes_unpinned: len as u64,
                ..VolatileStats::default()
            },
        })
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: regions are at least one byte long.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The purge unit in bytes: 4 KiB, or the huge page size in huge mode (where a unit the
    /// kernel did not back with a huge page is still handled per 4 KiB page).
    pub fn purge_unit(&self) -> usize {
        self.unit
    }

    /// How many purge units the kernel backed with a huge page at the last check (pin or
    /// unpin); 0 outside huge mode.
    pub fn huge_units(&self) -> usize {
        self.huge_at_unpin.iter().filter(|h| **h).count()
    }

    /// Whether the kernel may discard this region while unpinned (false in never-purge mode:
    /// see [Fallbacks](self#fallbacks)).
    pub fn is_purgeable(&self) -> bool {
        self.purgeable
    }

    /// Whether the region is pinned (only observable from a [`SharedVolatile`] or between
    /// the crate's raw calls; a [`Pinned`] guard borrows the region).
    pub fn is_pinned(&self) -> bool {
        self.pinned
    }

    /// This region's counters.
    pub fn stats(&self) -> VolatileStats {
        self.stats
    }

    /// Pins the region. `Ok` means every byte is as it was at the last unpin; `Err(Purged)`
    /// says which pages were lost (they read as zero, everything else is intact). The region
    /// is pinned either way until the guard is dropped.
    pub fn pin(&mut self) -> Result<Pinned<'_>, Purged<'_>> {
        let lost = self.pin_raw();
        let pinned = Pinned { region: self };
        if lost.is_empty() {
            Ok(pinned)
        } else {
            Purged::new(pinned, lost)
        }
    }

    /// Discards the pages overlapping `range` (byte offsets) now, with `MADV_DONTNEED`: the
    /// same outcome as reclaim discarding them (an empty page table entry), on demand. The
    /// next pin reports them lost if they held data (in huge mode, the whole unit whose huge
    /// page this splits). Needs `&mut self`, so the region is unpinned.
    pub fn discard(&mut self, range: Range<usize>) {
        let page = sys::page_size();
        let start = (range.start.min(self.map_len) / page) * page;
        let end = range.end.min(self.map_len).next_multiple_of(page);
        if start < end {
            self.zero(start, end);
        }
    }

    fn words(&self) -> *mut u64 {
        self.ptr.as_ptr().cast::<u64>()
    }

    /// Checks one sentinel at `word_index` (in words from the region start); true if intact.
    /// `resident` is mincore's answer for its page, `None` where mincore was unavailable.
    fn check(&self, word_index: usize, s: Sentinel, resident: Option<bool>) -> bool {
        // SAFETY: `word_index` is inside the mapping (the sentinel was found there), the
        // pointer is 8-byte aligned, and while pinning nothing else accesses the memory.
        let atom = unsafe { AtomicU64::from_ptr(self.words().add(word_index)) };
        match resident {
            // Present a moment ago: one exchange re-dirties it, or fails on a fresh zero
            // page if reclaim discarded it since.
            Some(true) => atom
                .compare_exchange(s.value, s.value, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok(),
            // Absent (discarded, or, rarely, swapped out: a page MADV_FREE skipped), or
            // unknown: the load maps the zero page for a discarded page instead of
            // allocating, and brings back a swapped one.
            Some(false) | None => {
                atom.load(Ordering::Relaxed) == s.value
                    && atom
                        .compare_exchange(s.value, s.value, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
            }
        }
    }

    /// Fills `self.residency` with mincore(2) for the whole mapping; false if it failed.
    fn probe_residency(&mut self) -> bool {
        let pages = self.sentinels.len();
        self.residency.resize(pages, 0);
        sys::mincore(
            self.ptr.as_ptr() as usize,
            self.map_len,
            &mut self.residency,
        )
        .is_ok()
    }

    /// Zeroes `[start, end)` (byte offsets) with MADV_DONTNEED, so that a page declared lost
    /// reads as zero even if only part of it was discarded.
    fn zero(&mut self, start: usize, end: usize) {
        // SAFETY: the range is inside the mapping and no reference into it exists (pinning
        // is in progress; the guard is made afterwards).
        let res =
            unsafe { sys::madvise(self.ptr.as_ptr().add(start), end - start, Advice::DontNeed) };
        if res.is_err() {
            // SAFETY: as above; a plain write of zeroes is the fallback.
            unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(start), 0, end - start) };
        }
    }

    /// The pin transition: checks every sentinel, returns the lost byte ranges (merged, in
    /// order, clipped to `len`) and updates the counters. Idempotent if already pinned.
    pub(crate) fn pin_raw(&mut self) -> Vec<Range<usize>> {
        if self.pinned {
            return Vec::new();
        }
        let page = sys::page_size();
        let mut lost: Vec<Range<usize>> = Vec::new();
        let push = |lost: &mut Vec<Range<usize>>, s: usize, e: usize| match lost.last_mut() {
            Some(l) if l.end == s => l.end = e,
            _ => lost.push(s..e),
        };
        if self.purgeable {
            let wpp = page / 8;
            // mincore answers residency for 4 KiB pages without touching them; huge units
            // use the load (one per 2 MiB, cheaper than a syscall).
            let need = self.huge_at_unpin.is_empty() || self.huge_at_unpin.iter().any(|h| !h);
            let mincore = need && self.probe_residency();
            let res = |i: usize| mincore.then(|| self.residency[i] & 1 == 1);
            if self.huge_at_unpin.is_empty() {
                for (i, s) in self.sentinels.iter().enumerate() {
                    self.prefetch(i + PREFETCH_PAGES, true);
                    if s.word != NONE && !self.check(i * wpp + s.word as usize, *s, res(i)) {
                        push(&mut lost, i * page, (i + 1) * page);
                    }
                }
            } else {
                let ppu = self.unit / page;
                // Reused across pins: no allocation on the hot path.
                let mut unit_lost = std::mem::take(&mut self.unit_lost);
                unit_lost.clear();
                unit_lost.resize(self.huge_at_unpin.len(), false);
                for (u, &huge) in self.huge_at_unpin.iter().enumerate() {
                    let first = u * ppu;
                    if huge {
                        let s = self.unit_sentinels[u];
                        // Straight to the exchange (see "Pinning a huge unit" in the module
                        // docs): a lost unit is released again below.
                        if s.word != NONE
                            && !self.check(first * wpp + s.word as usize, s, Some(true))
                        {
                            unit_lost[u] = true;
                            push(
                                &mut lost,
                                u * self.unit,
                                ((u + 1) * self.unit).min(self.map_len),
                            );
                        }
                    } else {
                        let last = ((u + 1) * ppu).min(self.sentinels.len());
                        for i in first..last {
                            let s = self.sentinels[i];
                            if s.word != NONE && !self.check(i * wpp + s.word as usize, s, res(i)) {
                                push(&mut lost, i * page, (i + 1) * page);
                            }
                        }
                    }
                }
                // After the exchanges: a unit recorded huge must still be PMD-mapped, or it
                // may have been split and lost 4 KiB pieces the sentinel does not cover.
                // The same scan tells the next unpin which units are huge.
                let base = self.ptr.as_ptr() as usize;
                let full = self.map_len / self.unit;
                let mut split = Vec::new();
                // The usual case, every full unit huge at unpin (a tail unit never is): one
                // yes/no question, whether any page of them is not PMD-mapped now. Yes
                // means nothing split and the record stands as it is.
                let unchanged = full > 0
                    && self.huge_at_unpin[..full].iter().all(|h| *h)
                    && pagemap::all_huge(base, base + full * self.unit).unwrap_or(false);
                if unchanged {
                    self.huge_fresh = true;
                } else {
                    let mut ranges = std::mem::take(&mut self.scratch);
                    ranges.clear();
                    let ok = pagemap::huge_ranges(base, base + self.map_len, &mut ranges).is_ok();
                    for (u, &was_lost) in unit_lost.iter().enumerate() {
                        let (s, e) = (base + u * self.unit, base + (u + 1) * self.unit);
                        let now = ok && ranges.iter().any(|&(rs, re)| rs <= s && e <= re);
                        let data = self.unit_sentinels[u].word != NONE;
                        if self.huge_at_unpin[u] && data && !was_lost && !now {
                            split.push(u);
                        }
                        self.huge_at_unpin[u] = now;
                    }
                    self.huge_fresh = ok;
                    self.scratch = ranges;
                }
                // A lost unit's exchange faulted in a fresh zeroed huge page: give it back.
                for (u, lost_unit) in unit_lost.iter().enumerate() {
                    if *lost_unit {
                        split.push(u);
                    }
                }
                for u in split {
                    let (s, e) = (u * self.unit, ((u + 1) * self.unit).min(self.map_len));
                    self.zero(s, e);
                    self.huge_at_unpin[u] = false;
                    if !unit_lost[u] {
                        push(&mut lost, s, e);
                    }
                }
                self.unit_lost = unit_lost;
                lost.sort_by_key(|r| r.start);
                let mut merged: Vec<Range<usize>> = Vec::with_capacity(lost.len());
                for r in lost.drain(..) {
                    push(&mut merged, r.start, r.end);
                }
                lost = merged;
            }
        }
        let mut pages_lost = 0u64;
        for r in &mut lost {
            pages_lost += ((r.end - r.start) / page) as u64;
            r.end = r.end.min(self.len);
        }
        lost.retain(|r| r.start < r.end);
        self.pinned = true;
        let len = self.len as u64;
        self.stats.pins += 1;
        self.stats.bytes_pinned = len;
        self.stats.bytes_unpinned = 0;
        GLOBAL.pins.fetch_add(1, Ordering::Relaxed);
        GLOBAL.bytes_pinned.fetch_add(len, Ordering::Relaxed);
        GLOBAL.bytes_unpinned.fetch_sub(len, Ordering::Relaxed);
        if pages_lost > 0 {
            self.stats.purged_pins += 1;
            self.stats.pages_lost += pages_lost;
            GLOBAL.purged_pins.fetch_add(1, Ordering::Relaxed);
            GLOBAL.pages_lost.fetch_add(pages_lost, Ordering::Relaxed);
        }
        lost
    }

    /// Starts loading the cache line of page `page`'s sentinel (the line pin exchanges and
    /// unpin reads first; the page's first line if it has none), if inside the mapping, for
    /// writing if `write`: the page walks and cache misses of the pages ahead then overlap
    /// with the work on this one (an exchange is serialising, so it cannot overlap itself).
    /// A prefetch never faults and never maps anything.
    #[inline(always)]
    fn prefetch(&self, page: usize, write: bool) {
        #[cfg(target_arch = "x86_64")]
        if let Some(s) = self.sentinels.get(page) {
            use std::arch::x86_64::{_MM_HINT_ET0, _MM_HINT_T0, _mm_prefetch};
            let word = if s.word == NONE { 0 } else { s.word as usize };
            let p = self
                .ptr
                .as_ptr()
                .wrapping_add(page * sys::page_size() + word * 8)
                .cast::<i8>()
                .cast_const();
            if write {
                // SAFETY: prefetching is a hint: it never faults and changes no memory.
                unsafe { _mm_prefetch::<_MM_HINT_ET0>(p) };
            } else {
                // SAFETY: as above.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(p) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (page, write);
    }

    /// Starts loading the cache line of huge unit `unit`'s sentinel, if there is such a unit.
    #[inline(always)]
    fn prefetch_unit(&self, unit: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(s) = self.unit_sentinels.get(unit) {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let word = if s.word == NONE { 0 } else { s.word as usize };
            let p = self
                .ptr
                .as_ptr()
                .wrapping_add(unit * self.unit + word * 8)
                .cast::<i8>()
                .cast_const();
            // SAFETY: prefetching is a hint: it never faults and changes no memory.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = unit;
    }

    /// The sentinel of `[from, to)` (word indices) at unpin: the previous sentinel's word if
    /// it is still non-zero, else the first non-zero word. Any non-zero word serves (a
    /// discarded page reads all zero), and the previous one is the line the pin's exchange
    /// just touched, where the first non-zero word may lie several cache misses further in.
    #[inline(always)]
    fn pick_sentinel(&self, from: usize, to: usize, prev: Sentinel) -> Sentinel {
        if prev.word != NONE && (prev.word as usize) < to - from {
            // SAFETY: `from + prev.word` is inside `[from, to)`, so inside the mapping and
            // aligned; no mutable reference exists while unpinning (the guard is being
            // dropped).
            let value = unsafe { self.words().add(from + prev.word as usize).read() };
            if value != 0 {
                return Sentinel {
                    word: prev.word,
                    value,
                };
            }
        }
        self.first_nonzero(from, to)
    }

    /// Finds the first non-zero word in `[from, to)` (word indices), relative to `from`.
    fn first_nonzero(&self, from: usize, to: usize) -> Sentinel {
        // SAFETY: `[from, to)` is inside the mapping, aligned, and no mutable reference
        // exists while unpinning (the guard is being dropped).
        let words = unsafe { std::slice::from_raw_parts(self.words().add(from), to - from) };
        // The first cache line without branches on the data (most pages have their sentinel
        // there); then the rest of the page.
        if let Some(line) = words.get(..8) {
            let mask = line
                .iter()
                .enumerate()
                .fold(0u32, |m, (k, w)| m | (u32::from(*w != 0) << k));
            if mask != 0 {
                let i = mask.trailing_zeros() as usize;
                return Sentinel {
                    word: i as u32,
                    value: line[i],
                };
            }
        }
        match words.iter().position(|w| *w != 0) {
            Some(i) => Sentinel {
                word: i as u32,
                value: words[i],
            },
            None => Sentinel {
                word: NONE,
                value: 0,
            },
        }
    }

    /// The unpin transition: records sentinels, then `MADV_FREE`. Idempotent if unpinned.
    pub(crate) fn unpin_raw(&mut self) {
        if !self.pinned {
            return;
        }
        if self.purgeable {
            let page = sys::page_size();
            let wpp = page / 8;
            if self.huge_at_unpin.is_empty() {
                for i in 0..self.sentinels.len() {
                    self.prefetch(i + PREFETCH_PAGES, false);
                    self.sentinels[i] =
                        self.pick_sentinel(i * wpp, (i + 1) * wpp, self.sentinels[i]);
                }
            } else {
                // The pin's scan is fresh enough when it found every full unit huge; else (first
                // unpin, failed scan) ask the kernel. A unit split while pinned is caught by
                // the next pin's scan.
                // A full unit not huge at the pin may have got its huge page since (memory
                // first touched while pinned): look again.
                let full = self.map_len / self.unit;
                if !self.huge_fresh || self.huge_at_unpin[..full].iter().any(|h| !h) {
                    let base = self.ptr.as_ptr() as usize;
                    let mut ranges = std::mem::take(&mut self.scratch);
                    ranges.clear();
                    let ok = pagemap::huge_ranges(base, base + self.map_len, &mut ranges).is_ok();
                    for u in 0..self.huge_at_unpin.len() {
                        let (s, e) = (base + u * self.unit, base + (u + 1) * self.unit);
                        self.huge_at_unpin[u] =
                            ok && ranges.iter().any(|&(rs, re)| rs <= s && e <= re);
                    }
                    self.scratch = ranges;
                }
                self.huge_fresh = false;
                let ppu = self.unit / page;
                let pages = self.sentinels.len();
                for u in 0..self.huge_at_unpin.len() {
                    let huge = self.huge_at_unpin[u];
                    let first = u * ppu;
                    let last = ((u + 1) * ppu).min(pages);
                    self.prefetch_unit(u + 2);
                    if huge {
                        self.unit_sentinels[u] =
                            self.pick_sentinel(first * wpp, last * wpp, self.unit_sentinels[u]);
                    } else {
                        for i in first..last {
                            self.sentinels[i] =
                                self.pick_sentinel(i * wpp, (i + 1) * wpp, self.sentinels[i]);
                        }
                    }
                }
            }
            // SAFETY: no reference into the mapping exists (the guard is gone) and the
            // region owns it; losing its contents is what unpinned means.
            if unsafe { sys::madvise(self.ptr.as_ptr(), self.map_len, Advice::Free) }.is_err() {
                // Refused (mlock, old kernel): never purge this region from now on.
                self.purgeable = false;
            }
        }
        self.pinned = false;
        let len = self.len as u64;
        self.stats.bytes_pinned = 0;
        self.stats.bytes_unpinned = len;
        GLOBAL.bytes_pinned.fetch_sub(len, Ordering::Relaxed);
        GLOBAL.bytes_unpinned.fetch_add(len, Ordering::Relaxed);
    }

    /// The memory, if the region is pinned (crate-internal: the cache keeps chunks pinned
    /// between calls without holding a guard).
    pub(crate) fn pinned_bytes(&self) -> Option<&[u8]> {
        // SAFETY: pinned, and `&self` excludes every writer (unpinning needs `&mut self`).
        self.pinned.then(|| unsafe { self.slice_unchecked() })
    }

    /// The memory, mutably, if the region is pinned.
    pub(crate) fn pinned_bytes_mut(&mut self) -> Option<&mut [u8]> {
        // SAFETY: pinned, and `&mut self` makes this the only reference into the mapping
        // until it ends; nothing can unpin meanwhile.
        self.pinned
            .then(|| unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) })
    }

    /// The memory as a slice, for a pinned region (crate-internal: [`SharedVolatile`]).
    ///
    /// # Safety
    /// The region must be pinned and stay pinned, and nothing may write to it, for as long
    /// as the slice lives.
    pub(crate) unsafe fn slice_unchecked<'a>(&self) -> &'a [u8] {
        debug_assert!(self.pinned);
        // SAFETY: the mapping is `len` readable bytes; the caller keeps it pinned (no
        // destructive advice) and unwritten while the slice lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for VolatileRegion {
    fn drop(&mut self) {
        let len = self.len as u64;
        if self.pinned {
            GLOBAL.bytes_pinned.fetch_sub(len, Ordering::Relaxed);
        } else {
            GLOBAL.bytes_unpinned.fetch_sub(len, Ordering::Relaxed);
        }
        // SAFETY: the region owns the mapping and, being dropped, has no guard borrowing it.
        let _ = unsafe { sys::unmap(self.ptr, self.map_len) };
    }
}

/// A pinned region: ordinary memory until dropped, which unpins it.
pub struct Pinned<'a> {
    region: &'a mut VolatileRegion,
}

impl Pinned<'_> {
    /// Unpins now (the same as dropping the guard).
    pub fn unpin(self) {}

    /// The region (for its counters and options).
    pub fn region(&self) -> &VolatileRegion {
        self.region
    }
}

impl fmt::Debug for Pinned<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pinned")
            .field("region", &self.region)
            .finish()
    }
}

impl Deref for Pinned<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the region is pinned while the guard lives, and the guard's borrow rules
        // (shared here) keep any writer out.
        unsafe { self.region.slice_unchecked() }
    }
}

impl DerefMut for Pinned<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: the region is pinned while the guard lives; the guard holds the only
        // (mutable) borrow of the region, so this is the only reference into the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.region.ptr.as_ptr(), self.region.len) }
    }
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        self.region.unpin_raw();
    }
}

/// The answer of a pin that found pages lost: which ones, and the pinned region.
pub struct Purged<'a> {
    pinned: Pinned<'a>,
    lost: Vec<Range<usize>>,
    pages: usize,
}

impl<'a> Purged<'a> {
    fn new(pinned: Pinned<'a>, lost: Vec<Range<usize>>) -> Result<Pinned<'a>, Self> {
        let page = sys::page_size();
        let pages = lost.iter().map(|r| (r.end - r.start).div_ceil(page)).sum();
        Err(Purged {
            pinned,
            lost,
            pages,
        })
    }

    /// The lost byte ranges, merged and in order; each now reads as zero.
    pub fn lost(&self) -> &[Range<usize>] {
        &self.lost
    }

    /// How many 4 KiB pages of the region were lost (counting only pages within its length).
    pub fn lost_pages(&self) -> usize {
        self.pages
    }

    /// Whether byte `offset` was lost.
    pub fn is_lost(&self, offset: usize) -> bool {
        self.lost.iter().any(|r| r.contains(&offset))
    }

    /// The pinned region, to rebuild what was lost.
    pub fn pinned(&mut self) -> &mut Pinned<'a> {
        &mut self.pinned
    }

    /// The pinned region, dropping the report.
    pub fn into_pinned(self) -> Pinned<'a> {
        self.pinned
    }
}

impl fmt::Debug for Purged<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Purged")
            .field("lost", &self.lost)
            .field("pages", &self.pages)
            .finish()
    }
}

impl fmt::Display for Purged<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} pages of the volatile region were discarded by the kernel",
            self.pages
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_region_pins_intact_and_zeroed() {
        let mut r = VolatileRegion::new(10_000).unwrap();
        let p = r.pin().unwrap();
        assert_eq!(p.len(), 10_000);
        assert!(p.iter().all(|b| *b == 0));
    }

    #[test]
    fn zero_and_overflowing_lengths_are_errors() {
        assert!(matches!(VolatileRegion::new(0), Err(Error::ZeroLength)));
        assert!(matches!(
            VolatileRegion::new(usize::MAX),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            VolatileRegion::new(usize::MAX - 4095),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn probe_finds_lazy_free_on_this_kernel() {
        assert_eq!(support(), Support::Lazy);
    }

    #[test]
    fn sentinel_is_first_nonzero_word() {
        let mut r = VolatileRegion::with_options(
            3 * 4096,
            &VolatileOptions {
                huge: HugeMode::Never,
                name: None,
            },
        )
        .unwrap();
        {
            let mut p = r.pin().unwrap();
            p[4096 + 800] = 7;
        }
        assert_eq!(r.sentinels[0].word, NONE);
        assert_eq!(r.sentinels[1].word, 100);
        assert_eq!(r.sentinels[1].value, 7);
        assert_eq!(r.sentinels[2].word, NONE);
    }

    #[test]
    fn sentinel_keeps_its_word_while_non_zero() {
        let mut r = VolatileRegion::with_options(
            4096,
            &VolatileOptions {
                huge: HugeMode::Never,
                name: None,
            },
        )
        .unwrap();
        r.pin().unwrap()[800] = 7;
        assert_eq!((r.sentinels[0].word, r.sentinels[0].value), (100, 7));
        // An earlier non-zero word appears: the kept word still serves.
        r.pin().unwrap()[16] = 9;
        assert_eq!((r.sentinels[0].word, r.sentinels[0].value), (100, 7));
        // The kept word changes: its new value is recorded.
        r.pin().unwrap()[801] = 1;
        assert_eq!(
            (r.sentinels[0].word, r.sentinels[0].value),
            (100, 7 | 1 << 8)
        );
        // The kept word becomes zero: the first non-zero word takes over.
        {
            let mut p = r.pin().unwrap();
            p[800] = 0;
            p[801] = 0;
        }
        assert_eq!((r.sentinels[0].word, r.sentinels[0].value), (2, 9));
        assert_eq!(r.pin().unwrap()[16], 9);
    }

    #[test]
    fn huge_mode_uses_pmd_units_when_backed() {
        let h = sys::huge_page_size();
        let mut r = VolatileRegion::with_options(
            2 * h + 4096,
            &VolatileOptions {
                huge: HugeMode::Huge,
                name: None,
            },
        )
        .unwrap();
        assert_eq!(r.purge_unit(), h);
        {
            let mut p = r.pin().unwrap();
            p.fill(0xa5);
        }
        // The tail unit is 4 KiB-mapped; the full units got THPs on this machine.
        assert_eq!(r.huge_at_unpin, vec![true, true, false]);
        let p = r.pin().unwrap();
        assert!(p.iter().all(|b| *b == 0xa5));
    }

    #[test]
    fn counters_follow_transitions() {
        let before = process_stats();
        let mut r = VolatileRegion::new(8192).unwrap();
        drop(r.pin().unwrap());
        drop(r.pin().unwrap());
        let s = r.stats();
        assert_eq!(
            (s.pins, s.bytes_pinned, s.bytes_unpinned, s.purged_pins),
            (2, 0, 8192, 0)
        );
        assert!(process_stats().pins >= before.pins + 2);
    }
}
