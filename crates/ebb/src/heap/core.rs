//! The heap's bookkeeping: which page of which hugepage is live, free-held, released or
//! known zero; the filler that places spans; the lists the release policy walks.
//!
//! Everything here runs under the heap's lock. The only kernel calls are madvise(2) on
//! ranges this module has just proven free (no span covers them), and one-byte writes to
//! pages it is handing out.

use std::collections::HashMap;

use super::bits::{BITS, Bits};
use super::{HeapError, ReleaseCounts, Released, Trigger};
use crate::advice::Advice;
use crate::pressure::Level;

/// Base pages per hugepage.
pub(crate) const PAGES: usize = BITS;
const NIL: u32 = u32::MAX;
/// Classes of fullness within one filler bucket (used pages / 64).
const CLASSES: usize = 8;
/// Classes of longest-free-run length: `floor(log2(len))`, 1..=511 → 0..=8.
const LENGTH_CLASSES: usize = 9;

/// The length class of a free run of `len` pages (1..=511): `floor(log2(len))`. Every
/// hugepage in class `c` has a free run of at least `2^c` pages.
fn length_class(len: usize) -> usize {
    debug_assert!((1..PAGES).contains(&len));
    (usize::BITS - 1 - len.leading_zeros()) as usize
}

/// Which list a hugepage is on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum List {
    /// Full: on no list.
    None,
    /// Partly used: in the filler bucket `(length class of its longest free run, fullness
    /// class)`; see [`length_class`].
    Filler(u8, u8),
    /// Entirely free, some of it still held: waiting for the timed whole-hugepage release.
    Pending,
    /// Entirely free and entirely released.
    Released,
}

/// One 2 MiB hugepage of the reservation. `repr(C)` with the fields an allocation or a free
/// reads first, then `used`: the hot path touches two cache lines of it.
#[derive(Clone, Debug)]
#[repr(C)]
struct Huge {
    used_pages: u16,
    /// Its longest free run, kept while it is on the filler.
    longest: u16,
    /// `released`, `zero` and `dropped` are all empty (cached, so the hot path skips them).
    clean: bool,
    /// A partial release broke its PMD mapping and no collapse has re-formed it since.
    split: bool,
    list: List,
    prev: u32,
    next: u32,
    /// When a span in it was last freed (monotonic coarse ns): the LRU timestamp.
    last_free: u64,
    /// Pages handed out in live spans.
    used: Bits,
    /// Of `used`, the pages lent to the thread-cache layer (small spans, live or sitting in a
    /// thread's cache): freed only through [`Core::free_lent`], never by [`Core::free`].
    lent: Bits,
    /// Free pages given back to the kernel (MADV_FREE, MADV_DONTNEED).
    released: Bits,
    /// Pages whose contents are known to be zero (never written, or dropped).
    zero: Bits,
    /// Free pages dropped with MADV_DONTNEED (not resident).
    dropped: Bits,
}

#[derive(Clone, Copy, Debug)]
struct ListHead {
    head: u32,
    tail: u32,
}

impl ListHead {
    const EMPTY: ListHead = ListHead {
        head: NIL,
        tail: NIL,
    };
}

/// What a caller must do to the memory of a span just placed, outside the bookkeeping.
pub(crate) struct Placement {
    /// First page index (relative to the reservation base).
    pub(crate) page: usize,
    /// Runs of pages `(first page, count)` not known to be zero, filled only when asked.
    pub(crate) not_zero: Vec<(usize, usize)>,
}

/// Tunables the core needs, copied from `HeapOptions`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    pub(crate) release_delay_ns: u64,
    pub(crate) partial_min_idle_ns: u64,
    pub(crate) max_free_bytes: Option<usize>,
    pub(crate) collapse_min_used: usize,
    pub(crate) collapse_quiet_ns: u64,
}

