//! A hugepage-preserving page heap: MADV_SPLITTABLE / MADV_UNSPLITTABLE in userspace.
//!
//! # The kernel argument
//!
//! A transparent huge page (THP) maps 2 MiB with one page-table entry: one TLB entry instead
//! of 512, and one fault instead of 512 when the memory is first touched. Any madvise(2)
//! that frees *part* of a THP (MADV_FREE or MADV_DONTNEED of one 4 KiB page inside it)
//! splits the PMD mapping at once (measured in LAB.md: AnonHugePages drops by 2 MiB), and
//! the huge page only comes back if khugepaged or MADV_COLLAPSE re-forms it. MADV_FREE of a
//! *whole*, aligned 2 MiB THP does not split it (`madvise_free_huge_pmd`): the page is marked
//! clean, the kernel may discard it under pressure, and a write before that cancels the
//! discard with no fault at all.
//!
//! In the MADV_FREE thread David Rientjes proposed MADV_SPLITTABLE: freed memory is queued and
//! only zapped on subsequent memory pressure, so THPs are not split while there is none; and
//! MADV_UNSPLITTABLE takes a queued range back. Linux never merged it. [`PageHeap`] gives the
//! same semantics on a stock kernel:
//!
//! - **Freeing makes no system call.** A freed span goes back to the heap's bookkeeping, its
//!   hugepage stamped with the time (the LRU timestamp, see below).
//! - **A hugepage that becomes entirely free** is released whole with MADV_FREE after
//!   [`HeapOptions::release_delay`]: no split, and no fault if it is reused before the kernel
//!   takes it.
//! - **Partly free hugepages are kept intact** until memory pressure
//!   ([`PageHeap::handle_pressure`]) or the budget [`HeapOptions::max_free_bytes`] asks;
//!   the release escalates with the [`Level`]: `Low` releases whole free hugepages only (no
//!   split); `Medium` also the free ranges of partly used hugepages idle for at least
//!   [`HeapOptions::partial_min_idle`]; `Critical` drops every free page with MADV_DONTNEED so
//!   RSS really falls. Partial ranges are taken in the order that frees the most bytes for the
//!   fewest splits: hugepages already split first (no new split), then least recently freed,
//!   then those with the most free pages.
//! - **After pressure passes** ([`HeapOptions::collapse_quiet`] without an event), split
//!   hugepages that became mostly used ([`HeapOptions::collapse_min_used`]) are re-formed with
//!   MADV_COLLAPSE, two at a time, with exponential back-off after a failure (collapse can
//!   stall on compaction and fail with EAGAIN).
//! - **UNSPLITTABLE on reuse**: [`PageHeap::alloc`] may return stale bytes;
//!   [`PageHeap::alloc_zeroed`] zeroes only pages not known to be zero (never touched, or
//!   dropped with MADV_DONTNEED; MADV_FREE of a zero page leaves it zero either way). A
//!   released intact hugepage is taken back whole on its first reuse with one
//!   MADV_POPULATE_WRITE over its 2 MiB, which marks the THP dirty again without a fault (the
//!   kernel can no longer discard it; its other free pages count as held again).
//!
//! ```
//! use ebb::heap::{HeapOptions, PageHeap};
//! use ebb::pressure::Level;
//! let heap = PageHeap::new(HeapOptions { reservation: 64 << 20, ..HeapOptions::default() })?;
//! let mut span = heap.alloc(512)?; // one whole 2 MiB hugepage
//! span.as_mut_slice().fill(7);
//! heap.free(span)?; // no system call: the hugepage stays mapped huge, held
//! assert_eq!(heap.stats().free_held_bytes, 2 << 20);
//! heap.handle_pressure(Level::Low)?; // released whole with MADV_FREE: no split
//! assert_eq!(heap.stats().released_bytes, 2 << 20);
//! let zeroed = heap.alloc_zeroed(16)?; // taken back; zeroed where not known zero
//! assert!(zeroed.as_slice().iter().all(|&b| b == 0));
//! heap.free(zeroed)?;
//! # Ok::<(), ebb::heap::HeapError>(())
//! ```
//!
//! # Layout and placement
//!
//! The heap reserves [`HeapOptions::reservation`] bytes of address space up front: one
//! private anonymous `MAP_NORESERVE` read-write mapping aligned to 2 MiB, advised
//! MADV_HUGEPAGE and named best effort (`PR_SET_VMA_ANON_NAME`; kernels without
//! `CONFIG_ANON_VMA_NAME` refuse, so the heap finds its VMAs by address range). Nothing is
//! committed until touched; hugepages are handed out from the start of the reservation
//! upwards, so the touched part stays compact. One VMA means one line in smaps to measure THP
//! coverage, and no VMA splits from madvise.
//!
//! Placement follows tcmalloc's Temeraire filler: a span of fewer than 512 pages goes into the
//! partly used hugepage whose longest free run is the shortest that fits — by powers of two:
//! the filler's buckets are (⌊log2 longest free run⌋, used pages / 64), so most allocations
//! and frees leave a hugepage in its bucket — the fullest such, best fit within it; only when
//! none fits does it open an empty hugepage (the most recently emptied one first, being warm
//! and furthest from release).
//! Larger spans take whole contiguous free hugepages from the first fit in address order; the
//! slack in their last hugepage joins the filler. Hugepages thus stay either full or empty
//! where they can, which is what lets whole-hugepage releases do the work.
//!
//! # The LRU
//!
//! Every hugepage carries the time a span in it was last freed. Entirely free hugepages wait
//! for their timed release on a FIFO in that order; partly used hugepages are sorted by it
//! when a pressure event or the budget asks for their free ranges. The granularity is the
//! hugepage, since a release decision (split or not) is one per hugepage.
//!
//! # Who does the release work
//!
//! - Pressure: [`PageHeap::handle_pressure`] releases synchronously on the calling thread. A
//!   monitor attached with [`PageHeap::attach`] (or any callback using
//!   [`PageHeap::request_pressure`]) only hands the level to the heap's release thread, which
//!   wakes in microseconds, so the monitor's thread is not held up by a Critical DONTNEED of a
//!   gigabyte. Releasing 1 GiB of whole hugepages is 512 madvise calls, a few milliseconds:
//!   ≥ 90% is released well within 1 s (`ebb bench heap` measures it).
//! - Timed whole-hugepage releases and collapses: a heap-owned thread (`ebb-heap`) when
//!   [`HeapOptions::background`] is set (the default); otherwise on the caller's next
//!   [`PageHeap::free`] or [`PageHeap::alloc`] once due (what [`HugeAlloc`] uses, since an
//!   allocator must not spawn threads from inside `alloc`).
//! - The budget: on the freeing thread, as soon as a free makes the held bytes exceed it.
//!
//! # Concurrency and thread caches
//!
//! The bookkeeping (the core) sits behind one `std::sync::Mutex`. Spans of up to 16 pages
//! (64 KiB) are served in front of it by per-thread caches, as in tcmalloc (Temeraire keeps
//! its filler behind the central lock the same way): freeing such a span pushes it on the
//! calling thread's cache and allocating pops one, with no lock and no read-modify-write on
//! shared data except one compare-exchange on the span's own state byte (the double-free
//! check). A locked instruction right after a 4 KiB write waits for that write to drain from
//! the store buffer, so taking the lock per span cost about as much as the write itself.
//! A cache that runs dry borrows a batch of adjacent spans from the core in one locked call;
//! one that exceeds [`HeapOptions::thread_cache_bytes`] returns the older half of that size's
//! spans, merged into runs, in one locked call.
//!
//! The semantics stay exact:
//! - **Accounting.** A cached span is free: [`HeapStats::free_held_bytes`] includes
//!   [`HeapStats::thread_cached_bytes`], and `live + free_held + released == committed` holds.
//!   The core keeps cached spans *lent* (it neither hands them out nor releases them), so a
//!   thread's cache keeps at most its bound of memory out of the release policy.
//! - **Releases.** A pressure event or the budget bumps an epoch; each thread, on its next
//!   small-span operation, sees it (a plain load), returns its whole cache and repeats the
//!   event's release for what it returned. The thread that handles an event, or calls
//!   [`PageHeap::maintain`], returns its own cache first; [`PageHeap::flush_thread_cache`]
//!   does it on demand. A thread that never touches the heap again keeps at most
//!   `thread_cache_bytes` until it exits — the bounded price of a lock-free front end.
//!   The budget holds for the core; caches may add up to their bound per thread on top.
//! - **Thread exit** returns the cache (a TLS destructor).
//! - **Double frees** are checked exactly: each live small span's first page has a state
//!   byte holding its page count, cleared by one compare-exchange on free, so a second free
//!   (on any thread, even concurrently), a wrong page count, or a larger span over lent pages
//!   fails with [`HeapError::NotLive`].
//!
//! Releases run under the lock (they must: a hugepage being released must not be handed out
//! meanwhile).
//!
//! # Safety contract
//!
//! This module uses `unsafe` for the reservation's mmap/munmap, destructive madvise on free
//! pages, and the byte views of a [`Span`]. The invariant that keeps it sound: a page is
//! advised with MADV_FREE/DONTNEED or written by the heap only while no live span covers it
//! (checked under the lock by the bookkeeping), and a [`Span`] borrows its heap, so the
//! reservation outlives every span and views into it. Pages that were lazily freed are pinned
//! when handed out (MADV_POPULATE_WRITE, or one byte rewritten with its own value), so the
//! kernel can no longer discard them and a span's bytes never change except through the span.
#![allow(unsafe_code)]

