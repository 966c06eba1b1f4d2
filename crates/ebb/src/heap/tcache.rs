//! Per-thread span caches: the heap's front end for small spans (tcmalloc's thread caches;
//! Temeraire keeps its filler behind the central lock the same way).
//!
//! A span of at most [`MAX_CACHED`] pages is *lent* by the central bookkeeping to the cache
//! layer: the core marks its pages live and lent, and the heap records at the span's first page
//! its page count (`Shared::states`, one byte per page; 0 means "no live small span starts
//! here"). Freeing a small span checks and clears that byte with one compare-exchange —
//! a second free, a wrong page count or a pointer into another span fails there — and pushes
//! the span onto this thread's cache; allocating pops it and sets the byte again. Neither takes
//! the heap's lock nor makes a system call. So a cached span is free (the heap's stats count it
//! free-held) while the core still sees it lent: the core never hands it out or releases it,
//! and a free of a larger span overlapping it fails (`Core::free` refuses lent pages).
//!
//! A cache holds at most `HeapOptions::thread_cache_bytes` (a per-thread, per-heap bound). When
//! a free exceeds it, the older half of that size's bin goes back to the core in one locked
//! call, adjacent spans merged into runs. When a size's bin is empty, one locked call lends a
//! batch of adjacent spans carved from one run, placed by the filler like one span.
//!
//! Releases reach the caches through an epoch: a pressure event or the budget bumps
//! `Shared::flush_epoch`, and each thread, on its next operation on the heap, sees the change
//! (a plain load), returns its whole cache to the core and repeats that event's release for
//! what it returned. The thread that handles an event, or calls `maintain`, returns its own
//! cache first. A thread's cache goes back to the heap when the thread exits (the TLS
//! destructor). A thread that never touches the heap again keeps at most its bound until it
//! exits: that is the price of a lock-free front end.

use std::cell::RefCell;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

use super::core::now_ns;
use super::{HeapError, Shared};

/// The largest span a thread cache holds, in pages (64 KiB).
pub(crate) const MAX_CACHED: usize = 16;
/// The most spans one refill lends.
const MAX_BATCH: usize = 64;

/// What the heap sees of one thread's cache: the pages it holds, written only by the owner
/// (a plain store, no read-modify-write) and read by `stats`.
#[derive(Debug, Default)]
pub(crate) struct CacheLink {
    pub(crate) pages: AtomicUsize,
}

pub(crate) struct ThreadCache {
    heap: u64,
    shared: Weak<Shared>,
    link: Arc<CacheLink>,
    epoch: u64,
    pages: usize,
    limit: usize,
    /// `bins[n - 1]`: first pages of cached spans of `n` pages, oldest first.
    bins: [Vec<u32>; MAX_CACHED],
    /// Runs `(first page, pages)` being returned.
    scratch: Vec<(usize, usize)>,
}

