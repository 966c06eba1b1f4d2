//! `ebb bench heap`: the hugepage-preserving page heap against the kernel's per-span release
//! and the common allocators, side by side in one run.
//!
//! - **reuse**: 256 MiB in spans of 4 KiB, 64 KiB, 1 MiB and 8 MiB; bursts of alloc + write
//!   (every byte) + free, with idle gaps between bursts. The floor keeps one 256 MiB buffer and
//!   rewrites it span by span, through the same burst loop as the allocators (the same pointer
//!   vector and free pass, its free doing nothing), so it differs from them only in the
//!   allocator calls. Per burst every allocator and the floor run in turn, the order rotated
//!   each burst, then one shared gap follows, so every allocator sees the same idle time (11
//!   s, longer than jemalloc's 10 s dirty decay, mimalloc's 10 ms purge delay and ebb's 1 s
//!   release delay; `--quick`: 1.2 s and 5 bursts, so jemalloc's decay never elapses). The
//!   first burst is a warm-up for all and not counted. Reported: the median burst time, the
//!   median over bursts of the time ÷ the floor's in the same burst, and page faults
//!   (getrusage `RUSAGE_THREAD` minflt + majflt) of the measured bursts.
//! - **thp**: random alloc/free churn (spans of 4 KiB to 4 MiB, log-uniform) with up to 1 GiB
//!   live (`--quick`: 256 MiB), no pressure; THP coverage (AnonHugePages ÷ Rss of the VMAs
//!   holding the allocator's live blocks, from /proc/self/smaps) sampled over time.
//! - **pressure**: see [`run_pressure`].
//!
//! Baselines run with their default settings: glibc through `libc::malloc`, jemalloc and
//! mimalloc through their `GlobalAlloc` impls called directly (not as the global allocator).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ebb::Advice;
use ebb::heap::{HeapOptions, PageHeap, Span, ThpCoverage};

use super::heap_pressure::{PressureOptions, PressureReport, run_pressure};

/// Errors of the heap benchmark.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The page heap failed.
    #[error("page heap: {0}")]
    Heap(#[from] ebb::heap::HeapError),
    /// An allocator returned null.
    #[error("{allocator} returned null for {bytes} bytes")]
    OutOfMemory {
        /// Which allocator.
        allocator: &'static str,
        /// The request.
        bytes: usize,
    },
    /// Mapping or advising the baseline regions failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The pressure scenario failed.
    #[error("pressure scenario: {0}")]
    Pressure(String),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Short gaps, fewer bursts, smaller churn (see the module doc).
    pub quick: bool,
    /// Run the reuse scenario.
    pub reuse: bool,
    /// Run the thp scenario.
    pub thp: bool,
    /// Run the pressure scenario.
    pub pressure: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            quick: false,
            reuse: true,
            thp: true,
            pressure: true,
        }
    }
}

/// One allocator's figures for one span size.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReuseFigures {
    /// Median seconds of one measured burst (alloc + write + free of 256 MiB).
    pub seconds: f64,
    /// Page faults (minor + major) during all measured bursts.
    pub faults: u64,
    /// Median over the measured bursts of this burst's time ÷ the floor's in the same burst.
    pub vs_floor: f64,
    /// Seconds of each measured burst.
    pub bursts: Vec<f64>,
}

/// THP coverage of one allocator under churn.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ThpFigures {
    /// Mean of the samples of AnonHugePages ÷ Rss.
    pub coverage: f64,
    /// Each sample: (seconds since start, coverage, resident MiB).
    pub samples: Vec<(f64, f64, f64)>,
}

/// The benchmark's result; its JSON is the contract of `ebb bench heap --json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Whether `--quick` shortened it.
    pub quick: bool,
    /// Bursts measured per span size (after one warm-up).
    pub bursts: usize,
    /// Idle gap between bursts, seconds.
    pub gap_seconds: f64,
    /// `reuse.<span>.<allocator>`.
    pub reuse: BTreeMap<String, BTreeMap<String, ReuseFigures>>,
    /// `thp.<allocator>`.
    pub thp: BTreeMap<String, ThpFigures>,
    /// The pressure scenario.
    pub pressure: Option<PressureReport>,
    /// Live bytes of the churn in the thp scenario.
    pub thp_live_bytes: usize,
    /// Bytes allocated, written and freed per burst in the reuse scenario: the floor
    /// touches `reuse_bytes / 4096` pages a burst, the page count the fault target is a
    /// share of.
    pub reuse_bytes: usize,
}