mod alloc;
mod bits;
mod core;
mod tcache;

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU64};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

pub use alloc::HugeAlloc;

use self::core::{Core, PAGES, Policy, now_ns};
use self::tcache::{CacheLink, MAX_CACHED, with_cache};
use crate::advice::Advice;
use crate::pressure::Level;

/// Errors of the page heap.
#[derive(Debug, thiserror::Error)]
pub enum HeapError {
    /// A span of zero pages was asked for.
    #[error("a span of zero pages was requested: ask for at least one page")]
    ZeroPages,
    /// The span is larger than the whole reservation.
    #[error(
        "a span of {pages} pages exceeds the heap's address-space reservation of {reservation} bytes: raise HeapOptions::reservation"
    )]
    TooLarge {
        /// Pages asked for.
        pages: usize,
        /// The reservation, in bytes.
        reservation: usize,
    },
    /// The reservation has no room left for the span.
    #[error(
        "the heap's reservation of {reservation} bytes has no room for {pages} more contiguous pages: free spans or raise HeapOptions::reservation"
    )]
    Exhausted {
        /// Pages asked for.
        pages: usize,
        /// The reservation, in bytes.
        reservation: usize,
    },
    /// The span freed is not a live span of this heap.
    #[error(
        "the span at {addr:#x} ({pages} pages) is not a live span of this heap: freed twice, a wrong page count, or another heap's span"
    )]
    NotLive {
        /// Its address.
        addr: usize,
        /// Its page count.
        pages: usize,
    },
    /// Options that cannot work.
    #[error("invalid heap options: {0}")]
    Options(&'static str),
    /// Reserving the address space failed.
    #[error(
        "reserving {bytes} bytes of address space with mmap: {source} (check ulimit -v and vm.max_map_count)"
    )]
    Reserve {
        /// Bytes asked for.
        bytes: usize,
        /// The errno.
        source: std::io::Error,
    },
    /// A madvise(2) on the heap's own memory failed.
    #[error("madvise({advice}) of {len:#x} bytes at {addr:#x}: {source}")]
    Madvise {
        /// The advice.
        advice: Advice,
        /// Start of the range.
        addr: usize,
        /// Length in bytes.
        len: usize,
        /// The errno.
        source: std::io::Error,
    },
    /// Reading /proc/self/smaps for the THP coverage failed.
    #[error("reading the heap's THP coverage from /proc/self/smaps: {0}")]
    Smaps(#[from] crate::procfs::Error),
    /// Spawning the heap's release thread failed.
    #[error("spawning the heap's release thread: {0}")]
    Thread(std::io::Error),
}

