//! Volatile memory against the real kernel: a model of pin/unpin (proptest), real discards
//! under a squeezed memory cgroup (root and cgroup v1 memory; runs, not skips, on the lab
//! machine), never-purge fallback on an mlocked range, and shared pins.

use std::ops::Range;

use ebb::volatile::{self, HugeMode, SharedVolatile, VolatileOptions, VolatileRegion};
use proptest::prelude::*;

const PAGE: usize = 4096;

fn opts(huge: HugeMode) -> VolatileOptions {
    VolatileOptions { huge, name: None }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn hash(bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(0x1234, |h, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        splitmix(h ^ u64::from_le_bytes(w))
    })
}

#[derive(Debug, Clone)]
enum Op {
    /// While pinned: write `len` bytes of `val` at `at`.
    Write { at: usize, len: usize, val: u8 },
    /// Unpin, discard these pages (as reclaim would), pin again.
    Cycle { discard: Vec<usize> },
}

fn ops(len: usize) -> impl Strategy<Value = Vec<Op>> {
    let pages = len.div_ceil(PAGE);
    let op = prop_oneof![
        3 => (0..len, 1..300usize, any::<u8>()).prop_map(move |(at, n, val)| Op::Write { at, len: n.min(len - at), val }),
        1 => proptest::collection::vec(0..pages, 0..4).prop_map(|discard| Op::Cycle { discard }),
    ];
    proptest::collection::vec(op, 1..40)
}