const HUGE: usize = 2 << 20;
const PAGE: usize = 4096;

fn faults_now() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the rusage struct we pass; RUSAGE_THREAD is Linux-specific
    // and counts this thread only.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr());
        ru.assume_init()
    };
    (ru.ru_minflt + ru.ru_majflt) as u64
}

/// A 2 MiB-aligned MADV_HUGEPAGE region of our own, for the floor and the per-span
/// madvise baselines.
struct Region {
    ptr: *mut u8,
    len: usize,
}

impl Region {
    fn new(len: usize) -> Result<Region, Error> {
        let p = ebb::sys::map_anonymous(len, HUGE).map_err(|source| Error::Io {
            what: "mapping a baseline region",
            source,
        })?;
        let _ = ebb::sys::madvise_hint(p.as_ptr() as usize, len, Advice::HugePage);
        Ok(Region {
            ptr: p.as_ptr(),
            len,
        })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Some(p) = std::ptr::NonNull::new(self.ptr) {
            // SAFETY: our own mapping; nothing refers to it any more.
            let _ = unsafe { ebb::sys::unmap(p, self.len) };
        }
    }
}

/// The allocators compared.
enum Alloc<'h> {
    /// The floor: one buffer kept and rewritten, slot `i` at `i * bytes`; free does nothing.
    /// It runs through the same [`burst`] as the allocators, so the benchmark's own
    /// bookkeeping (the pointer vector, the free pass over it) is identical for all.
    Floor(Region),
    Ebb(&'h PageHeap),
    /// Fixed slots in a region; free = madvise(advice) of the slot.
    PerSpan(Region, Advice),
    Glibc,
    Jemalloc,
    Mimalloc,
}

impl Alloc<'_> {
    fn name(&self) -> &'static str {
        match self {
            Alloc::Floor(_) => "floor",
            Alloc::Ebb(_) => "ebb",
            Alloc::PerSpan(_, Advice::Free) => "madv_free",
            Alloc::PerSpan(..) => "madv_dontneed",
            Alloc::Glibc => "glibc",
            Alloc::Jemalloc => "jemalloc",
            Alloc::Mimalloc => "mimalloc",
        }
    }

    fn alloc(&self, bytes: usize, slot: usize) -> Result<*mut u8, Error> {
        let layout = Layout::from_size_align(bytes, PAGE).expect("valid layout");
        let p = match self {
            Alloc::Ebb(h) => h.alloc(bytes.div_ceil(PAGE))?.into_raw().0.as_ptr(),
            // SAFETY: slots are disjoint and inside the region (callers keep slot*bytes+bytes
            // within its length).
            Alloc::Floor(r) | Alloc::PerSpan(r, _) => unsafe { r.ptr.add(slot * bytes) },
            // SAFETY: plain malloc.
            Alloc::Glibc => unsafe { libc::malloc(bytes).cast() },
            // SAFETY: a non-zero-size layout.
            Alloc::Jemalloc => unsafe { tikv_jemallocator::Jemalloc.alloc(layout) },
            // SAFETY: a non-zero-size layout.
            Alloc::Mimalloc => unsafe { mimalloc::MiMalloc.alloc(layout) },
        };
        if p.is_null() {
            return Err(Error::OutOfMemory {
                allocator: self.name(),
                bytes,
            });
        }
        Ok(p)
    }

    /// # Safety
    /// `p` came from `self.alloc(bytes, _)` and is not used afterwards.
    unsafe fn free(&self, p: *mut u8, bytes: usize) {
        let layout = Layout::from_size_align(bytes, PAGE).expect("valid layout");
        match self {
            Alloc::Floor(_) => {
                std::hint::black_box(p);
            }
            Alloc::Ebb(h) => {
                let nn = std::ptr::NonNull::new(p).expect("spans are non-null");
                // SAFETY: rebuilt once from the span `alloc` gave up.
                let span: Span<'_> = unsafe { Span::from_raw_parts(nn, bytes.div_ceil(PAGE)) };
                h.free(span).expect("a live span of this heap");
            }
            Alloc::PerSpan(_, advice) => {
                // SAFETY: the slot is ours and no longer used by the benchmark.
                let _ = unsafe { ebb::sys::madvise(p, bytes, *advice) };
            }
            // SAFETY: from malloc.
            Alloc::Glibc => unsafe { libc::free(p.cast()) },
            // SAFETY: from the same allocator with the same layout.
            Alloc::Jemalloc => unsafe { tikv_jemallocator::Jemalloc.dealloc(p, layout) },
            // SAFETY: from the same allocator with the same layout.
            Alloc::Mimalloc => unsafe { mimalloc::MiMalloc.dealloc(p, layout) },
        }
    }
}