/// How a [`PageHeap`] is set up.
#[derive(Debug, Clone)]
pub struct HeapOptions {
    /// Address space reserved up front, rounded up to whole 2 MiB hugepages: the most the heap
    /// can ever hold live. Costs no memory until touched. Default 64 GiB.
    pub reservation: usize,
    /// How long an entirely free hugepage stays held before it is released whole with
    /// MADV_FREE. Default 1 s.
    pub release_delay: Duration,
    /// Under `Medium` pressure, free ranges of partly used hugepages are released only if
    /// nothing in that hugepage was freed for this long. Default 1 s.
    pub partial_min_idle: Duration,
    /// If set, the most free memory the heap holds (not released); a free that exceeds it
    /// releases on the spot. Default none.
    pub max_free_bytes: Option<usize>,
    /// A split hugepage with at least this many of its 512 pages live is re-formed with
    /// MADV_COLLAPSE once pressure is quiet. Default 460 (90%).
    pub collapse_min_used: usize,
    /// How long after the last pressure event collapses may start. Default 10 s.
    pub collapse_quiet: Duration,
    /// Run timed releases and collapses on a heap-owned thread (default); if false they run
    /// on the caller's next alloc or free once due.
    pub background: bool,
    /// VMA name (best effort, see the module doc). Default `ebb-heap`.
    pub name: &'static str,
    /// The most free memory each thread may cache for this heap, in spans of up to 16 pages
    /// (64 KiB), so that allocating and freeing small spans takes no lock (see "Thread
    /// caches" in the module doc). Cached spans count as free-held. 0 turns the caches off.
    /// Default 1 MiB.
    pub thread_cache_bytes: usize,
}

impl Default for HeapOptions {
    fn default() -> Self {
        HeapOptions {
            reservation: 64 << 30,
            release_delay: Duration::from_secs(1),
            partial_min_idle: Duration::from_secs(1),
            max_free_bytes: None,
            collapse_min_used: 460,
            collapse_quiet: Duration::from_secs(10),
            background: true,
            name: "ebb-heap",
            thread_cache_bytes: 1 << 20,
        }
    }
}

/// Bytes released for one trigger, and how many times it fired with effect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Released {
    /// Events (timed passes, pressure events, budget enforcements).
    pub events: u64,
    /// Bytes newly given back.
    pub bytes: u64,
}

/// What caused a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    Delay,
    Budget,
    Low,
    Medium,
    Critical,
}

impl From<Level> for Trigger {
    fn from(l: Level) -> Trigger {
        match l {
            Level::Low => Trigger::Low,
            Level::Medium => Trigger::Medium,
            Level::Critical => Trigger::Critical,
        }
    }
}

/// Releases by trigger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReleaseCounts {
    /// Whole free hugepages after the release delay.
    pub delay: Released,
    /// The `max_free_bytes` budget.
    pub budget: Released,
    /// `Level::Low` pressure.
    pub low: Released,
    /// `Level::Medium` pressure.
    pub medium: Released,
    /// `Level::Critical` pressure.
    pub critical: Released,
}