/// The bookkeeping of one heap.
pub(crate) struct Core {
    base: usize,
    page: usize,
    max_huges: usize,
    huges: Vec<Huge>,
    filler: Vec<ListHead>,
    /// Longest-free-run lengths that have a non-empty filler bucket.
    filler_nonempty: Bits,
    /// Per longest-run length, which fullness classes are non-empty.
    class_mask: Vec<u8>,
    pending: ListHead,
    released_list: ListHead,
    live_pages: usize,
    /// Free pages with the released bit.
    released_pages: usize,
    pub(crate) policy: Policy,
    pub(crate) splits: u64,
    pub(crate) collapses: u64,
    pub(crate) collapse_failures: u64,
    pub(crate) releases: ReleaseCounts,
    last_pressure: Option<u64>,
    collapse_backoff_ns: u64,
    next_collapse: u64,
    /// Debug builds remember each live span exactly, to catch frees that do not match.
    live_spans: Option<HashMap<usize, usize>>,
}

/// Pins lazily freed pages so the kernel can no longer discard them: MADV_POPULATE_WRITE
/// faults them in for write, which marks each folio (each PMD of a THP) dirty without touching
/// a byte (GUP with FOLL_WRITE | FOLL_TOUCH), so reclaim keeps it. `runs: None` pins the whole
/// hugepage `i` in one call — for an intact hugepage this is the UNSPLITTABLE take-back, one
/// call per 2 MiB — and returns whether that worked. Short runs, and kernels before 5.14
/// (which refuse the advice), get one byte of each page rewritten with its own value instead.
fn pin_lazy(base: usize, page: usize, i: usize, runs: Option<&Bits>) -> bool {
    let hp = base + i * PAGES * page;
    let populate = |addr: usize, len: usize| {
        crate::sys::madvise_hint(addr, len, Advice::PopulateWrite).is_ok()
    };
    let Some(runs) = runs else {
        return populate(hp, PAGES * page);
    };
    for (s, l) in runs.runs() {
        let addr = hp + s * page;
        if l >= 16 && populate(addr, l * page) {
            continue;
        }
        for p in 0..l {
            let a = (addr + p * page) as *mut u8;
            // SAFETY: the page lies inside the reservation, which stays mapped read-write
            // while the heap lives, and no span covers it (it was free until this claim,
            // under the heap lock): nothing else accesses it.
            unsafe { a.write_volatile(a.read_volatile()) };
        }
    }
    true
}

