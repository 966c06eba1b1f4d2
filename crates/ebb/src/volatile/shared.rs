//! [`SharedVolatile`]: one volatile region pinned by many readers on many threads.
//!
//! The state machine is a pin count with a lock-free fast path:
//! - a pin that finds the count above zero increments it with a compare-exchange and is done
//!   (the region is pinned, and stays pinned while the count it raised is held);
//! - a pin that finds zero takes the lock, and if the count is still zero pins the region
//!   (checks the sentinels) and publishes the result of that pin (the lost ranges of this
//!   *pinned epoch*) before storing 1 with release ordering;
//! - an unpin that finds the count above one decrements it with a compare-exchange;
//! - an unpin that finds one takes the lock and decrements; if that reached zero (no fast-path
//!   pin slipped in), it unpins the region while still holding the lock, so a pin that sees
//!   zero waits for the unpin to finish before pinning again.
//!
//! Every pin of one epoch gets the same answer: if the pin that opened the epoch found pages
//! lost, every later pin of the epoch is told too (the lost pages read as zero for all of
//! them). A pin can never observe a region that an unpin is releasing: the count only reaches
//! zero under the lock, and only the holder of the lock at zero touches the region.
//!
//! Readers get `&[u8]`: shared read access is all a count of pins can make sound. To rebuild
//! lost data, take `&mut SharedVolatile` (no pins can exist then) and use
//! [`SharedVolatile::get_mut`].
//!
//! The state machine is written over a [`Backend`] so that `loom` can model it (`cfg(loom)`,
//! run by `.ci/loom`) with a fake region that checks it is never unpinned under a reader.
#![allow(unsafe_code)]

use std::fmt;
use std::ops::{Deref, Range};
use std::ptr::NonNull;

// The report is plain shared data; only the synchronisation is modelled by loom.
use std::sync::Arc;

#[cfg(loom)]
use loom::sync::{
    Mutex,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};
#[cfg(not(loom))]
use std::sync::{
    Mutex,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use super::VolatileRegion;

/// The region transitions the pin count drives.
pub(crate) trait Backend {
    /// Pins; returns the lost byte ranges.
    fn pin(&mut self) -> Vec<Range<usize>>;
    /// Unpins.
    fn unpin(&mut self);
}

impl Backend for VolatileRegion {
    fn pin(&mut self) -> Vec<Range<usize>> {
        self.pin_raw()
    }
    fn unpin(&mut self) {
        self.unpin_raw()
    }
}

struct Inner<B> {
    backend: B,
    /// The lost ranges found by the pin that opened the current epoch.
    report: Option<Arc<[Range<usize>]>>,
}

/// The pin count state machine.
pub(crate) struct PinCount<B> {
    count: AtomicUsize,
    /// Whether the current epoch's opening pin found pages lost (published before the count
    /// leaves zero).
    purged: AtomicBool,
    inner: Mutex<Inner<B>>,
}

impl<B: Backend> PinCount<B> {
    pub(crate) fn new(backend: B) -> Self {
        PinCount {
            count: AtomicUsize::new(0),
            purged: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                backend,
                report: None,
            }),
        }
    }

    fn lock(&self) -> impl std::ops::DerefMut<Target = Inner<B>> + '_ {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one pin; returns the epoch's lost ranges, if any.
    pub(crate) fn acquire(&self) -> Option<Arc<[Range<usize>]>> {
        let mut c = self.count.load(Ordering::Acquire);
        while c > 0 {
            match self
                .count
                .compare_exchange_weak(c, c + 1, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => {
                    if self.purged.load(Ordering::Relaxed) {
                        // Rare: clone the report. It cannot change while we hold a pin.
                        return self.lock().report.clone();
                    }
                    return None;
                }
                Err(now) => c = now,
            }
        }
        let mut inner = self.lock();
        if self.count.load(Ordering::Relaxed) == 0 {
            let lost = inner.backend.pin();
            let report: Option<Arc<[Range<usize>]>> = (!lost.is_empty()).then(|| lost.into());
            self.purged.store(report.is_some(), Ordering::Relaxed);
            inner.report = report.clone();
            self.count.store(1, Ordering::Release);
            report
        } else {
            self.count.fetch_add(1, Ordering::Acquire);
            inner.report.clone()
        }
    }

    /// Drops one pin; the last one unpins.
    pub(crate) fn release(&self) {
        let mut c = self.count.load(Ordering::Relaxed);
        while c > 1 {
            match self
                .count
                .compare_exchange_weak(c, c - 1, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => c = now,
            }
        }
        let mut inner = self.lock();
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            inner.report = None;
            inner.backend.unpin();
        }
    }

    /// The current pin count.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub(crate) fn get_mut(&mut self) -> &mut B {
        &mut self
            .inner
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .backend
    }

    pub(crate) fn into_inner(self) -> B {
        self.inner
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .backend
    }
}

/// A volatile region pinned concurrently by many readers. The region is pinned while at least
/// one [`SharedPin`] lives, and unpinned when the last is dropped.
pub struct SharedVolatile {
    ptr: NonNull<u8>,
    len: usize,
    state: PinCount<VolatileRegion>,
}

// SAFETY: the region is `Send`; the raw pointer is only dereferenced while the pin count is
// held above zero, during which the region is pinned and nobody writes to it.
unsafe impl Send for SharedVolatile {}
// SAFETY: `&SharedVolatile` allows only pin/unpin, serialised by the pin-count state machine,
// and shared reads of the memory while pinned; no `&self` path writes to the memory.
unsafe impl Sync for SharedVolatile {}