thread_local! {
    static CACHES: RefCell<Vec<ThreadCache>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's cache for `shared`, creating it on first use if `create`.
/// `None` when there is none: the thread is exiting (its caches are gone), the call re-entered
/// (an allocation inside the heap's own code), or `create` is false and it has none.
pub(crate) fn with_cache<R>(
    shared: &Arc<Shared>,
    create: bool,
    f: impl FnOnce(&mut ThreadCache, &Shared) -> R,
) -> Option<R> {
    CACHES
        .try_with(|c| {
            let mut c = c.try_borrow_mut().ok()?;
            let i = match c.iter().position(|t| t.heap == shared.id) {
                Some(i) => i,
                None if create => {
                    // Caches of heaps dropped since are dead weight: drop them here.
                    c.retain(|t| t.shared.strong_count() > 0);
                    c.push(ThreadCache::new(shared));
                    c.len() - 1
                }
                None => return None,
            };
            Some(f(&mut c[i], shared))
        })
        .ok()
        .flatten()
}

impl ThreadCache {
    fn new(shared: &Arc<Shared>) -> ThreadCache {
        let link = Arc::new(CacheLink::default());
        shared.links().push(link.clone());
        let limit = shared.cache_limit;
        ThreadCache {
            heap: shared.id,
            shared: Arc::downgrade(shared),
            link,
            epoch: shared.flush_epoch.load(Relaxed),
            pages: 0,
            limit,
            // Room for the bound plus one span, so the fast path never reallocates.
            bins: std::array::from_fn(|i| Vec::with_capacity(limit / (i + 1) + 1)),
            scratch: Vec::new(),
        }
    }

    fn set_pages(&mut self, pages: usize) {
        self.pages = pages;
        self.link.pages.store(pages, Relaxed);
    }

    /// A span of `n` (≤ [`MAX_CACHED`]) pages: from the bin, or a batch lent by the core.
    /// Returns its first page.
    pub(crate) fn alloc(&mut self, s: &Shared, n: usize) -> Result<usize, HeapError> {
        self.check_epoch(s)?;
        if let Some(p) = self.bins[n - 1].pop() {
            self.set_pages(self.pages - n);
            let p = p as usize;
            s.states[p].store(n as u8, Relaxed);
            return Ok(p);
        }
        let room = (self.limit - self.pages) / n;
        let want = (self.limit / (4 * n)).clamp(1, MAX_BATCH).min(room + 1);
        let first = {
            let mut core = s.lock();
            s.maybe_maintain(&mut core);
            let (first, count) = core.alloc_lent(n, want, None)?;
            for k in (1..count).rev() {
                self.bins[n - 1].push((first + k * n) as u32);
            }
            // Under the lock, so `stats` sees the core and the cache agree.
            self.set_pages(self.pages + (count - 1) * n);
            first
        };
        s.states[first].store(n as u8, Relaxed);
        Ok(first)
    }

    /// Takes back the live span of `n` pages at page `p` (checked), returning the older half
    /// of its bin to the core if the cache exceeds its bound.
    pub(crate) fn free(&mut self, s: &Shared, p: usize, n: usize) -> Result<(), HeapError> {
        self.check_epoch(s)?;
        s.take_state(p, n)?;
        self.bins[n - 1].push(p as u32);
        self.set_pages(self.pages + n);
        if self.pages > self.limit {
            let bin = &mut self.bins[n - 1];
            let half = bin.len().div_ceil(2);
            self.scratch.clear();
            self.scratch
                .extend(bin.drain(..half).map(|p| (p as usize, n)));
            self.give_back(s, self.pages - half * n, None)?;
        }
        Ok(())
    }

    /// Returns the whole cache to the core; after a pressure event, repeats its release.
    pub(crate) fn flush(
        &mut self,
        s: &Shared,
        level: Option<crate::pressure::Level>,
    ) -> Result<(), HeapError> {
        self.scratch.clear();
        for (i, bin) in self.bins.iter_mut().enumerate() {
            self.scratch
                .extend(bin.drain(..).map(|p| (p as usize, i + 1)));
        }
        self.give_back(s, 0, level)
    }

    /// Frees the spans in `scratch` in the core, merged into runs of adjacent pages, under one
    /// lock; the cache then holds `left` pages.
    fn give_back(
        &mut self,
        s: &Shared,
        left: usize,
        level: Option<crate::pressure::Level>,
    ) -> Result<(), HeapError> {
        let now = now_ns();
        self.scratch.sort_unstable();
        let mut core = s.lock();
        let mut result = Ok(());
        let mut run: Option<(usize, usize)> = None;
        for &(p, n) in &self.scratch {
            run = match run {
                Some((f, l)) if f + l == p => Some((f, l + n)),
                Some((f, l)) => {
                    result = result.and(core.free_lent(f, l, now));
                    Some((p, n))
                }
                None => Some((p, n)),
            };
        }
        if let Some((f, l)) = run {
            result = result.and(core.free_lent(f, l, now));
        }
        self.set_pages(left);
        self.scratch.clear();
        s.after_free(&mut core, now)?;
        if let Some(level) = level {
            core.release_for(level, now)?;
        }
        result
    }

    /// A pressure event or the budget asked every cache back: return this one.
    fn check_epoch(&mut self, s: &Shared) -> Result<(), HeapError> {
        let e = s.flush_epoch.load(Relaxed);
        if e == self.epoch {
            return Ok(());
        }
        self.epoch = e;
        self.flush(s, s.flush_level())
    }
}

impl Drop for ThreadCache {
    /// The thread is exiting (or the heap is gone): the cache goes back to its heap.
    fn drop(&mut self) {
        let Some(s) = self.shared.upgrade() else {
            return;
        };
        // The heap's bookkeeping may allocate; keep that out of a `HugeAlloc` heap.
        let _guard = super::alloc::Reentry::enter();
        let _ = self.flush(&s, None);
        s.links().retain(|l| !Arc::ptr_eq(l, &self.link));
    }
}
