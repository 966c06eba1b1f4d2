//! [`HugeAlloc`]: a global allocator that serves large allocations from a [`PageHeap`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::OnceLock;

use super::{HeapOptions, HeapStats, PageHeap, Span};

thread_local! {
    /// Set while this thread is inside the heap: any allocation the heap's own bookkeeping
    /// makes (its vectors, maps, the heap itself) then goes to `System`, never back into the
    /// heap. `const` with no destructor, so using it never allocates.
    static IN_HEAP: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as inside the heap until dropped; `None` if it already was.
pub(crate) struct Reentry;

impl Reentry {
    pub(crate) fn enter() -> Option<Reentry> {
        IN_HEAP
            .try_with(|c| (!c.replace(true)).then_some(Reentry))
            .ok()
            .flatten()
    }
}

impl Drop for Reentry {
    fn drop(&mut self) {
        let _ = IN_HEAP.try_with(|c| c.set(false));
    }
}

/// A [`GlobalAlloc`] with SPLITTABLE semantics for large allocations: requests of at least
/// `threshold` bytes (page-rounded, alignment up to a page) come from a [`PageHeap`], so they
/// are packed into hugepages and freed without a system call; everything else, and anything
/// the heap's own bookkeeping allocates, goes to [`System`].
///
/// The heap is created on first use, without a release thread (an allocator must not spawn
/// threads from inside `alloc`): timed releases run on a later alloc or free once due.
///
/// ```no_run
/// #[global_allocator]
/// static GLOBAL: ebb::heap::HugeAlloc = ebb::heap::HugeAlloc::new(64 << 10, 16 << 30);
/// ```
pub struct HugeAlloc {
    threshold: usize,
    reservation: usize,
    heap: OnceLock<Option<PageHeap>>,
}

impl HugeAlloc {
    /// An allocator serving requests of `threshold` bytes or more from a heap reserving
    /// `reservation` bytes of address space.
    pub const fn new(threshold: usize, reservation: usize) -> HugeAlloc {
        HugeAlloc {
            threshold,
            reservation,
            heap: OnceLock::new(),
        }
    }

    /// The heap, created on first call; `None` if it could not be (then all goes to System).
    pub fn heap(&self) -> Option<&PageHeap> {
        self.heap
            .get_or_init(|| {
                let _guard = Reentry::enter();
                PageHeap::new(HeapOptions {
                    reservation: self.reservation,
                    background: false,
                    name: "ebb-hugealloc",
                    ..HeapOptions::default()
                })
                .ok()
            })
            .as_ref()
    }

    /// The heap's accounting, if it exists.
    pub fn stats(&self) -> Option<HeapStats> {
        let _guard = Reentry::enter();
        self.heap.get()?.as_ref().map(PageHeap::stats)
    }

    fn serves(&self, layout: &Layout) -> bool {
        layout.size() >= self.threshold.max(1) && layout.align() <= crate::sys::page_size()
    }

    fn pages(layout: &Layout) -> usize {
        layout.size().div_ceil(crate::sys::page_size())
    }

    /// Allocates from the heap, or `None` to fall back to System.
    fn heap_alloc(&self, layout: &Layout, zeroed: bool) -> Option<*mut u8> {
        if !self.serves(layout) {
            return None;
        }
        let _guard = Reentry::enter()?;
        let heap = self.heap()?;
        let pages = Self::pages(layout);
        let span = if zeroed {
            heap.alloc_zeroed(pages)
        } else {
            heap.alloc(pages)
        };
        span.ok().map(|s| s.into_raw().0.as_ptr())
    }
}

// SAFETY: every pointer returned is either System's or a live span of at least
// `layout.size()` bytes, page-aligned (≥ `layout.align()`, which `serves` checks); `dealloc`
// routes by address, since spans lie inside the heap's reservation and System's memory never
// does.
unsafe impl GlobalAlloc for HugeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.heap_alloc(&layout, false) {
            Some(p) => p,
            // SAFETY: forwarding the caller's layout, which meets `GlobalAlloc::alloc`'s rules.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match self.heap_alloc(&layout, true) {
            Some(p) => p,
            // SAFETY: as in `alloc`.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(Some(heap)) = self.heap.get()
            && heap.reservation().contains(&(ptr as usize))
        {
            let _guard = Reentry::enter();
            if let Some(p) = NonNull::new(ptr) {
                // SAFETY: the pointer lies in the reservation, so `alloc` made it from a span
                // of `pages(layout)` pages (same layout, per `GlobalAlloc::dealloc`).
                let span = unsafe { Span::from_raw_parts(p, Self::pages(&layout)) };
                // A failure is a double free by the caller; the heap refused it unchanged.
                let _ = heap.free(span);
            }
            return;
        }
        // SAFETY: outside the reservation, so System allocated it with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}