impl SharedVolatile {
    /// Shares `region` (which, being owned, is unpinned).
    pub fn new(region: VolatileRegion) -> Self {
        // SAFETY-free: only the address and length are taken here.
        let ptr = region.ptr;
        let len = region.len;
        SharedVolatile {
            ptr,
            len,
            state: PinCount::new(region),
        }
    }

    /// Pins for reading. `Err` carries the ranges lost before this pinned epoch began; the
    /// region is pinned either way until the guard is dropped.
    pub fn pin(&self) -> Result<SharedPin<'_>, SharedPurged<'_>> {
        let report = self.state.acquire();
        let pin = SharedPin { shared: self };
        match report {
            None => Ok(pin),
            Some(lost) => Err(SharedPurged { pin, lost }),
        }
    }

    /// How many pins are held now.
    pub fn pin_count(&self) -> usize {
        self.state.count()
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: regions are at least one byte long.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The region, for exclusive use (rebuilding data): no pins can exist while `&mut self`
    /// is held.
    pub fn get_mut(&mut self) -> &mut VolatileRegion {
        self.state.get_mut()
    }

    /// The region back.
    pub fn into_inner(self) -> VolatileRegion {
        self.state.into_inner()
    }
}

impl fmt::Debug for SharedVolatile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedVolatile")
            .field("len", &self.len)
            .field("pins", &self.pin_count())
            .finish()
    }
}

/// One reader's pin of a [`SharedVolatile`]; the memory reads as a `&[u8]`.
pub struct SharedPin<'a> {
    shared: &'a SharedVolatile,
}

impl Deref for SharedPin<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: this guard holds a pin, so the region is pinned (no destructive advice) and,
        // with only `&SharedVolatile` around, nothing writes to it until the guard drops.
        unsafe { std::slice::from_raw_parts(self.shared.ptr.as_ptr(), self.shared.len) }
    }
}

impl Drop for SharedPin<'_> {
    fn drop(&mut self) {
        self.shared.state.release();
    }
}

impl fmt::Debug for SharedPin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedPin")
            .field("len", &self.shared.len)
            .finish()
    }
}

/// A shared pin whose epoch began by finding pages lost.
pub struct SharedPurged<'a> {
    pin: SharedPin<'a>,
    lost: Arc<[Range<usize>]>,
}

impl<'a> SharedPurged<'a> {
    /// The lost byte ranges; they read as zero.
    pub fn lost(&self) -> &[Range<usize>] {
        &self.lost
    }

    /// The pin, dropping the report.
    pub fn into_pin(self) -> SharedPin<'a> {
        self.pin
    }
}

impl fmt::Debug for SharedPurged<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedPurged")
            .field("lost", &self.lost)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn many_threads_pin_and_the_last_unpin_releases() {
        let mut region = VolatileRegion::new(1 << 16).unwrap();
        region.pin().unwrap().fill(3);
        let shared = SharedVolatile::new(region);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        let p = shared.pin().unwrap();
                        assert!(p.iter().step_by(4096).all(|b| *b == 3));
                    }
                });
            }
        });
        assert_eq!(shared.pin_count(), 0);
        let mut shared = shared;
        assert!(!shared.get_mut().is_pinned());
        assert!(shared.get_mut().stats().pins >= 2);
    }

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn send_and_sync_where_sound() {
        assert_send_sync::<SharedVolatile>();
        assert_send_sync::<SharedPin<'static>>();
        assert_send_sync::<VolatileRegion>();
    }
}

#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicUsize as LAtomic;

    /// A fake region: `pinned` must be true whenever a reader holds a pin; each epoch `n`
    /// reports `n..n+1` lost when `n` is odd, so every pin of an epoch must agree.
    struct Fake {
        pinned: Arc<AtomicBool>,
        epoch: Arc<LAtomic>,
    }

    impl Backend for Fake {
        fn pin(&mut self) -> Vec<Range<usize>> {
            assert!(!self.pinned.swap(true, Ordering::SeqCst), "pinned twice");
            let n = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
            if n % 2 == 1 {
                vec![n..n + 1]
            } else {
                Vec::new()
            }
        }
        fn unpin(&mut self) {
            assert!(self.pinned.swap(false, Ordering::SeqCst), "unpinned twice");
        }
    }

    #[test]
    fn pin_count_never_unpins_under_a_reader() {
        loom::model(|| {
            let pinned = Arc::new(AtomicBool::new(false));
            let epoch = Arc::new(LAtomic::new(0));
            let pc = Arc::new(PinCount::new(Fake {
                pinned: pinned.clone(),
                epoch: epoch.clone(),
            }));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let pc = pc.clone();
                    let pinned = pinned.clone();
                    let epoch = epoch.clone();
                    loom::thread::spawn(move || {
                        for _ in 0..2 {
                            let report = pc.acquire();
                            assert!(
                                pinned.load(Ordering::SeqCst),
                                "reader sees an unpinned region"
                            );
                            let n = epoch.load(Ordering::SeqCst);
                            let expect = (n % 2 == 1).then(|| n..n + 1);
                            assert_eq!(
                                report.map(|r| r[0].clone()),
                                expect,
                                "wrong report for the epoch"
                            );
                            pc.release();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert!(!pinned.load(Ordering::SeqCst));
            assert_eq!(pc.count(), 0);
        });
    }
}