impl ReleaseCounts {
    fn get_mut(&mut self, t: Trigger) -> &mut Released {
        match t {
            Trigger::Delay => &mut self.delay,
            Trigger::Budget => &mut self.budget,
            Trigger::Low => &mut self.low,
            Trigger::Medium => &mut self.medium,
            Trigger::Critical => &mut self.critical,
        }
    }
}

/// A snapshot of the heap's accounting. Every page of the committed hugepages is exactly one
/// of live, free-held or released: `live + free_held + released == committed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HeapStats {
    /// The address-space reservation.
    pub reserved_bytes: usize,
    /// Hugepages handed out so far, in bytes (the touched front of the reservation).
    pub committed_bytes: usize,
    /// Bytes in live spans.
    pub live_bytes: usize,
    /// Free bytes the heap still holds (resident, reusable without a fault), including
    /// `thread_cached_bytes`.
    pub free_held_bytes: usize,
    /// Of `free_held_bytes`, free spans sitting in threads' caches.
    pub thread_cached_bytes: usize,
    /// Free bytes given back (MADV_FREE, MADV_DONTNEED) or never touched.
    pub released_bytes: usize,
    /// Hugepages split by a partial release.
    pub splits: u64,
    /// Hugepages re-formed with MADV_COLLAPSE.
    pub collapses: u64,
    /// MADV_COLLAPSE attempts that failed (each backs off further attempts).
    pub collapse_failures: u64,
    /// Releases by trigger.
    pub releases: ReleaseCounts,
}

/// THP coverage of an address range: resident bytes and the part mapped huge.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ThpCoverage {
    /// `Rss` of the VMAs in the range.
    pub rss: u64,
    /// `AnonHugePages` of the VMAs in the range.
    pub anon_huge_pages: u64,
    /// `LazyFree` of the VMAs in the range (released with MADV_FREE, not yet reclaimed).
    pub lazy_free: u64,
}

impl ThpCoverage {
    /// `anon_huge_pages / rss`, or 1 when nothing is resident (nothing is split).
    pub fn ratio(&self) -> f64 {
        if self.rss == 0 {
            1.0
        } else {
            self.anon_huge_pages as f64 / self.rss as f64
        }
    }

    /// Sums the smaps counters of this process's VMAs lying inside `[start, end)`.
    pub fn of_range(start: usize, end: usize) -> Result<ThpCoverage, HeapError> {
        let mut c = ThpCoverage::default();
        for e in crate::procfs::smaps::read_smaps_self()? {
            if e.map.start >= start as u64 && e.map.end <= end as u64 {
                c.rss += e.counters.rss;
                c.anon_huge_pages += e.counters.anon_huge_pages;
                c.lazy_free += e.counters.lazy_free;
            }
        }
        Ok(c)
    }
}

/// A run of whole pages handed out by a [`PageHeap`], borrowing it. Give it back with
/// [`PageHeap::free`]; dropping it without doing so leaks the pages (safely).
pub struct Span<'h> {
    ptr: NonNull<u8>,
    pages: usize,
    page: usize,
    _heap: PhantomData<&'h PageHeap>,
}

// SAFETY: a Span is the unique owner of its pages, like a `Box<[u8]>`.
unsafe impl Send for Span<'_> {}
// SAFETY: shared access only reads through `&self`.
unsafe impl Sync for Span<'_> {}

impl std::fmt::Debug for Span<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Span({:p}, {} pages)", self.ptr, self.pages)
    }
}

impl<'h> Span<'h> {
    /// The first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in whole pages.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.pages * self.page
    }

    /// Always false: a span has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the span's pages are mapped read-write while the heap it borrows lives, no
        // other span covers them, and the heap does not touch them while the span is live
        // (lazily freed pages were pinned at hand-out, see the module doc).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len()) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len()) }
    }

    /// Gives up the span as a pointer and page count (for [`Span::from_raw_parts`]).
    pub fn into_raw(self) -> (NonNull<u8>, usize) {
        (self.ptr, self.pages)
    }

    /// Rebuilds a span from [`Span::into_raw`].
    ///
    /// # Safety
    /// `ptr` and `pages` must come from `into_raw` of a span of the heap `'h` borrows, not
    /// freed since and not rebuilt twice. (Breaking this cannot corrupt the heap's memory —
    /// [`PageHeap::free`] checks spans — but two live `Span`s over the same pages alias.)
    pub unsafe fn from_raw_parts(ptr: NonNull<u8>, pages: usize) -> Span<'h> {
        Span {
            ptr,
            pages,
            page: crate::sys::page_size(),
            _heap: PhantomData,
        }
    }
}

