//! `ebb bench volatile`: what a pin+unpin cycle of [`ebb::volatile::VolatileRegion`] costs
//! per page against the floor and against the alternatives, and a torture run under real
//! memory pressure.
//!
//! Cycle costs (all measured side by side, interleaved round by round in a Williams design so
//! that every scheme follows every other equally often, median of rounds):
//! - **ebb 4k / ebb thp**: `pin()` then drop the guard, on a region full of random data
//!   (4 KiB units with `MADV_NOHUGEPAGE`, or 2 MiB units on THPs).
//! - **floor 4k / floor thp**: the least any such scheme can do: `MADV_FREE` of the range
//!   and one compare-exchange per page (per 2 MiB page for THP), nothing recorded.
//! - **cookie 4k**: Chromium's `MadvFreeDiscardableMemoryPosix` scheme: at unpin write a cookie
//!   into the first word of every page (saving the word), `MADV_FREE`; at pin
//!   compare-exchange each cookie back to the saved word.
//! - **dontneed 4k**: `MADV_DONTNEED` at unpin, regenerating the data at pin (a fault,
//!   a zeroed page and a rewrite per page).
//!
//! Torture: threads pin and unpin regions of random data whose per-page checksums are kept
//! aside, inside a [`Sandbox`] that a [`Hog`] squeezes over and over, with THP units and with
//! 4 KiB units. Every pin is checked: a page reported lost must read zero, every other page
//! must match its checksum (else it counts as a corruption); lost pages are regenerated.
//! The benchmark process moves itself into the sandbox for the run and back afterwards.
#![allow(unsafe_code)]

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ebb::volatile::{HugeMode, VolatileOptions, VolatileRegion};
use ebb::{Advice, Region, RegionOptions};

use crate::{Hog, Sandbox, SandboxConfig};

const PAGE: usize = 4096;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// A short run (≥ 1 M page pins in the torture run).
    pub quick: bool,
    /// Bytes per region in the cycle-cost measurement.
    pub cycle_bytes: usize,
    /// Torture threads.
    pub threads: usize,
    /// Run the torture part (the cycle costs alone take seconds).
    pub torture: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            quick: false,
            cycle_bytes: 64 << 20,
            threads: 3,
            torture: true,
        }
    }
}