/// One burst: allocate `total` bytes in spans of `span`, write every byte, free all.
fn burst(
    a: &Alloc<'_>,
    span: usize,
    total: usize,
    byte: u8,
    ptrs: &mut Vec<*mut u8>,
) -> Result<(), Error> {
    ptrs.clear();
    for slot in 0..total / span {
        let p = a.alloc(span, slot)?;
        // SAFETY: `p` is a fresh block of `span` bytes.
        unsafe { p.write_bytes(byte, span) };
        ptrs.push(p);
    }
    for &p in ptrs.iter() {
        // SAFETY: each pointer came from `a.alloc(span, _)` above and is dropped now.
        unsafe { a.free(p, span) };
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Bytes per burst of the reuse scenario.
pub const REUSE_BYTES: usize = 256 << 20;

fn run_reuse(opts: &Options, report: &mut Report) -> Result<(), Error> {
    let total = REUSE_BYTES;
    let heap = PageHeap::new(HeapOptions {
        reservation: 2 << 30,
        ..HeapOptions::default()
    })?;
    for span in [4 << 10, 64 << 10, 1 << 20, 8 << 20] {
        let allocs = [
            Alloc::Floor(Region::new(total)?),
            Alloc::Ebb(&heap),
            Alloc::PerSpan(Region::new(total)?, Advice::Free),
            Alloc::PerSpan(Region::new(total)?, Advice::DontNeed),
            Alloc::Glibc,
            Alloc::Jemalloc,
            Alloc::Mimalloc,
        ];
        let n = allocs.len();
        // secs[i][b]: allocator i's measured burst b.
        let mut secs = vec![Vec::new(); n];
        let mut faults = vec![0u64; n];
        let mut ptrs = Vec::with_capacity(total / span);
        for b in 0..=report.bursts {
            let byte = b as u8 | 1;
            // Rotate who goes first, so no allocator always runs right after the gap or right
            // after a particular other one.
            for k in 0..n {
                let i = (b + k) % n;
                let (t, f) = (Instant::now(), faults_now());
                burst(&allocs[i], span, total, byte, &mut ptrs)?;
                // Burst 0 is the warm-up for everyone.
                if b > 0 {
                    secs[i].push(t.elapsed().as_secs_f64());
                    faults[i] += faults_now() - f;
                }
            }
            std::thread::sleep(Duration::from_secs_f64(report.gap_seconds));
        }
        let mut row = BTreeMap::new();
        for (i, a) in allocs.iter().enumerate() {
            // Paired per burst: each burst's time over the floor's in the same burst.
            let mut ratios: Vec<f64> = secs[i].iter().zip(&secs[0]).map(|(t, f)| t / f).collect();
            row.insert(
                a.name().to_string(),
                ReuseFigures {
                    seconds: median(&mut secs[i].clone()),
                    faults: faults[i],
                    vs_floor: median(&mut ratios),
                    bursts: secs[i].clone(),
                },
            );
        }
        report.reuse.insert(span_name(span), row);
        let _ = opts;
    }
    Ok(())
}

fn span_name(span: usize) -> String {
    if span >= 1 << 20 {
        format!("{}MiB", span >> 20)
    } else {
        format!("{}KiB", span >> 10)
    }
}

/// Coverage of the VMAs that hold at least one of `blocks`.
fn coverage_of(blocks: &[(*mut u8, usize)]) -> ThpCoverage {
    let mut c = ThpCoverage::default();
    let Ok(entries) = ebb::procfs::smaps::read_smaps_self() else {
        return c;
    };
    let mut addrs: Vec<u64> = blocks.iter().map(|&(p, _)| p as u64).collect();
    addrs.sort_unstable();
    for e in entries {
        let i = addrs.partition_point(|&a| a < e.map.start);
        if i < addrs.len() && addrs[i] < e.map.end {
            c.rss += e.counters.rss;
            c.anon_huge_pages += e.counters.anon_huge_pages;
            c.lazy_free += e.counters.lazy_free;
        }
    }
    c
}

fn run_thp(opts: &Options, report: &mut Report) -> Result<(), Error> {
    let live_max = report.thp_live_bytes;
    let steps = if opts.quick { 20_000 } else { 60_000 };
    let samples = 10;
    let heap = PageHeap::new(HeapOptions {
        reservation: 4 << 30,
        ..HeapOptions::default()
    })?;
    let allocs = [
        Alloc::Ebb(&heap),
        Alloc::Glibc,
        Alloc::Jemalloc,
        Alloc::Mimalloc,
    ];
    for a in &allocs {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut live: Vec<(*mut u8, usize)> = Vec::new();
        let mut live_bytes = 0;
        let mut fig = ThpFigures {
            coverage: 0.0,
            samples: Vec::new(),
        };
        let start = Instant::now();
        for step in 0..steps {
            // Log-uniform 4 KiB .. 4 MiB, whole pages.
            let bytes = ((PAGE as f64) * 1024f64.powf((rnd() % 1000) as f64 / 1000.0)) as usize;
            let bytes = bytes.next_multiple_of(PAGE);
            let grow = live_bytes + bytes <= live_max && (rnd() % 100 < 55 || live.is_empty());
            if grow {
                let p = a.alloc(bytes, 0)?;
                // SAFETY: a fresh block of `bytes`.
                unsafe { p.write_bytes(0x5a, bytes) };
                live.push((p, bytes));
                live_bytes += bytes;
            } else if !live.is_empty() {
                let i = rnd() as usize % live.len();
                let (p, n) = live.swap_remove(i);
                // SAFETY: from `a.alloc(n, _)`, dropped now.
                unsafe { a.free(p, n) };
                live_bytes -= n;
            }
            if (step + 1) % (steps / samples) == 0 {
                let c = coverage_of(&live);
                fig.samples.push((
                    start.elapsed().as_secs_f64(),
                    c.ratio(),
                    c.rss as f64 / (1 << 20) as f64,
                ));
            }
        }
        fig.coverage = fig.samples.iter().map(|s| s.1).sum::<f64>() / fig.samples.len() as f64;
        for (p, n) in live.drain(..) {
            // SAFETY: from `a.alloc(n, _)`.
            unsafe { a.free(p, n) };
        }
        report.thp.insert(a.name().to_string(), fig);
    }
    Ok(())
}

/// Runs the benchmark.
pub fn run(opts: &Options) -> Result<Report, Error> {
    let mut report = Report {
        quick: opts.quick,
        bursts: if opts.quick { 5 } else { 20 },
        gap_seconds: if opts.quick { 1.2 } else { 11.0 },
        reuse: BTreeMap::new(),
        thp: BTreeMap::new(),
        pressure: None,
        thp_live_bytes: if opts.quick { 256 << 20 } else { 1 << 30 },
        reuse_bytes: REUSE_BYTES,
    };
    if opts.reuse {
        run_reuse(opts, &mut report)?;
    }
    if opts.thp {
        run_thp(opts, &mut report)?;
    }
    if opts.pressure {
        report.pressure = Some(run_pressure(&PressureOptions { quick: opts.quick })?);
    }
    Ok(report)
}

impl Report {
    /// A human-readable table.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "reuse: 256 MiB per burst, {} measured bursts (+1 warm-up), {:.1} s gaps{}",
            self.bursts,
            self.gap_seconds,
            if self.quick {
                " (quick: shorter than jemalloc's 10 s decay)"
            } else {
                ""
            }
        );
        for (span, row) in &self.reuse {
            let _ = writeln!(s, "  span {span}");
            for (name, f) in row {
                let _ = writeln!(
                    s,
                    "    {name:<14} {:>8.4} s/burst  {:>6.2}x floor  {:>9} faults",
                    f.seconds, f.vs_floor, f.faults
                );
            }
        }
        if !self.thp.is_empty() {
            let _ = writeln!(s, "thp: churn up to {} MiB live", self.thp_live_bytes >> 20);
            for (name, f) in &self.thp {
                let _ = writeln!(s, "    {name:<14} coverage {:>6.1}%", f.coverage * 100.0);
            }
        }
        if let Some(p) = &self.pressure {
            s.push_str(&p.render());
        }
        s
    }
}