/// Runs `ops` on a region and on a byte-vector model; checks the region against the model
/// after every pin. In 4 KiB mode the lost ranges must be exactly the discarded pages that
/// held data; with huge units, lost ranges must cover every discarded page that held data,
/// read as zero, and stay inside units that saw a discard.
fn run_model(len: usize, huge: HugeMode, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut region = VolatileRegion::with_options(len, &opts(huge)).unwrap();
    let unit = region.purge_unit();
    let mut model = vec![0u8; len];
    let mut pinned = region.pin().unwrap();
    for op in ops {
        match op {
            Op::Write { at, len, val } => {
                pinned[*at..at + len].fill(*val);
                model[*at..at + len].fill(*val);
            }
            Op::Cycle { discard } => {
                drop(pinned);
                for &p in discard {
                    region.discard(p * PAGE..(p + 1) * PAGE);
                }
                let mut must_lose: Vec<Range<usize>> = Vec::new();
                for &p in discard {
                    let r = p * PAGE..((p + 1) * PAGE).min(len);
                    if model[r.clone()].iter().any(|b| *b != 0) {
                        must_lose.push(r);
                    }
                }
                let lost: Vec<Range<usize>> = match region.pin() {
                    Ok(p) => {
                        pinned = p;
                        Vec::new()
                    }
                    Err(purged) => {
                        let l = purged.lost().to_vec();
                        pinned = purged.into_pinned();
                        l
                    }
                };
                for r in &must_lose {
                    prop_assert!(
                        lost.iter().any(|l| l.start <= r.start && r.end <= l.end),
                        "page {r:?} lost but not reported ({lost:?})"
                    );
                }
                if unit == PAGE {
                    let mut pages: Vec<usize> = lost
                        .iter()
                        .flat_map(|l| (l.start / PAGE)..l.end.div_ceil(PAGE))
                        .collect();
                    let mut want: Vec<usize> = must_lose.iter().map(|r| r.start / PAGE).collect();
                    pages.sort_unstable();
                    want.sort_unstable();
                    want.dedup();
                    prop_assert_eq!(pages, want);
                } else {
                    for l in &lost {
                        let u = l.start / unit;
                        prop_assert!(
                            discard.iter().any(|p| p * PAGE / unit == u),
                            "unit {u} lost without a discard"
                        );
                    }
                }
                for l in &lost {
                    model[l.clone()].fill(0);
                }
                prop_assert!(
                    pinned[..] == model[..],
                    "region differs from the model after pin"
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn pin_unpin_matches_model_4k(ops in ops(6 * PAGE - 100)) {
        run_model(6 * PAGE - 100, HugeMode::Never, &ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    #[test]
    fn pin_unpin_matches_model_huge(ops in ops((2 * 512 + 3) * PAGE)) {
        run_model((2 * 512 + 3) * PAGE, HugeMode::Huge, &ops)?;
    }
}

#[test]
fn purged_report_says_exactly_which_pages() {
    let mut r = VolatileRegion::with_options(8 * PAGE, &opts(HugeMode::Never)).unwrap();
    {
        let mut p = r.pin().unwrap();
        for (i, b) in p.iter_mut().enumerate() {
            *b = (i / PAGE) as u8 + 1;
        }
        p[3 * PAGE..4 * PAGE].fill(0); // an all-zero page: losing it changes nothing
    }
    r.discard(PAGE..2 * PAGE);
    r.discard(3 * PAGE..5 * PAGE);
    let mut purged = r.pin().unwrap_err();
    assert_eq!(purged.lost(), &[PAGE..2 * PAGE, 4 * PAGE..5 * PAGE]);
    assert_eq!(purged.lost_pages(), 2);
    assert!(purged.is_lost(PAGE + 5) && !purged.is_lost(0));
    let p = purged.pinned();
    assert!(p[PAGE..2 * PAGE].iter().all(|b| *b == 0));
    assert!(p[2 * PAGE..3 * PAGE].iter().all(|b| *b == 3));
    drop(purged);
    // The next cycle is clean again.
    assert!(r.pin().is_ok());
    let s = r.stats();
    assert_eq!((s.pins, s.purged_pins, s.pages_lost), (3, 1, 2));
}

#[test]
fn mlocked_region_falls_back_to_never_purge() {
    let mut r = VolatileRegion::with_options(4 * PAGE, &opts(HugeMode::Never)).unwrap();
    assert!(r.is_purgeable());
    let (addr, len) = {
        let mut p = r.pin().unwrap();
        p.fill(9);
        (p.as_ptr() as usize, p.len())
    };
    // SAFETY: mlock only sets VM_LOCKED on a range of our own mapping; no memory changes.
    let rc = unsafe { libc::mlock(addr as *const libc::c_void, len) };
    assert_eq!(rc, 0, "mlock: {}", std::io::Error::last_os_error());
    {
        let p = r.pin().unwrap();
        assert!(p.iter().all(|b| *b == 9));
    }
    // MADV_FREE on a VM_LOCKED range is EINVAL: the region switched to never-purge mode.
    assert!(!r.is_purgeable());
    for _ in 0..3 {
        let p = r.pin().expect("never-purge regions always pin intact");
        assert!(p.iter().all(|b| *b == 9));
    }
    // SAFETY: undoes the mlock above on the same range.
    unsafe { libc::munlock(addr as *const libc::c_void, len) };
}

#[test]
fn shared_pins_agree_on_the_report() {
    let mut r = VolatileRegion::with_options(4 * PAGE, &opts(HugeMode::Never)).unwrap();
    r.pin().unwrap().fill(1);
    r.discard(2 * PAGE..3 * PAGE);
    let shared = SharedVolatile::new(r);
    let first = shared.pin().unwrap_err();
    assert_eq!(first.lost().to_vec(), vec![(2 * PAGE..3 * PAGE)]);
    std::thread::scope(|s| {
        s.spawn(|| {
            let again = shared.pin().unwrap_err();
            assert_eq!(again.lost().to_vec(), vec![(2 * PAGE..3 * PAGE)]);
            assert_eq!(shared.pin_count(), 2);
        });
    });
    drop(first);
    assert_eq!(shared.pin_count(), 0);
    let p = shared.pin().unwrap();
    assert_eq!(p[0], 1);
    assert_eq!(p[2 * PAGE], 0);
}

/// Moves this test process into a fresh sandbox, back to its own group on drop (before the
/// sandbox is removed). nextest runs each test in its own process, so nothing else moves.
struct Inside {
    home: ebb::cgroup::MemoryCgroup,
    sandbox: Option<ebb_lab::Sandbox>,
}

impl Inside {
    fn new(limit: u64) -> Inside {
        let pid = std::process::id();
        let home = ebb::cgroup::own_memory_cgroup(pid)
            .unwrap()
            .expect("this test needs a memory cgroup (root)");
        let sandbox = ebb_lab::Sandbox::new(ebb_lab::SandboxConfig {
            name_hint: "volatile-test".into(),
            memory_limit: Some(limit),
            swap_limit: Some(0),
        })
        .expect("creating a memory cgroup (needs root and the memory controller)");
        sandbox.add(pid).unwrap();
        Inside {
            home,
            sandbox: Some(sandbox),
        }
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let _ = self.home.add_process(std::process::id());
        drop(self.sandbox.take());
    }
}

/// Fills a region with per-page random data (every 7th page all zero, every 5th page zero
/// in its first half), unpins it, squeezes the sandbox with a hog until pages are really
/// discarded, and checks the report: lost pages read zero, all others are byte-identical.
fn real_discard(huge: HugeMode) {
    let inside = Inside::new(64 << 20);
    let len = 40 << 20;
    let mut region = VolatileRegion::with_options(len, &opts(huge)).unwrap();
    let mut hashes = Vec::new();
    {
        let mut p = region.pin().unwrap();
        for (i, page) in p.chunks_mut(PAGE).enumerate() {
            if i % 7 != 0 {
                for (k, w) in page.chunks_mut(8).enumerate() {
                    w.copy_from_slice(&splitmix((i * 512 + k) as u64).to_le_bytes());
                }
                if i % 5 == 0 {
                    page[..PAGE / 2].fill(0);
                }
            }
            hashes.push(hash(page));
        }
    }
    let mut hog = ebb_lab::Hog::spawn(inside.sandbox.as_ref()).unwrap();
    // 40 MiB volatile + 40 MiB hog cannot fit in 64 MiB without discarding.
    hog.fill(40 << 20)
        .expect("the hog should fit once lazily freed pages are discarded");
    drop(hog);
    let zero_hash = hash(&[0u8; PAGE]);
    let (lost, pinned_ok) = match region.pin() {
        Ok(p) => (Vec::new(), verify(&p, &hashes, &[], zero_hash)),
        Err(mut purged) => {
            let lost = purged.lost().to_vec();
            let ok = verify(purged.pinned(), &hashes, &lost, zero_hash);
            (lost, ok)
        }
    };
    assert!(pinned_ok);
    let lost_pages: usize = lost.iter().map(|r| r.len() / PAGE).sum();
    eprintln!("{huge:?}: {lost_pages} of {} pages lost", len / PAGE);
    assert!(
        lost_pages > 0,
        "the squeeze discarded nothing: the test proves nothing"
    );
    drop(inside);
}

fn verify(mem: &[u8], hashes: &[u64], lost: &[Range<usize>], zero_hash: u64) -> bool {
    for (i, page) in mem.chunks(PAGE).enumerate() {
        let at = i * PAGE;
        let h = hash(page);
        if lost.iter().any(|r| r.contains(&at)) {
            assert_eq!(h, zero_hash, "page {i} reported lost but not zero");
        } else {
            assert_eq!(h, hashes[i], "page {i} reported intact but differs");
        }
    }
    true
}

#[test]
fn real_discard_4k_reports_exactly_the_lost_pages() {
    real_discard(HugeMode::Never);
}

#[test]
fn real_discard_huge_reports_exactly_the_lost_units() {
    real_discard(HugeMode::Huge);
}

#[test]
fn process_counters_move() {
    let before = volatile::process_stats();
    let mut r = VolatileRegion::new(PAGE).unwrap();
    drop(r.pin());
    let after = volatile::process_stats();
    assert!(after.pins > before.pins);
}