/// State shared with the release thread and pressure callbacks.
struct Shared {
    core: Mutex<Core>,
    base: usize,
    len: usize,
    page: usize,
    background: bool,
    /// Earliest time (coarse ns) timed work may be due; checked on alloc/free without a
    /// release thread.
    next_due: std::sync::atomic::AtomicU64,
    /// The highest pressure level asked for and not yet handled by the release thread
    /// (0: none, 1 + `Level as u8` otherwise).
    pressure_req: std::sync::atomic::AtomicU8,
    stop: Mutex<bool>,
    wake: Condvar,
    /// Distinguishes heaps in threads' cache lists (never reused).
    id: u64,
    /// Pages a thread may cache; 0: no thread caches, small spans go through the core like
    /// any other.
    cache_limit: usize,
    /// With thread caches, one byte per page of the reservation: the page count of the live
    /// small span starting there, or 0 (see `tcache`).
    states: Box<[AtomicU8]>,
    /// Bumped to make every thread return its cache on its next operation.
    flush_epoch: AtomicU64,
    /// The release the last bump asked for: 0 none (the budget), else `1 + Level as u8`.
    flush_level: AtomicU8,
    /// The threads' caches, for `stats`.
    links: Mutex<Vec<Arc<CacheLink>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(p) = NonNull::new(self.base as *mut u8) {
            // SAFETY: the reservation was mapped by `PageHeap::new`; the last owner of the
            // shared state is going, and spans borrow the `PageHeap`, so none is live.
            let _ = unsafe { crate::sys::unmap(p, self.len) };
        }
    }
}

/// A thread-safe heap of whole-page spans that keeps transparent huge pages intact while
/// there is no memory pressure. See the module documentation.
pub struct PageHeap {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PageHeap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageHeap")
            .field("base", &format_args!("{:#x}", self.shared.base))
            .field("len", &self.shared.len)
            .finish()
    }
}

impl PageHeap {
    /// Reserves the address space and, with [`HeapOptions::background`], starts the release
    /// thread.
    pub fn new(opts: HeapOptions) -> Result<PageHeap, HeapError> {
        let shared = Arc::new(Shared::new(&opts)?);
        let worker = if opts.background {
            let weak = Arc::downgrade(&shared);
            let h = std::thread::Builder::new()
                .name("ebb-heap".into())
                .spawn(move || worker(weak))
                .map_err(HeapError::Thread)?;
            Some(h)
        } else {
            None
        };
        Ok(PageHeap { shared, worker })
    }