/// A benchmark error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Making a volatile region failed.
    #[error("volatile region: {0}")]
    Volatile(#[from] ebb::volatile::Error),
    /// Making or advising a plain region failed.
    #[error("region: {0}")]
    Region(#[from] ebb::region::Error),
    /// The sandbox could not be made or joined (needs root and a memory cgroup controller).
    #[error("sandbox: {0}")]
    Sandbox(#[from] crate::sandbox::Error),
    /// The squeezing hog failed.
    #[error("hog: {0}")]
    Hog(#[from] crate::hog::Error),
    /// Finding our own memory cgroup failed.
    #[error("cgroup: {0}")]
    Cgroup(#[from] ebb::cgroup::Error),
    /// This process is in no memory cgroup it could return to.
    #[error("this process has no memory cgroup to return to after the torture run")]
    NoHome,
}

/// Nanoseconds per 4 KiB page of one pin+unpin cycle, by scheme.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CycleCosts {
    /// ebb, 4 KiB units.
    pub ebb_4k_ns: f64,
    /// Floor, 4 KiB pages.
    pub floor_4k_ns: f64,
    /// Chromium's cookie scheme, 4 KiB pages.
    pub cookie_4k_ns: f64,
    /// DONTNEED + regenerate, 4 KiB pages.
    pub dontneed_4k_ns: f64,
    /// ebb, 2 MiB units on THPs.
    pub ebb_thp_ns: f64,
    /// Floor on THPs.
    pub floor_thp_ns: f64,
    /// ebb's unpin alone, 4 KiB units.
    pub ebb_unpin_4k_ns: f64,
    /// The cookie scheme's unpin alone.
    pub cookie_unpin_4k_ns: f64,
    /// ebb's unpin alone, THP units.
    pub ebb_unpin_thp_ns: f64,
    /// The floor's MADV_FREE alone, THP.
    pub floor_free_thp_ns: f64,
    /// Bytes per region.
    pub region_bytes: usize,
    /// Rounds (each timing every scheme once).
    pub rounds: usize,
    /// 2 MiB units of the ebb THP region backed by huge pages at the end.
    pub thp_units_ebb: usize,
    /// 2 MiB units of the floor's THP region backed by huge pages at the end (smaps).
    pub thp_units_floor: usize,
}

/// The torture run's counters.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Torture {
    /// 4 KiB pages pinned (a pin of an N-page region counts N).
    pub page_pins: u64,
    /// Pages reported lost.
    pub pages_lost: u64,
    /// Pages reported intact whose bytes differ, or reported lost but not zero.
    pub corruptions: u64,
    /// Of `page_pins`, those in THP-unit regions.
    pub page_pins_thp: u64,
    /// Of `pages_lost`, those in THP-unit regions.
    pub pages_lost_thp: u64,
    /// Region pins.
    pub pins: u64,
    /// Pins that reported a loss.
    pub purged_pins: u64,
    /// Squeezes the hog completed.
    pub squeezes: u64,
    /// Times the hog was OOM-killed (and respawned).
    pub hog_kills: u64,
    /// Seconds of the run.
    pub seconds: f64,
}

/// The report; its JSON is the contract of `ebb bench volatile --json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// ebb 4k cycle / floor 4k cycle.
    pub ratio_to_floor_4k: f64,
    /// ebb THP cycle / floor THP cycle.
    pub ratio_to_floor_thp: f64,
    /// ebb 4k cycle / cookie 4k cycle.
    pub ratio_to_cookie_4k: f64,
    /// ebb 4k unpin / cookie 4k unpin.
    pub unpin_ratio_to_cookie_4k: f64,
    /// ebb 4k cycle / DONTNEED + regenerate cycle.
    pub ratio_to_dontneed_4k: f64,
    /// The measured costs.
    pub cycle: CycleCosts,
    /// The torture run.
    pub torture: Torture,
    /// Whether the run was `--quick`.
    pub quick: bool,
}

impl Report {
    /// A human-readable table.
    pub fn render(&self) -> String {
        let c = &self.cycle;
        let t = &self.torture;
        let mut s = String::new();
        s.push_str(&format!(
            "pin+unpin cycle, ns per 4 KiB page ({} MiB regions, median of {} rounds)\n",
            c.region_bytes >> 20,
            c.rounds
        ));
        s.push_str(&format!("  {:<28} {:>9}\n", "scheme", "ns/page"));
        for (name, v) in [
            ("ebb, 4 KiB units", c.ebb_4k_ns),
            ("floor, 4 KiB", c.floor_4k_ns),
            ("cookie (Chromium), 4 KiB", c.cookie_4k_ns),
            ("DONTNEED + regenerate", c.dontneed_4k_ns),
            ("ebb, THP units", c.ebb_thp_ns),
            ("floor, THP", c.floor_thp_ns),
            ("ebb unpin only, 4 KiB", c.ebb_unpin_4k_ns),
            ("cookie unpin only, 4 KiB", c.cookie_unpin_4k_ns),
            ("ebb unpin only, THP", c.ebb_unpin_thp_ns),
            ("floor MADV_FREE only, THP", c.floor_free_thp_ns),
        ] {
            s.push_str(&format!("  {name:<28} {v:>9.2}\n"));
        }
        s.push_str(&format!(
            "  THP-backed 2 MiB units: ebb {} floor {} of {}\n",
            c.thp_units_ebb,
            c.thp_units_floor,
            c.region_bytes >> 21
        ));
        s.push_str(&format!(
            "ratios: to floor 4k {:.3} (target <= 1.2), to floor THP {:.3} (target <= 1.2), to cookie {:.3}, unpin to cookie {:.3} (target < 1), to DONTNEED {:.3}\n",
            self.ratio_to_floor_4k,
            self.ratio_to_floor_thp,
            self.ratio_to_cookie_4k,
            self.unpin_ratio_to_cookie_4k,
            self.ratio_to_dontneed_4k
        ));
        s.push_str(&format!(
            "torture ({:.1} s): {} page pins ({} THP), {} pages lost ({} THP), {} corruptions; {} pins, {} purged; {} squeezes, {} hog kills\n",
            t.seconds, t.page_pins, t.page_pins_thp, t.pages_lost, t.pages_lost_thp, t.corruptions, t.pins, t.purged_pins, t.squeezes, t.hog_kills
        ));
        s
    }
}

/// Runs the benchmark.
pub fn run(opts: &Options) -> Result<Report, Error> {
    let cycle = cycle_costs(opts)?;
    let torture = if opts.torture {
        torture(opts)?
    } else {
        Torture::default()
    };
    Ok(Report {
        ratio_to_floor_4k: cycle.ebb_4k_ns / cycle.floor_4k_ns,
        ratio_to_floor_thp: cycle.ebb_thp_ns / cycle.floor_thp_ns,
        ratio_to_cookie_4k: cycle.ebb_4k_ns / cycle.cookie_4k_ns,
        unpin_ratio_to_cookie_4k: cycle.ebb_unpin_4k_ns / cycle.cookie_unpin_4k_ns,
        ratio_to_dontneed_4k: cycle.ebb_4k_ns / cycle.dontneed_4k_ns,
        cycle,
        torture,
        quick: opts.quick,
    })
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Fills a page with the data of (seed, page): random words, some leading zero words so the
/// sentinel is not always at offset 0.
fn fill_page(page: &mut [u8], seed: u64, index: usize) {
    let base = splitmix(seed ^ splitmix(index as u64));
    let zeros = (base % 4) as usize * 8;
    for (k, w) in page.chunks_mut(8).enumerate() {
        let v = if k < zeros {
            0
        } else {
            splitmix(base ^ k as u64) | 1
        };
        w.copy_from_slice(&v.to_le_bytes()[..w.len()]);
    }
}

fn page_hash(page: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for w in page.chunks_exact(8) {
        h = (h ^ u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
            .wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn word(ptr: *mut u8, offset: usize) -> &'static AtomicU64 {
    // SAFETY: callers pass an 8-byte-aligned offset inside a mapping they own exclusively
    // and keep alive while the reference is used (the benchmark loops below); all accesses to
    // the word during that time are atomic.
    unsafe { AtomicU64::from_ptr(ptr.add(offset).cast::<u64>()) }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The scheme at position `k` of round `round` in a Williams design for `n` (even) schemes:
/// over `n` rounds every scheme takes every position once and directly follows every other
/// scheme once, so what one scheme leaves behind (caches, TLB, the kernel's per-CPU page
/// lists: DONTNEED + regenerate churns all of them) weighs on every scheme alike. A plain
/// rotation keeps each scheme's predecessor fixed and biases the comparison.
fn williams_order(n: usize, round: usize, k: usize) -> usize {
    // First row 0, 1, n-1, 2, n-2, ...; row r adds r (mod n).
    let first = if k == 0 {
        0
    } else if k % 2 == 1 {
        k.div_ceil(2)
    } else {
        n - k / 2
    };
    (first + round) % n
}

fn cycle_costs(opts: &Options) -> Result<CycleCosts, Error> {
    let bytes = opts.cycle_bytes.max(4 << 20) & !((2 << 20) - 1);
    let pages = bytes / PAGE;
    let hpage = ebb::sys::huge_page_size();
    // Whole Williams squares: see `williams_order`.
    let (rounds, cycles) = if opts.quick { (6, 4) } else { (18, 8) };

    let fill = |mem: &mut [u8], seed: u64| {
        for (i, p) in mem.chunks_mut(PAGE).enumerate() {
            fill_page(p, seed, i);
        }
    };
    let vol = |huge| -> Result<VolatileRegion, Error> {
        let mut r = VolatileRegion::with_options(bytes, &VolatileOptions { huge, name: None })?;
        fill(&mut r.pin().unwrap_or_else(|p| p.into_pinned()), 1);
        Ok(r)
    };
    let mut ebb4 = vol(HugeMode::Never)?;
    let mut ebbh = vol(HugeMode::Huge)?;
    let plain = |huge: bool| -> Result<Region, Error> {
        let mut r = Region::with_options(
            bytes,
            &RegionOptions {
                huge,
                ..RegionOptions::default()
            },
        )?;
        if !huge {
            r.advise(.., Advice::NoHugePage)?;
        }
        fill(r.as_mut_slice(), 1);
        Ok(r)
    };
    let mut floor4 = plain(false)?;
    let mut floorh = plain(true)?;
    let mut cookie = plain(false)?;
    let mut dontneed = plain(false)?;
    let floor4_words: Vec<u64> = (0..pages)
        .map(|i| word(floor4.as_ptr(), i * PAGE).load(Ordering::Relaxed))
        .collect();
    let floorh_words: Vec<u64> = (0..bytes / hpage)
        .map(|i| word(floorh.as_ptr(), i * hpage).load(Ordering::Relaxed))
        .collect();
    let mut saved = vec![0u64; pages];
    const COOKIE: u64 = 0xc00c_1e5a_fe0d_dba1;

    let (
        mut t_ebb4,
        mut t_ebbh,
        mut t_floor4,
        mut t_floorh,
        mut t_cookie,
        mut t_dn,
        mut t_ebb_unpin,
        mut t_cookie_unpin,
    ) = (
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
        vec![],
    );
    let (mut t_ebbh_unpin, mut t_floorh_free) = (vec![], vec![]);
    let per_page = |d: Duration| d.as_nanos() as f64 / (cycles * pages) as f64;
    for round in 0..rounds {
        // Each scheme takes every position, and follows every other scheme, equally often.
        for k in 0..6 {
            match williams_order(6, round, k) {
                0 => {
                    // ebb, 4 KiB units (and its unpin alone).
                    let mut unpin = Duration::ZERO;
                    let t = Instant::now();
                    for _ in 0..cycles {
                        let g = ebb4.pin().unwrap_or_else(|p| p.into_pinned());
                        let u = Instant::now();
                        drop(g);
                        unpin += u.elapsed();
                    }
                    t_ebb4.push(per_page(t.elapsed()));
                    t_ebb_unpin.push(per_page(unpin));
                }
                1 => {
                    // Floor, 4 KiB.
                    let t = Instant::now();
                    for _ in 0..cycles {
                        floor4.advise_mut(.., Advice::Free)?;
                        for (i, w) in floor4_words.iter().enumerate() {
                            let _ = std::hint::black_box(
                                word(floor4.as_ptr(), i * PAGE).compare_exchange(
                                    *w,
                                    *w,
                                    Ordering::Relaxed,
                                    Ordering::Relaxed,
                                ),
                            );
                        }
                    }
                    t_floor4.push(per_page(t.elapsed()));
                }
                2 => {
                    // Cookie (Chromium).
                    let mut unpin = Duration::ZERO;
                    let t = Instant::now();
                    for _ in 0..cycles {
                        let u = Instant::now();
                        for (i, s) in saved.iter_mut().enumerate() {
                            *s = word(cookie.as_ptr(), i * PAGE).swap(COOKIE, Ordering::Relaxed);
                        }
                        cookie.advise_mut(.., Advice::Free)?;
                        unpin += u.elapsed();
                        for (i, s) in saved.iter().enumerate() {
                            let w = word(cookie.as_ptr(), i * PAGE);
                            if w.compare_exchange(COOKIE, *s, Ordering::Relaxed, Ordering::Relaxed)
                                .is_err()
                            {
                                // Discarded: a real user would regenerate; never happens without pressure.
                                std::hint::black_box(i);
                            }
                        }
                    }
                    t_cookie.push(per_page(t.elapsed()));
                    t_cookie_unpin.push(per_page(unpin));
                }
                3 => {
                    // DONTNEED + regenerate.
                    let t = Instant::now();
                    for _ in 0..cycles {
                        dontneed.advise_mut(.., Advice::DontNeed)?;
                        fill(dontneed.as_mut_slice(), 1);
                    }
                    t_dn.push(per_page(t.elapsed()));
                }
                4 => {
                    // ebb, THP units (and its unpin alone).
                    let mut unpin = Duration::ZERO;
                    let t = Instant::now();
                    for _ in 0..cycles {
                        let g = ebbh.pin().unwrap_or_else(|p| p.into_pinned());
                        let u = Instant::now();
                        drop(g);
                        unpin += u.elapsed();
                    }
                    t_ebbh.push(per_page(t.elapsed()));
                    t_ebbh_unpin.push(per_page(unpin));
                }
                5 => {
                    // Floor, THP: one exchange per 2 MiB page.
                    let mut free = Duration::ZERO;
                    let t = Instant::now();
                    for _ in 0..cycles {
                        let u = Instant::now();
                        floorh.advise_mut(.., Advice::Free)?;
                        free += u.elapsed();
                        for (i, w) in floorh_words.iter().enumerate() {
                            let _ = std::hint::black_box(
                                word(floorh.as_ptr(), i * hpage).compare_exchange(
                                    *w,
                                    *w,
                                    Ordering::Relaxed,
                                    Ordering::Relaxed,
                                ),
                            );
                        }
                    }
                    t_floorh.push(per_page(t.elapsed()));
                    t_floorh_free.push(per_page(free));
                }
                _ => unreachable!(),
            }
        }
    }
    let thp_units_ebb = ebbh.huge_units();
    let thp_bytes_floor = floorh.stats().map(|s| s.anon_huge_pages).unwrap_or(0);
    let _ = &mut cookie;
    Ok(CycleCosts {
        ebb_4k_ns: median(&mut t_ebb4),
        floor_4k_ns: median(&mut t_floor4),
        cookie_4k_ns: median(&mut t_cookie),
        dontneed_4k_ns: median(&mut t_dn),
        ebb_thp_ns: median(&mut t_ebbh),
        floor_thp_ns: median(&mut t_floorh),
        ebb_unpin_4k_ns: median(&mut t_ebb_unpin),
        cookie_unpin_4k_ns: median(&mut t_cookie_unpin),
        ebb_unpin_thp_ns: median(&mut t_ebbh_unpin),
        floor_free_thp_ns: median(&mut t_floorh_free),
        region_bytes: bytes,
        rounds,
        thp_units_ebb,
        thp_units_floor: (thp_bytes_floor / hpage as u64) as usize,
    })
}

/// This process inside a sandbox; moved back to its own group on drop, before the sandbox
/// is removed.
struct Inside {
    home: ebb::cgroup::MemoryCgroup,
    sandbox: Option<Sandbox>,
}

impl Inside {
    fn enter(limit: u64) -> Result<Inside, Error> {
        let pid = std::process::id();
        let home = ebb::cgroup::own_memory_cgroup(pid)?.ok_or(Error::NoHome)?;
        let sandbox = Sandbox::new(SandboxConfig {
            name_hint: "bench-volatile".into(),
            memory_limit: Some(limit),
            swap_limit: Some(0),
        })?;
        sandbox.add(pid)?;
        Ok(Inside {
            home,
            sandbox: Some(sandbox),
        })
    }

    fn sandbox(&self) -> &Sandbox {
        self.sandbox.as_ref().expect("present until drop")
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let _ = self.home.add_process(std::process::id());
        drop(self.sandbox.take());
    }
}

struct Shared {
    page_pins: AtomicU64,
    pages_lost: AtomicU64,
    corruptions: AtomicU64,
    pins: AtomicU64,
    purged_pins: AtomicU64,
    stop: AtomicBool,
}

/// One torture thread: `regions` regions of `bytes`, pinned in random order until `stop`.
fn torture_thread(
    seed: u64,
    regions: usize,
    bytes: usize,
    huge: HugeMode,
    sh: &Shared,
) -> Result<(), Error> {
    let mut rs = Vec::new();
    let mut sums = Vec::new();
    for r in 0..regions {
        let mut region =
            VolatileRegion::with_options(bytes, &VolatileOptions { huge, name: None })?;
        let s = seed.wrapping_mul(1000) + r as u64;
        let mut g = region.pin().unwrap_or_else(|p| p.into_pinned());
        let mut h = Vec::with_capacity(bytes / PAGE);
        for (i, p) in g.chunks_mut(PAGE).enumerate() {
            fill_page(p, s, i);
            h.push(page_hash(p));
        }
        drop(g);
        rs.push((region, s));
        sums.push(h);
    }
    let zero = page_hash(&[0u8; PAGE]);
    let mut x = seed | 1;
    while !sh.stop.load(Ordering::Relaxed) {
        x = splitmix(x);
        let k = (x % regions as u64) as usize;
        let (region, s) = &mut rs[k];
        let s = *s;
        let h = &sums[k];
        let (mut lost_pages, mut bad) = (0u64, 0u64);
        match region.pin() {
            Ok(g) => {
                for (i, p) in g.chunks(PAGE).enumerate() {
                    bad += u64::from(page_hash(p) != h[i]);
                }
            }
            Err(mut purged) => {
                let lost = purged.lost().to_vec();
                let g = purged.pinned();
                for (i, p) in g.chunks_mut(PAGE).enumerate() {
                    let at = i * PAGE;
                    if lost.iter().any(|r| r.contains(&at)) {
                        lost_pages += 1;
                        bad += u64::from(page_hash(p) != zero);
                        fill_page(p, s, i);
                    } else {
                        bad += u64::from(page_hash(p) != h[i]);
                    }
                }
                sh.purged_pins.fetch_add(1, Ordering::Relaxed);
            }
        }
        sh.pins.fetch_add(1, Ordering::Relaxed);
        sh.page_pins
            .fetch_add((bytes / PAGE) as u64, Ordering::Relaxed);
        sh.pages_lost.fetch_add(lost_pages, Ordering::Relaxed);
        sh.corruptions.fetch_add(bad, Ordering::Relaxed);
    }
    Ok(())
}

fn spawn_hog(sandbox: &Sandbox) -> Result<Hog, Error> {
    let hog = Hog::spawn_command(Command::new(Hog::program()?), Some(sandbox))?;
    // Make the hog the OOM killer's choice over the benchmark itself.
    let _ = std::fs::write(format!("/proc/{}/oom_score_adj", hog.pid()), "1000");
    Ok(hog)
}

fn torture(opts: &Options) -> Result<Torture, Error> {
    let limit: u64 = 192 << 20;
    let regions = 8;
    let bytes = 4 << 20;
    let threads = opts.threads.max(1);
    let target_per_mode: u64 = if opts.quick { 600_000 } else { 5_500_000 };
    let inside = Inside::enter(limit)?;
    let mut out = Torture::default();
    let start = Instant::now();
    for huge in [HugeMode::Huge, HugeMode::Never] {
        let sh = Shared {
            page_pins: AtomicU64::new(0),
            pages_lost: AtomicU64::new(0),
            corruptions: AtomicU64::new(0),
            pins: AtomicU64::new(0),
            purged_pins: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        };
        let squeeze = limit - (48 << 20);
        let result: Result<(), Error> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let sh = &sh;
                    s.spawn(move || {
                        let r = torture_thread(t as u64 + 1, regions, bytes, huge, sh);
                        sh.stop.store(true, Ordering::Relaxed);
                        r
                    })
                })
                .collect();
            let mut hog = spawn_hog(inside.sandbox());
            let deadline = Instant::now() + Duration::from_secs(if opts.quick { 60 } else { 400 });
            while sh.page_pins.load(Ordering::Relaxed) < target_per_mode
                && !sh.stop.load(Ordering::Relaxed)
                && Instant::now() < deadline
            {
                let h = match &mut hog {
                    Ok(h) => h,
                    Err(_) => break,
                };
                match h.fill(squeeze).and_then(|_| h.free()) {
                    Ok(()) => out.squeezes += 1,
                    Err(_) => {
                        out.hog_kills += 1;
                        hog = spawn_hog(inside.sandbox());
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            sh.stop.store(true, Ordering::Relaxed);
            for w in workers {
                w.join().expect("torture thread panicked")?;
            }
            // A hog that could not be (re)started means no squeeze: say so rather than
            // report a torture run without pressure.
            hog.map(drop)
        });
        result?;
        let pp = sh.page_pins.load(Ordering::Relaxed);
        let pl = sh.pages_lost.load(Ordering::Relaxed);
        out.page_pins += pp;
        out.pages_lost += pl;
        if huge == HugeMode::Huge {
            out.page_pins_thp = pp;
            out.pages_lost_thp = pl;
        }
        out.corruptions += sh.corruptions.load(Ordering::Relaxed);
        out.pins += sh.pins.load(Ordering::Relaxed);
        out.purged_pins += sh.purged_pins.load(Ordering::Relaxed);
    }
    out.seconds = start.elapsed().as_secs_f64();
    drop(inside);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn williams_order_balances_positions_and_predecessors() {
        let n = 6;
        let mut pos = vec![vec![0; n]; n];
        let mut after = vec![vec![0; n]; n];
        for r in 0..n {
            let row: Vec<usize> = (0..n).map(|k| williams_order(n, r, k)).collect();
            for (k, &x) in row.iter().enumerate() {
                pos[x][k] += 1;
            }
            for w in row.windows(2) {
                after[w[1]][w[0]] += 1;
            }
        }
        assert!(pos.iter().flatten().all(|c| *c == 1), "{pos:?}");
        for (x, row) in after.iter().enumerate() {
            for (y, c) in row.iter().enumerate() {
                assert_eq!(*c, usize::from(x != y), "{after:?}");
            }
        }
    }

    /// The `--quick` torture run as a test: at least a million page pins under a real
    /// squeeze, no corruption, and the squeeze must really have discarded pages.
    #[test]
    fn quick_torture_has_no_corruption() {
        let t = torture(&Options {
            quick: true,
            ..Options::default()
        })
        .unwrap();
        eprintln!("{t:?}");
        assert!(t.page_pins >= 1_000_000, "{t:?}");
        assert_eq!(t.corruptions, 0, "{t:?}");
        assert!(t.pages_lost > 0, "{t:?}");
    }
}
