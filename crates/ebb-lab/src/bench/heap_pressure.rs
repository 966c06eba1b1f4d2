//! The `pressure` scenario of `ebb bench heap`.
//!
//! A heap child (see [`heap_child`](super::heap_child)) in a [`Sandbox`] with no swap fills
//! `held` bytes in 1 MiB blocks and frees them all: the heap now holds them free. A neighbour
//! ([`Hog`], `oom_score_adj` 1000 so that it, not the heap, is the OOM victim) then needs
//! `held` bytes in the same cgroup, whose limit is 1.5 × `held`. Without a release the
//! cgroup cannot hold both and the neighbour is OOM-killed.
//!
//! Heaps: `ebb` (release delay 1 h, so only the pressure path can release; it watches the
//! sandbox with an `ebb::pressure::Monitor` attached via `PageHeap::attach`), `ebb-keep`
//! (never releases: the control, whose neighbour must die), `jemalloc` and `mimalloc` with
//! their defaults.
//!
//! Measured per heap: whether the neighbour was killed; the part of `held` the heap child no
//! longer holds (its `Rss − LazyFree` from smaps_rollup fell by it) 100 ms and 1 s after the
//! neighbour started; for ebb, also the bytes its heap released (its stats) within 100 ms and
//! 1 s of the first pressure event.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::heap::Error;
use super::heap_child::HeapChild;
use crate::{Hog, Sandbox, SandboxConfig};

/// Pressure scenario settings.
#[derive(Debug, Clone, Default)]
pub struct PressureOptions {
    /// 256 MiB held instead of 1 GiB.
    pub quick: bool,
}

/// One heap's run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PressureRun {
    /// What the heap child held (Rss − LazyFree) when the neighbour started: an allocator
    /// that had already given its free memory back holds little here.
    pub child_held_bytes_at_start: u64,
    /// The neighbour died (OOM kill) instead of getting its memory.
    pub neighbour_killed: bool,
    /// Fraction of the held bytes the heap child no longer held (Rss − LazyFree), 100 ms
    /// after the neighbour started.
    pub rss_released_fraction_100ms: f64,
    /// The same, 1 s after.
    pub rss_released_fraction_1s: f64,
    /// ebb: milliseconds from the neighbour's start to the first pressure event.
    pub first_event_ms: Option<f64>,
    /// ebb: fraction of the free bytes the heap released within 100 ms of the first event.
    pub heap_released_fraction_100ms: Option<f64>,
    /// ebb: the same within 1 s.
    pub heap_released_fraction_1s: Option<f64>,
}

/// The pressure scenario's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PressureReport {
    /// Bytes the heap held free when the neighbour started.
    pub held_bytes: u64,
    /// The sandbox's memory limit (no swap).
    pub limit_bytes: u64,
    /// ebb: fraction of its free bytes released within 100 ms of the event.
    pub released_fraction_100ms: f64,
    /// ebb: fraction of its free bytes released within 1 s of the event.
    pub released_fraction_1s: f64,
    /// ebb: whether the neighbour was OOM-killed.
    pub neighbour_killed: bool,
    /// Every heap's run, by kind.
    pub runs: BTreeMap<String, PressureRun>,
}

fn held_now(pid: u32) -> Result<u64, Error> {
    let r = ebb::procfs::smaps::read_rollup(pid).map_err(|e| Error::Pressure(e.to_string()))?;
    Ok(r.rss.saturating_sub(r.lazy_free))
}