    #[cfg(test)]
    fn lock(&self) -> MutexGuard<'_, Core> {
        self.shared.lock()
    }

    /// The reserved address range `[start, end)`.
    pub fn reservation(&self) -> std::ops::Range<usize> {
        self.shared.base..self.shared.base + self.shared.len
    }

    /// Hands out `pages` whole pages. The bytes are unspecified (stale contents of an earlier
    /// span, or zero) but stable: the kernel can no longer discard them.
    pub fn alloc(&self, pages: usize) -> Result<Span<'_>, HeapError> {
        self.alloc_inner(pages, false)
    }

    /// Hands out `pages` whole pages of zeros, writing only those not already known to be
    /// zero.
    pub fn alloc_zeroed(&self, pages: usize) -> Result<Span<'_>, HeapError> {
        self.alloc_inner(pages, true)
    }

    fn alloc_inner(&self, pages: usize, zeroed: bool) -> Result<Span<'_>, HeapError> {
        let s = &*self.shared;
        if s.cached(pages) && !zeroed {
            // The fast path: this thread's cache, no lock.
            let first = with_cache(&self.shared, true, |c, s| c.alloc(s, pages))
                .unwrap_or_else(|| s.alloc_lent(pages, None))?;
            return Ok(self.span_at(first, pages));
        }
        let placement = if s.cached(pages) {
            // Zeroed small spans come from the core, which knows which pages are zero.
            let mut not_zero = Vec::new();
            let page = s.alloc_lent(pages, Some(&mut not_zero))?;
            core::Placement { page, not_zero }
        } else {
            let mut core = s.lock();
            s.maybe_maintain(&mut core);
            core.alloc(pages, zeroed)?
        };
        for (g, n) in placement.not_zero {
            let p = (s.base + g * s.page) as *mut u8;
            // SAFETY: the run lies inside the span just handed to us, which nothing else
            // accesses.
            unsafe { p.write_bytes(0, n * s.page) };
        }
        Ok(self.span_at(placement.page, pages))
    }

    fn span_at(&self, first: usize, pages: usize) -> Span<'_> {
        let s = &*self.shared;
        let ptr = NonNull::new((s.base + first * s.page) as *mut u8)
            .expect("the reservation is not at address 0");
        Span {
            ptr,
            pages,
            page: s.page,
            _heap: PhantomData,
        }
    }

    /// Gives a span back. Makes no system call unless the free pushes the held bytes over
    /// [`HeapOptions::max_free_bytes`] or (without a release thread) timed work is due.
    /// Errors if the span is not live in this heap (a double free), without changing anything.
    pub fn free(&self, span: Span<'_>) -> Result<(), HeapError> {
        let (ptr, pages) = span.into_raw();
        let s = &*self.shared;
        let addr = ptr.as_ptr() as usize;
        if addr < s.base || addr >= s.base + s.len || (addr - s.base) % s.page != 0 {
            return Err(HeapError::NotLive { addr, pages });
        }
        let first = (addr - s.base) / s.page;
        if s.cached(pages) {
            return with_cache(&self.shared, true, |c, s| c.free(s, first, pages))
                .unwrap_or_else(|| s.free_lent(first, pages));
        }
        s.free(first, pages)
    }

    /// Returns this thread's cache of free spans to the heap (see "Thread caches" in the
    /// module doc). The heap does this itself when the thread exits, when it handles a
    /// pressure event or `maintain` on this thread, and on the thread's next operation after
    /// an event or the budget asked.
    pub fn flush_thread_cache(&self) -> Result<(), HeapError> {
        with_cache(&self.shared, false, |c, s| c.flush(s, None)).unwrap_or(Ok(()))
    }

    /// Gives back memory for a pressure event of `level` (see the module doc for what each
    /// level releases). Returns the bytes newly released.
    pub fn handle_pressure(&self, level: Level) -> Result<usize, HeapError> {
        self.flush_thread_cache()?;
        self.shared.recall_caches(Some(level));
        self.shared.lock().pressure(level, now_ns())
    }

    /// Subscribes the heap to `monitor`'s events: each one hands a release of its level to the
    /// heap's release thread ([`PageHeap::request_pressure`]), so the monitor's thread returns
    /// at once. Events that end a registration (`Removed`, `Failed`) release nothing. The
    /// subscription holds the heap weakly: once the heap is dropped it does nothing.
    pub fn attach(&self, monitor: &crate::pressure::Monitor) {
        use crate::pressure::Detail;
        let weak = Arc::downgrade(&self.shared);
        monitor.on_event(move |e| {
            if matches!(e.detail, Detail::Removed { .. } | Detail::Failed { .. }) {
                return;
            }
            if let Some(s) = weak.upgrade() {
                s.request_pressure(e.level);
            }
        });
    }

    /// Asks for a pressure release without waiting for it: the release thread does it at
    /// once (its wake-up takes microseconds), so the caller — typically a pressure monitor's
    /// thread, which serves other sources too — is not held up by a large release. Without a
    /// release thread ([`HeapOptions::background`] false) the release runs here.
    pub fn request_pressure(&self, level: Level) {
        self.shared.request_pressure(level);
    }

    /// Runs the timed work now (whole-hugepage releases past their delay, collapses), as the
    /// release thread does.
    pub fn maintain(&self) -> Result<(), HeapError> {
        self.flush_thread_cache()?;
        let mut core = self.shared.lock();
        let next = core.maintain(now_ns())?;
        self.shared
            .next_due
            .store(next, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// How much of the heap's resident memory is mapped with transparent huge pages:
    /// `AnonHugePages` ÷ `Rss` over the VMAs inside its reservation, from
    /// `/proc/self/smaps` (found by address range, since VMA names may be unsupported).
    pub fn thp_coverage(&self) -> Result<ThpCoverage, HeapError> {
        let r = self.reservation();
        ThpCoverage::of_range(r.start, r.end)
    }

    /// The accounting now.
    pub fn stats(&self) -> HeapStats {
        self.shared.stats()
    }
}

impl Drop for PageHeap {
    fn drop(&mut self) {
        *self.shared.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}

impl Shared {
    fn new(opts: &HeapOptions) -> Result<Shared, HeapError> {
        let page = crate::sys::page_size();
        let huge = crate::sys::huge_page_size();
        if huge != page * PAGES {
            return Err(HeapError::Options(
                "the heap needs 2 MiB hugepages of 512 base pages (x86_64)",
            ));
        }
        if opts.reservation == 0 {
            return Err(HeapError::Options(
                "reservation must be at least one hugepage",
            ));
        }
        if opts.collapse_min_used > PAGES {
            return Err(HeapError::Options("collapse_min_used is at most 512"));
        }
        let len = opts
            .reservation
            .checked_next_multiple_of(huge)
            .ok_or(HeapError::Options("reservation too large"))?;
        let base = crate::sys::map_anonymous(len, huge)
            .map_err(|source| HeapError::Reserve { bytes: len, source })?
            .as_ptr() as usize;
        // THP enabled = madvise needs this; failure leaves 4 KiB pages, still correct.
        let _ = crate::sys::madvise_hint(base, len, Advice::HugePage);
        // Best effort: this kernel lacks CONFIG_ANON_VMA_NAME (EINVAL).
        let _ = crate::sys::name_anonymous(base, len, opts.name);
        let policy = Policy {
            release_delay_ns: opts.release_delay.as_nanos() as u64,
            partial_min_idle_ns: opts.partial_min_idle.as_nanos() as u64,
            max_free_bytes: opts.max_free_bytes,
            collapse_min_used: opts.collapse_min_used,
            collapse_quiet_ns: opts.collapse_quiet.as_nanos() as u64,
        };
        static IDS: AtomicU64 = AtomicU64::new(0);
        let cache_limit = opts.thread_cache_bytes / page;
        let states = if cache_limit > 0 {
            zeroed_states(len / page)
        } else {
            Box::default()
        };
        Ok(Shared {
            core: Mutex::new(Core::new(base, page, len / huge, policy)),
            id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            cache_limit,
            states,
            flush_epoch: AtomicU64::new(0),
            flush_level: AtomicU8::new(0),
            links: Mutex::new(Vec::new()),
            base,
            len,
            page,
            background: opts.background,
            next_due: std::sync::atomic::AtomicU64::new(u64::MAX),
            pressure_req: std::sync::atomic::AtomicU8::new(0),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic under the lock leaves the bookkeeping as it was at a check (every mutation
        // follows its validation), so a poisoned lock is still usable.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Without a release thread, runs timed work once due.
    fn maybe_maintain(&self, core: &mut Core) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.background {
            return;
        }
        let now = now_ns();
        if now >= self.next_due.load(Relaxed) {
            let next = core.maintain(now).unwrap_or(now + 1_000_000_000);
            self.next_due.store(next, Relaxed);
        }
    }

    fn request_pressure(&self, level: Level) {
        use std::sync::atomic::Ordering::SeqCst;
        self.recall_caches(Some(level));
        if !self.background {
            let _ = self.lock().pressure(level, now_ns());
            return;
        }
        self.pressure_req.fetch_max(1 + level as u8, SeqCst);
        // Take the lock the worker sleeps under, so the wake-up cannot fall between its
        // check and its wait.
        let _g = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }

    /// The pressure level asked for since the last call, if any.
    fn take_pressure(&self) -> Option<Level> {
        use std::sync::atomic::Ordering::SeqCst;
        match self.pressure_req.swap(0, SeqCst) {
            1 => Some(Level::Low),
            2 => Some(Level::Medium),
            3 => Some(Level::Critical),
            _ => None,
        }
    }

    /// Frees the span of `pages` at page `first` in the core.
    fn free(&self, first: usize, pages: usize) -> Result<(), HeapError> {
        let now = now_ns();
        let mut core = self.lock();
        core.free(first, pages, now)?;
        self.after_free(&mut core, now)
    }

    /// What follows a free in the core: the timed release's due time, the budget, timed work.
    fn after_free(&self, core: &mut Core, now: u64) -> Result<(), HeapError> {
        use std::sync::atomic::Ordering::Relaxed;
        let due = now + core.policy.release_delay_ns;
        if due < self.next_due.load(Relaxed) {
            self.next_due.store(due, Relaxed);
        }
        if core.over_budget() {
            core.enforce_budget(now)?;
            self.recall_caches(None);
        }
        self.maybe_maintain(core);
        Ok(())
    }

    /// Whether spans of `pages` go through the thread caches.
    fn cached(&self, pages: usize) -> bool {
        self.cache_limit > 0 && (1..=MAX_CACHED).contains(&pages)
    }

    /// A small span lent by the core without a thread cache (a zeroed one, or a thread that
    /// has none: exiting, or re-entered). Returns its first page.
    fn alloc_lent(
        &self,
        pages: usize,
        not_zero: Option<&mut Vec<(usize, usize)>>,
    ) -> Result<usize, HeapError> {
        let first = {
            let mut core = self.lock();
            self.maybe_maintain(&mut core);
            core.alloc_lent(pages, 1, not_zero)?.0
        };
        self.states[first].store(pages as u8, std::sync::atomic::Ordering::Relaxed);
        Ok(first)
    }

    /// Frees a small span straight into the core (no thread cache).
    fn free_lent(&self, first: usize, pages: usize) -> Result<(), HeapError> {
        self.take_state(first, pages)?;
        let now = now_ns();
        let mut core = self.lock();
        core.free_lent(first, pages, now)?;
        self.after_free(&mut core, now)
    }

    /// Checks that a live small span of `pages` starts at page `first` and marks it free: the
    /// exact double-free check of the cache layer (one compare-exchange, so two threads freeing
    /// the same span at once cannot both succeed).
    fn take_state(&self, first: usize, pages: usize) -> Result<(), HeapError> {
        use std::sync::atomic::Ordering::Relaxed;
        let ok = self.states.get(first).is_some_and(|st| {
            st.compare_exchange(pages as u8, 0, Relaxed, Relaxed)
                .is_ok()
        });
        if ok {
            Ok(())
        } else {
            Err(HeapError::NotLive {
                addr: self.base + first * self.page,
                pages,
            })
        }
    }

    /// Makes every thread return its cache on its next operation, then repeat the release of
    /// `level` (if any) for what it returned.
    fn recall_caches(&self, level: Option<Level>) {
        use std::sync::atomic::Ordering::{Relaxed, Release};
        if self.cache_limit == 0 {
            return;
        }
        self.flush_level
            .store(level.map_or(0, |l| 1 + l as u8), Relaxed);
        self.flush_epoch.fetch_add(1, Release);
    }

    /// The release the last recall asked for.
    fn flush_level(&self) -> Option<Level> {
        match self.flush_level.load(std::sync::atomic::Ordering::Relaxed) {
            1 => Some(Level::Low),
            2 => Some(Level::Medium),
            3 => Some(Level::Critical),
            _ => None,
        }
    }

    fn links(&self) -> MutexGuard<'_, Vec<Arc<CacheLink>>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stats(&self) -> HeapStats {
        let c = self.lock();
        // Read under the core lock: threads change their count together with the core only
        // under it, and otherwise only move pages between their cache and their live spans.
        // Counts read while their threads run may catch one span in two caches (popped from
        // one, freed into another in between); it is still live in the core, so clamp.
        let cached: usize = self
            .links()
            .iter()
            .map(|l| l.pages.load(std::sync::atomic::Ordering::Relaxed))
            .sum::<usize>()
            .min(c.live_pages());
        HeapStats {
            reserved_bytes: self.len,
            committed_bytes: c.committed_huges() * PAGES * self.page,
            live_bytes: (c.live_pages() - cached) * self.page,
            free_held_bytes: (c.free_held_pages() + cached) * self.page,
            thread_cached_bytes: cached * self.page,
            released_bytes: c.released_pages() * self.page,
            splits: c.splits,
            collapses: c.collapses,
            collapse_failures: c.collapse_failures,
            releases: c.releases,
        }
    }
}

/// `n` zeroed span-state bytes, without touching them: the zeroed allocation comes from
/// fresh zero pages of the kernel for large `n`.
fn zeroed_states(n: usize) -> Box<[AtomicU8]> {
    let bytes = vec![0u8; n].into_boxed_slice();
    // SAFETY: `AtomicU8` has the same size, alignment and bit validity as `u8` (its docs), so
    // a boxed `[u8]` is a valid boxed `[AtomicU8]` of the same length, freed with the same
    // layout.
    unsafe { Box::from_raw(Box::into_raw(bytes) as *mut [AtomicU8]) }
}

/// The release thread: runs timed work when due, sleeping in between (at most 250 ms, so a
/// newly pending hugepage is noticed promptly).
fn worker(weak: std::sync::Weak<Shared>) {
    use std::sync::atomic::Ordering::Relaxed;
    loop {
        let Some(s) = weak.upgrade() else { return };
        let next = {
            let mut core = s.lock();
            if let Some(level) = s.take_pressure() {
                let _ = core.pressure(level, now_ns());
            }
            core.maintain(now_ns()).unwrap_or(u64::MAX)
        };
        s.next_due.store(next, Relaxed);
        let now = now_ns();
        let wait = Duration::from_nanos(next.saturating_sub(now).clamp(10_000_000, 250_000_000));
        let stop = s.stop.lock().unwrap_or_else(|e| e.into_inner());
        if *stop {
            return;
        }
        if s.pressure_req.load(std::sync::atomic::Ordering::SeqCst) != 0 {
            continue;
        }
        let (stop, _) = s
            .wake
            .wait_timeout(stop, wait)
            .unwrap_or_else(|e| e.into_inner());
        if *stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> HeapOptions {
        HeapOptions {
            reservation: 64 << 20,
            background: false,
            ..HeapOptions::default()
        }
    }

    /// Without thread caches: placement tests see the core's choices directly.
    fn core_only() -> HeapOptions {
        HeapOptions {
            thread_cache_bytes: 0,
            ..small()
        }
    }

    #[test]
    fn small_spans_pack_into_one_hugepage() {
        let heap = PageHeap::new(core_only()).unwrap();
        let a = heap.alloc(1).unwrap();
        let b = heap.alloc(3).unwrap();
        let c = heap.alloc(100).unwrap();
        let base = heap.reservation().start;
        for s in [&a, &b, &c] {
            assert!((s.as_ptr() as usize) < base + (2 << 20));
        }
        heap.lock().check();
        heap.free(b).unwrap();
        let d = heap.alloc(2).unwrap();
        heap.lock().check();
        // Best fit: the 3-page hole takes the 2-page span.
        assert_eq!(d.as_ptr() as usize, a.as_ptr() as usize + 4096);
        for s in [a, c, d] {
            heap.free(s).unwrap();
        }
        let st = heap.stats();
        assert_eq!(st.live_bytes, 0);
        assert_eq!(st.committed_bytes, 2 << 20);
    }

    #[test]
    fn large_span_takes_whole_hugepages_and_slack_is_filled() {
        let heap = PageHeap::new(core_only()).unwrap();
        let big = heap.alloc(600).unwrap();
        assert_eq!(big.as_ptr() as usize % (2 << 20), 0);
        let small = heap.alloc(10).unwrap();
        assert_eq!(small.as_ptr() as usize, big.as_ptr() as usize + 600 * 4096);
        heap.lock().check();
        heap.free(big).unwrap();
        heap.free(small).unwrap();
        heap.lock().check();
    }

    /// Random churn with every kind of release, checking the bookkeeping's internal
    /// invariants (bits agree with counters and lists) after each step.
    #[test]
    fn churn_keeps_internal_invariants() {
        let heap = PageHeap::new(small()).unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut live = Vec::new();
        for step in 0..3000 {
            match rnd() % 10 {
                0..=4 => {
                    let pages = [1, 2, 7, 64, 300, 512, 700][(rnd() % 7) as usize];
                    if let Ok(s) = heap.alloc(pages) {
                        live.push(s);
                    }
                }
                5..=8 if !live.is_empty() => {
                    let i = (rnd() as usize) % live.len();
                    heap.free(live.swap_remove(i)).unwrap();
                }
                _ => {
                    let level = [Level::Low, Level::Medium, Level::Critical][(rnd() % 3) as usize];
                    heap.handle_pressure(level).unwrap();
                }
            }
            heap.lock().check();
            let _ = step;
        }
        let st = heap.stats();
        assert_eq!(
            st.live_bytes + st.free_held_bytes + st.released_bytes,
            st.committed_bytes
        );
        for s in live {
            heap.free(s).unwrap();
        }
        heap.lock().check();
    }
}