/// The monotonic clock, coarse (a tick or so): cheap enough for every free.
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into our stack variable.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Core {
    pub(crate) fn new(base: usize, page: usize, max_huges: usize, policy: Policy) -> Core {
        Core {
            base,
            page,
            max_huges,
            huges: Vec::new(),
            filler: vec![ListHead::EMPTY; LENGTH_CLASSES * CLASSES],
            filler_nonempty: Bits::EMPTY,
            class_mask: vec![0; LENGTH_CLASSES],
            pending: ListHead::EMPTY,
            released_list: ListHead::EMPTY,
            live_pages: 0,
            released_pages: 0,
            policy,
            splits: 0,
            collapses: 0,
            collapse_failures: 0,
            releases: ReleaseCounts::default(),
            last_pressure: None,
            collapse_backoff_ns: 1_000_000_000,
            next_collapse: 0,
            live_spans: cfg!(debug_assertions).then(HashMap::new),
        }
    }

    fn huge_bytes(&self) -> usize {
        self.page * PAGES
    }

    /// Pages live in spans.
    pub(crate) fn live_pages(&self) -> usize {
        self.live_pages
    }

    /// Free pages the heap still holds (not given back).
    pub(crate) fn free_held_pages(&self) -> usize {
        self.huges.len() * PAGES - self.live_pages - self.released_pages
    }

    /// Free pages given back to the kernel, or never touched, in committed hugepages.
    pub(crate) fn released_pages(&self) -> usize {
        self.released_pages
    }

    /// Hugepages handed out so far (the rest of the reservation was never touched).
    pub(crate) fn committed_huges(&self) -> usize {
        self.huges.len()
    }

    // ---- lists ------------------------------------------------------------------------

    fn head_of(&mut self, list: List) -> Option<&mut ListHead> {
        match list {
            List::None => None,
            List::Filler(l, c) => Some(&mut self.filler[l as usize * CLASSES + c as usize]),
            List::Pending => Some(&mut self.pending),
            List::Released => Some(&mut self.released_list),
        }
    }

    fn unlink(&mut self, i: u32) {
        let (list, prev, next) = {
            let h = &self.huges[i as usize];
            (h.list, h.prev, h.next)
        };
        if prev != NIL {
            self.huges[prev as usize].next = next;
        }
        if next != NIL {
            self.huges[next as usize].prev = prev;
        }
        if let Some(lh) = self.head_of(list) {
            if lh.head == i {
                lh.head = next;
            }
            if lh.tail == i {
                lh.tail = prev;
            }
            let now_empty = lh.head == NIL;
            if let (List::Filler(l, c), true) = (list, now_empty) {
                self.class_mask[l as usize] &= !(1 << c);
                if self.class_mask[l as usize] == 0 {
                    self.filler_nonempty.clear(l as usize, 1);
                }
            }
        }
        let h = &mut self.huges[i as usize];
        h.list = List::None;
        h.prev = NIL;
        h.next = NIL;
    }

    fn push_back(&mut self, i: u32, list: List) {
        if let List::Filler(l, c) = list {
            self.class_mask[l as usize] |= 1 << c;
            self.filler_nonempty.set(l as usize, 1);
        }
        let Some(lh) = self.head_of(list) else {
            return;
        };
        let tail = lh.tail;
        lh.tail = i;
        if lh.head == NIL {
            lh.head = i;
        }
        if tail != NIL {
            self.huges[tail as usize].next = i;
        }
        let h = &mut self.huges[i as usize];
        h.list = list;
        h.prev = tail;
        h.next = NIL;
    }

    /// The list a hugepage belongs on, from its bits (and its longest free run).
    fn list_for(h: &Huge, longest: usize) -> List {
        match h.used_pages as usize {
            0 if h.released == Bits::FULL => List::Released,
            0 => List::Pending,
            PAGES => List::None,
            used => List::Filler(
                length_class(longest) as u8,
                (used / (PAGES / CLASSES)) as u8,
            ),
        }
    }

    /// Puts hugepage `i` on the list its bits call for (at the tail: newest). The filler's
    /// buckets are coarse (length and fullness classes), so most allocations and frees leave
    /// a hugepage in its bucket and cost no list update.
    fn relist(&mut self, i: u32) {
        let h = &mut self.huges[i as usize];
        let longest = match h.used_pages as usize {
            0 | PAGES => 0,
            _ => h.used.not().longest_run(),
        };
        h.longest = longest as u16;
        let want = Self::list_for(h, longest);
        if want == self.huges[i as usize].list && want != List::Pending {
            return;
        }
        self.unlink(i);
        self.push_back(i, want);
    }

    // ---- placement --------------------------------------------------------------------

    /// Appends a never-touched hugepage (all pages released and known zero).
    fn grow(&mut self) -> Option<u32> {
        if self.huges.len() >= self.max_huges {
            return None;
        }
        let i = self.huges.len() as u32;
        self.huges.push(Huge {
            used: Bits::EMPTY,
            lent: Bits::EMPTY,
            released: Bits::FULL,
            zero: Bits::FULL,
            dropped: Bits::FULL,
            used_pages: 0,
            longest: 0,
            clean: false,
            last_free: 0,
            split: false,
            list: List::None,
            prev: NIL,
            next: NIL,
        });
        self.released_pages += PAGES;
        Some(i)
    }

    /// An entirely free hugepage for a small span: the most recently emptied one still held
    /// (warm, and furthest from its timed release), then a released one, then a new one.
    fn take_empty(&mut self) -> Option<u32> {
        let i = if self.pending.tail != NIL {
            self.pending.tail
        } else if self.released_list.head != NIL {
            self.released_list.head
        } else {
            return self.grow();
        };
        self.unlink(i);
        Some(i)
    }

    /// `k` contiguous entirely free hugepages (first fit in address order, growing the
    /// committed range when the run reaches its end).
    fn take_run(&mut self, k: usize) -> Option<u32> {
        let n = self.huges.len();
        let mut run = 0;
        let mut start = None;
        for i in 0..n {
            if self.huges[i].used_pages == 0 {
                run += 1;
                if run == k {
                    start = Some(i + 1 - k);
                    break;
                }
            } else {
                run = 0;
            }
        }
        let start = match start {
            Some(s) => s,
            None => {
                // `run` free hugepages end the committed range: extend it.
                if n - run + k > self.max_huges {
                    return None;
                }
                while self.huges.len() < n - run + k {
                    self.grow()?;
                }
                n - run
            }
        };
        for i in start..start + k {
            self.unlink(i as u32);
        }
        Some(start as u32)
    }

    /// A partly used hugepage with a free run of `pages` (< 512): from the lowest length class
    /// that can hold it (Temeraire's "shortest longest free range that fits", by powers of
    /// two), the fullest such. In the lowest class a run may still be too short, so up to 8
    /// of its hugepages are checked before moving up, where every one fits.
    fn filler_find(&self, pages: usize) -> Option<u32> {
        let exact = pages.is_power_of_two();
        let mut lc = self.filler_nonempty.next_set(length_class(pages));
        while lc < LENGTH_CLASSES {
            let mut mask = self.class_mask[lc];
            while mask != 0 {
                let fc = 7 - mask.leading_zeros() as usize;
                mask &= !(1 << fc);
                let mut i = self.filler[lc * CLASSES + fc].head;
                if exact || lc > length_class(pages) {
                    return Some(i);
                }
                for _ in 0..8 {
                    if i == NIL {
                        break;
                    }
                    if self.huges[i as usize].longest as usize >= pages {
                        return Some(i);
                    }
                    i = self.huges[i as usize].next;
                }
            }
            lc = self.filler_nonempty.next_set(lc + 1);
        }
        None
    }

    /// Finds room for `pages` pages and marks them live. Collects the runs not known to be
    /// zero when `want_not_zero`; stabilises pages that were lazily freed (see `claim`).
    pub(crate) fn alloc(
        &mut self,
        pages: usize,
        want_not_zero: bool,
    ) -> Result<Placement, HeapError> {
        if pages == 0 {
            return Err(HeapError::ZeroPages);
        }
        let reservation = self.max_huges * self.huge_bytes();
        if pages > self.max_huges * PAGES {
            return Err(HeapError::TooLarge { pages, reservation });
        }
        let exhausted = || HeapError::Exhausted { pages, reservation };
        let first = if pages < PAGES {
            match self.filler_find(pages) {
                Some(i) => {
                    let pos = self.huges[i as usize]
                        .used
                        .not()
                        .best_fit(pages)
                        .expect("filler_find checks the longest free run");
                    i as usize * PAGES + pos
                }
                None => {
                    let i = self.take_empty().ok_or_else(exhausted)?;
                    i as usize * PAGES
                }
            }
        } else {
            let k = pages.div_ceil(PAGES);
            let i = self.take_run(k).ok_or_else(exhausted)?;
            i as usize * PAGES
        };
        let mut not_zero = Vec::new();
        self.claim(first, pages, want_not_zero.then_some(&mut not_zero));
        if let Some(m) = &mut self.live_spans {
            m.insert(first, pages);
        }
        Ok(Placement {
            page: first,
            not_zero,
        })
    }

    /// Lends up to `count` spans of `pages` (< 512) pages each to the thread-cache layer, as
    /// one contiguous run placed like a single span (the filler's choice of hugepage and best
    /// fit in it), extended over the free run it starts as far as `count` spans go. Returns
    /// the first page and how many spans (≥ 1) the run holds. The pages are marked live and
    /// lent; the caller records each span's start (see `Shared`'s span states).
    pub(crate) fn alloc_lent(
        &mut self,
        pages: usize,
        count: usize,
        not_zero: Option<&mut Vec<(usize, usize)>>,
    ) -> Result<(usize, usize), HeapError> {
        debug_assert!((1..PAGES).contains(&pages) && count >= 1);
        let reservation = self.max_huges * self.huge_bytes();
        let exhausted = || HeapError::Exhausted { pages, reservation };
        let (i, pos) = match self.filler_find(pages) {
            Some(i) => {
                let free = self.huges[i as usize].used.not();
                let pos = free
                    .best_fit(pages)
                    .expect("filler_find checks the longest free run");
                (i as usize, pos)
            }
            None => (self.take_empty().ok_or_else(exhausted)? as usize, 0),
        };
        let run = self.huges[i].used.next_set(pos) - pos;
        let n = (run / pages).min(count).max(1);
        let first = i * PAGES + pos;
        self.claim(first, n * pages, not_zero);
        self.huges[i].lent.set(pos, n * pages);
        Ok((first, n))
    }

    /// Takes back `first..first+pages`, pages lent by [`Core::alloc_lent`] (a run of
    /// adjacent spans the thread-cache layer returns). Makes no system call.
    pub(crate) fn free_lent(
        &mut self,
        first: usize,
        pages: usize,
        now: u64,
    ) -> Result<(), HeapError> {
        self.free_inner(first, pages, now, true)
    }

    /// Marks `first..first+pages` live, hugepage by hugepage.
    fn claim(
        &mut self,
        first: usize,
        pages: usize,
        mut not_zero: Option<&mut Vec<(usize, usize)>>,
    ) {
        let mut g = first;
        let end = first + pages;
        while g < end {
            let i = g / PAGES;
            let pos = g % PAGES;
            let len = (end - g).min(PAGES - pos);
            let base = self.base;
            let page = self.page;
            let h = &mut self.huges[i];
            let range = Bits::range(pos, len);
            if h.clean {
                // Nothing released or known zero: the common case of reuse needs neither
                // pinning nor bookkeeping beyond `used` (and touches no other bitmap).
                if let Some(v) = not_zero.as_deref_mut() {
                    v.push((g, len));
                }
                h.used.set(pos, len);
                h.used_pages += len as u16;
                self.live_pages += len;
                self.relist(i as u32);
                g += len;
                continue;
            }
            // Lazily freed pages with contents that may be non-zero: the kernel may still
            // discard them (they then read as zero) until each is written. Pin them so a
            // span's bytes never change underneath it (see `pin_lazy`).
            let lazy = range.and(&h.released).and(&h.zero.not());
            if !lazy.is_empty() {
                let whole = !h.split && h.dropped.is_empty();
                let unreleased = whole && pin_lazy(base, page, i, None);
                if !unreleased {
                    pin_lazy(base, page, i, Some(&lazy));
                }
                if unreleased {
                    // The whole hugepage is taken back: its other free pages are held again.
                    let back = h.released.and(&range.not()).count();
                    h.released = range.and(&h.released);
                    self.released_pages -= back;
                }
            }
            if let Some(v) = not_zero.as_deref_mut() {
                for (s, l) in range.and(&h.zero.not()).runs() {
                    v.push((i * PAGES + s, l));
                }
            }
            let was_released = h.released.count_in(pos, len);
            h.used.set(pos, len);
            h.released.clear(pos, len);
            h.zero.clear(pos, len);
            h.dropped.clear(pos, len);
            h.clean = h.released.is_empty() && h.zero.is_empty();
            h.used_pages += len as u16;
            self.released_pages -= was_released;
            self.live_pages += len;
            self.relist(i as u32);
            g += len;
        }
    }

    /// Marks `first..first+pages` free. Makes no system call. Refuses pages lent to the
    /// thread-cache layer (a span freed with the wrong page count, or twice).
    pub(crate) fn free(&mut self, first: usize, pages: usize, now: u64) -> Result<(), HeapError> {
        self.free_inner(first, pages, now, false)
    }

    fn free_inner(
        &mut self,
        first: usize,
        pages: usize,
        now: u64,
        lent: bool,
    ) -> Result<(), HeapError> {
        let end = first
            .checked_add(pages)
            .filter(|&e| e <= self.huges.len() * PAGES);
        let not_live = || HeapError::NotLive {
            addr: self.base + first * self.page,
            pages,
        };
        let Some(end) = end.filter(|_| pages > 0) else {
            return Err(not_live());
        };
        // Check the whole span before changing anything.
        let mut g = first;
        while g < end {
            let (i, pos) = (g / PAGES, g % PAGES);
            let len = (end - g).min(PAGES - pos);
            let h = &self.huges[i];
            let want_lent = if lent { len } else { 0 };
            if h.used.count_in(pos, len) != len || h.lent.count_in(pos, len) != want_lent {
                return Err(not_live());
            }
            g += len;
        }
        // Spans of the thread-cache layer are checked exactly by their start states instead.
        if !lent && let Some(m) = &mut self.live_spans {
            if m.get(&first) != Some(&pages) {
                return Err(not_live());
            }
            m.remove(&first);
        }
        let mut g = first;
        while g < end {
            let (i, pos) = (g / PAGES, g % PAGES);
            let len = (end - g).min(PAGES - pos);
            let h = &mut self.huges[i];
            h.used.clear(pos, len);
            h.lent.clear(pos, len);
            h.used_pages -= len as u16;
            h.last_free = now;
            self.live_pages -= len;
            self.relist(i as u32);
            g += len;
        }
        Ok(())
    }

    // ---- release ----------------------------------------------------------------------

    fn madvise(&self, i: usize, pos: usize, len: usize, advice: Advice) -> Result<(), HeapError> {
        let addr = self.base + (i * PAGES + pos) * self.page;
        let bytes = len * self.page;
        // SAFETY: callers pass only runs of free pages (no live span covers them) inside the
        // reservation, under the heap lock; nothing reads them until a later alloc, which
        // accounts for their possibly changed contents (released / zero bits).
        unsafe { crate::sys::madvise(addr as *mut u8, bytes, advice) }.map_err(|source| {
            HeapError::Madvise {
                advice,
                addr,
                len: bytes,
                source,
            }
        })
    }

    /// Releases the free pages of hugepage `i` with `advice` (FREE: those still held;
    /// DONTNEED: those not yet dropped). An entirely free hugepage goes in one call over the
    /// whole aligned 2 MiB, which never splits it; a partial release splits a PMD mapping.
    /// Returns the pages newly given back (held before).
    fn release_huge(
        &mut self,
        i: usize,
        advice: Advice,
        trigger: Trigger,
    ) -> Result<usize, HeapError> {
        let h = &self.huges[i];
        let free = h.used.not();
        let targets = match advice {
            Advice::DontNeed => free.and(&h.dropped.not()),
            _ => free.and(&h.released.not()),
        };
        if targets.is_empty() {
            return Ok(0);
        }
        let newly = targets.and(&h.released.not()).count();
        if h.used_pages == 0 {
            self.madvise(i, 0, PAGES, advice)?;
        } else {
            for (s, l) in targets.runs() {
                self.madvise(i, s, l, advice)?;
            }
            if !self.huges[i].split {
                self.huges[i].split = true;
                self.splits += 1;
            }
        }
        let h = &mut self.huges[i];
        h.clean = false;
        h.released = h.released.or(&free);
        if advice == Advice::DontNeed {
            h.dropped = h.dropped.or(&free);
            h.zero = h.zero.or(&free);
        }
        self.released_pages += newly;
        let counter: &mut Released = self.releases.get_mut(trigger);
        counter.bytes += (newly * self.page) as u64;
        self.relist(i as u32);
        Ok(newly)
    }

    /// Timed work: whole free hugepages past the release delay go back with MADV_FREE; after
    /// pressure has been quiet a while, split hugepages that filled up are collapsed.
    /// Returns the earliest time more timed work may be due.
    pub(crate) fn maintain(&mut self, now: u64) -> Result<u64, HeapError> {
        let mut released = 0;
        while self.pending.head != NIL {
            let i = self.pending.head as usize;
            let due = self.huges[i].last_free + self.policy.release_delay_ns;
            if due > now {
                break;
            }
            released += self.release_huge(i, Advice::Free, Trigger::Delay)?;
            if self.huges[i].list == List::Pending {
                // Nothing was held (cannot happen: Pending means some page held); move on.
                self.unlink(i as u32);
                self.push_back(i as u32, List::Released);
            }
        }
        if released > 0 {
            self.releases.delay.events += 1;
        }
        self.collapse_some(now);
        let next_release = if self.pending.head != NIL {
            self.huges[self.pending.head as usize].last_free + self.policy.release_delay_ns
        } else {
            u64::MAX
        };
        Ok(next_release)
    }

    /// MADV_COLLAPSE on up to two split hugepages that are now mostly used, once pressure has
    /// been quiet for `collapse_quiet`; a failure doubles the wait before the next try.
    fn collapse_some(&mut self, now: u64) {
        if let Some(t) = self.last_pressure
            && now < t + self.policy.collapse_quiet_ns
        {
            return;
        }
        if now < self.next_collapse {
            return;
        }
        let mut done = 0;
        for i in 0..self.huges.len() {
            if done == 2 {
                break;
            }
            let h = &self.huges[i];
            if !h.split || (h.used_pages as usize) < self.policy.collapse_min_used {
                continue;
            }
            let addr = self.base + i * self.huge_bytes();
            match crate::sys::madvise_hint(addr, self.huge_bytes(), Advice::Collapse) {
                Ok(()) => {
                    // The kernel copied every present page into one THP and filled the holes
                    // with zero: every free page is resident again, and dropped ones are zero.
                    let h = &mut self.huges[i];
                    let back = h.released.count();
                    h.released = Bits::EMPTY;
                    h.dropped = Bits::EMPTY;
                    h.split = false;
                    h.clean = h.zero.is_empty();
                    self.released_pages -= back;
                    self.collapses += 1;
                    self.collapse_backoff_ns = 1_000_000_000;
                    done += 1;
                    self.relist(i as u32);
                }
                Err(_) => {
                    self.collapse_failures += 1;
                    self.collapse_backoff_ns = (self.collapse_backoff_ns * 2).min(64_000_000_000);
                    self.next_collapse = now + self.collapse_backoff_ns;
                    return;
                }
            }
        }
    }

    /// Hugepages with free pages still held and some pages live, in the order a release
    /// should take them: already split first (no new split), then least recently freed,
    /// then most free pages (most bytes per split).
    fn partial_candidates(&self, min_idle_ns: u64, now: u64) -> Vec<usize> {
        let mut c: Vec<usize> = (0..self.huges.len())
            .filter(|&i| {
                let h = &self.huges[i];
                h.used_pages > 0
                    && (h.used_pages as usize) < PAGES
                    && h.last_free + min_idle_ns <= now
                    && h.released.or(&h.used) != Bits::FULL
            })
            .collect();
        c.sort_by_key(|&i| {
            let h = &self.huges[i];
            let held = PAGES - h.used_pages as usize - h.released.count();
            (!h.split, h.last_free, PAGES - held)
        });
        c
    }

    /// Releases the held pages of every pending (entirely free) hugepage with MADV_FREE,
    /// oldest first, stopping once `stop()` says enough.
    fn release_pending(
        &mut self,
        trigger: Trigger,
        stop: impl Fn(&Core) -> bool,
    ) -> Result<usize, HeapError> {
        let mut n = 0;
        while self.pending.head != NIL && !stop(self) {
            let i = self.pending.head as usize;
            n += self.release_huge(i, Advice::Free, trigger)?;
        }
        Ok(n)
    }

    /// Gives memory back for a pressure event of `level`. Returns the bytes newly released.
    pub(crate) fn pressure(&mut self, level: Level, now: u64) -> Result<usize, HeapError> {
        self.last_pressure = Some(now);
        let bytes = self.release_for(level, now)?;
        self.releases.get_mut(Trigger::from(level)).events += 1;
        Ok(bytes)
    }

    /// The release of a pressure event of `level`, without counting an event: what
    /// [`Core::pressure`] does, and what a thread that returns its cache after an event runs
    /// again so the returned spans get the same treatment.
    pub(crate) fn release_for(&mut self, level: Level, now: u64) -> Result<usize, HeapError> {
        let trigger = Trigger::from(level);
        let mut pages = match level {
            Level::Low | Level::Medium => self.release_pending(trigger, |_| false)?,
            Level::Critical => 0,
        };
        match level {
            Level::Low => {}
            Level::Medium => {
                for i in self.partial_candidates(self.policy.partial_min_idle_ns, now) {
                    pages += self.release_huge(i, Advice::Free, trigger)?;
                }
            }
            Level::Critical => {
                for i in 0..self.huges.len() {
                    if self.huges[i].used.or(&self.huges[i].dropped) != Bits::FULL {
                        pages += self.release_huge(i, Advice::DontNeed, trigger)?;
                    }
                }
            }
        }
        Ok(pages * self.page)
    }

    /// Whether free-held bytes exceed the budget.
    pub(crate) fn over_budget(&self) -> bool {
        self.policy
            .max_free_bytes
            .is_some_and(|b| self.free_held_pages() * self.page > b)
    }

    /// Releases free memory until the free-held bytes fit `max_free_bytes`: whole hugepages
    /// first (no split), then partial ones least recently freed first.
    pub(crate) fn enforce_budget(&mut self, now: u64) -> Result<usize, HeapError> {
        let Some(budget) = self.policy.max_free_bytes else {
            return Ok(0);
        };
        let fits = move |c: &Core| c.free_held_pages() * c.page <= budget;
        let mut pages = self.release_pending(Trigger::Budget, fits)?;
        if !fits(self) {
            for i in self.partial_candidates(0, now) {
                if fits(self) {
                    break;
                }
                pages += self.release_huge(i, Advice::Free, Trigger::Budget)?;
            }
        }
        self.releases.budget.events += 1;
        Ok(pages * self.page)
    }

    /// Checks the bookkeeping's invariants (tests).
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let mut live = 0;
        let mut released = 0;
        for (i, h) in self.huges.iter().enumerate() {
            assert_eq!(h.used.count(), h.used_pages as usize, "hugepage {i}");
            assert!(
                h.used.and(&h.released).is_empty(),
                "hugepage {i}: live and released"
            );
            assert!(
                h.used.and(&h.zero).is_empty(),
                "hugepage {i}: live and known zero"
            );
            assert_eq!(h.dropped.and(&h.released.not()), Bits::EMPTY);
            assert!(
                h.lent.and(&h.used.not()).is_empty(),
                "hugepage {i}: lent, not live"
            );
            assert_eq!(
                h.clean,
                h.released.is_empty() && h.zero.is_empty() && h.dropped.is_empty(),
                "hugepage {i}: stale clean flag"
            );
            let longest = match h.used_pages as usize {
                0 | PAGES => 0,
                _ => h.used.not().longest_run(),
            };
            assert_eq!(
                h.list,
                Self::list_for(h, longest),
                "hugepage {i} on the wrong list"
            );
            live += h.used_pages as usize;
            released += h.released.count();
        }
        assert_eq!(live, self.live_pages);
        assert_eq!(released, self.released_pages);
    }
}