fn one(kind: &str, held: u64, limit: u64) -> Result<PressureRun, Error> {
    let err =
        |what: &str, e: &dyn std::fmt::Display| Error::Pressure(format!("{kind}: {what}: {e}"));
    let sandbox = Sandbox::new(SandboxConfig {
        name_hint: "bench-heap".into(),
        memory_limit: Some(limit),
        swap_limit: Some(0),
    })
    .map_err(|e| err("creating the sandbox (needs root and a memory cgroup)", &e))?;
    let mut child = HeapChild::spawn_with(kind, &["3600000"], Some(&sandbox))
        .map_err(|e| err("spawning ebb-heap-child", &e))?;
    child
        .request(&format!("fill {held} {}", 1 << 20))
        .map_err(|e| err("fill", &e))?;
    child.request("free").map_err(|e| err("free", &e))?;
    let ebb = kind == "ebb";
    if ebb {
        child
            .request(&format!("watch {}", sandbox.path().display()))
            .map_err(|e| err("watch", &e))?;
    }
    let pid = child.pid();
    let before = held_now(pid)?;
    let mut hog = Hog::spawn(Some(&sandbox)).map_err(|e| err("spawning the neighbour", &e))?;
    ebb::procfs::oom::write_oom_score_adj(hog.pid(), 1000)
        .map_err(|e| err("setting the neighbour's oom_score_adj", &e))?;
    let t0 = Instant::now();
    let neighbour = std::thread::spawn(move || {
        let ok = hog.fill(held).is_ok() && hog.verify().unwrap_or(false);
        (ok, hog)
    });
    let fraction = |now: u64| (before.saturating_sub(now) as f64 / held as f64).min(1.0);
    std::thread::sleep(Duration::from_millis(100).saturating_sub(t0.elapsed()));
    let at_100ms = held_now(pid).map(fraction).unwrap_or(1.0);
    std::thread::sleep(Duration::from_secs(1).saturating_sub(t0.elapsed()));
    let at_1s = held_now(pid).map(fraction).unwrap_or(1.0);
    let (survived, hog) = neighbour
        .join()
        .map_err(|_| Error::Pressure(format!("{kind}: the neighbour thread panicked")))?;
    drop(hog);
    let mut run = PressureRun {
        child_held_bytes_at_start: before,
        neighbour_killed: !survived,
        rss_released_fraction_100ms: at_100ms,
        rss_released_fraction_1s: at_1s,
        first_event_ms: None,
        heap_released_fraction_100ms: None,
        heap_released_fraction_1s: None,
    };
    if ebb {
        // Wait for the child's 1 s sample after the event (it came after the neighbour).
        std::thread::sleep(Duration::from_millis(1200));
        let w = child.request("events").map_err(|e| err("events", &e))?;
        let num = |i: usize| w.get(i).and_then(|s| s.parse::<f64>().ok());
        if num(0).unwrap_or(0.0) > 0.0 {
            let free = num(4).unwrap_or(held as f64).max(1.0);
            run.first_event_ms = num(1).map(|at| at - child_ms_at(&t0));
            run.heap_released_fraction_100ms = num(2).map(|b| b / free);
            run.heap_released_fraction_1s = num(3).map(|b| b / free);
        }
    }
    Ok(run)
}

/// The child reports event times in milliseconds of `CLOCK_MONOTONIC`; this puts our `t0` on
/// the same clock.
fn child_ms_at(t0: &Instant) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into our stack variable.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now_ms = ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6;
    now_ms - t0.elapsed().as_secs_f64() * 1e3
}

/// Runs the pressure scenario for every heap, one after the other.
pub fn run_pressure(opts: &PressureOptions) -> Result<PressureReport, Error> {
    let held: u64 = if opts.quick { 256 << 20 } else { 1 << 30 };
    let limit = held + held / 2;
    let mut runs = BTreeMap::new();
    for kind in ["ebb", "ebb-keep", "jemalloc", "mimalloc"] {
        runs.insert(kind.to_string(), one(kind, held, limit)?);
    }
    let e = &runs["ebb"];
    Ok(PressureReport {
        held_bytes: held,
        limit_bytes: limit,
        released_fraction_100ms: e.heap_released_fraction_100ms.unwrap_or(0.0),
        released_fraction_1s: e.heap_released_fraction_1s.unwrap_or(0.0),
        neighbour_killed: e.neighbour_killed,
        runs,
    })
}

impl PressureReport {
    /// A human-readable table.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "pressure: {} MiB held free, neighbour needs as much, limit {} MiB, no swap",
            self.held_bytes >> 20,
            self.limit_bytes >> 20
        );
        let _ = writeln!(
            s,
            "  ebb released {:.1}% within 100 ms, {:.1}% within 1 s of the event",
            self.released_fraction_100ms * 100.0,
            self.released_fraction_1s * 100.0
        );
        for (kind, r) in &self.runs {
            let _ = writeln!(
                s,
                "    {kind:<10} neighbour {:<8} child held {:>5} MiB, gave back {:>5.1}% by 100 ms, {:>5.1}% by 1 s{}",
                if r.neighbour_killed {
                    "KILLED"
                } else {
                    "survived"
                },
                r.child_held_bytes_at_start >> 20,
                r.rss_released_fraction_100ms * 100.0,
                r.rss_released_fraction_1s * 100.0,
                r.first_event_ms
                    .map(|m| format!(" (first event {m:.0} ms after the neighbour started)"))
                    .unwrap_or_default()
            );
        }
        s
    }
}
