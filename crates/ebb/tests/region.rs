//! Regions and advice on the real kernel: the THP facts of LAB.md as executable documentation.

use ebb::procfs::vmstat;
use ebb::{Advice, Capabilities, Region, RegionOptions};

const MIB: usize = 1 << 20;

fn huge_region(len: usize) -> Region {
    let mut r = Region::with_options(
        len,
        &RegionOptions {
            huge: true,
            name: Some("ebb-test".into()),
            populate: false,
        },
    )
    .expect("mapping a huge region");
    // Touch every page: each aligned 2 MiB faults in as one huge page.
    for (i, b) in r.as_mut_slice().iter_mut().enumerate().step_by(4096) {
        *b = (i / 4096) as u8 | 1;
    }
    r
}

/// Pages that may sit in per-CPU lazyfree batches: 14 per CPU.
fn lazyfree_slack() -> u64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    14 * 4096 * cpus
}

fn thp_enabled() -> bool {
    let caps = Capabilities::detect();
    matches!(caps.thp.enabled.as_deref(), Some("always" | "madvise"))
}

#[test]
fn dontneed_zeroes_at_once() {
    let mut r = Region::new(8 * 4096).unwrap();
    r.as_mut_slice().fill(0x5a);
    r.advise_mut(4096..3 * 4096, Advice::DontNeed).unwrap();
    // Before any read: reading maps the shared zero page, which mincore counts as resident.
    assert_eq!(r.residency(..).unwrap().resident_pages(), 6);
    let s = r.as_slice();
    assert!(s[..4096].iter().all(|b| *b == 0x5a));
    assert!(s[4096..3 * 4096].iter().all(|b| *b == 0));
    assert!(s[3 * 4096..].iter().all(|b| *b == 0x5a));
}

#[test]
fn free_keeps_contents_without_pressure_and_counts_as_lazyfree() {
    let mut r = Region::with_options(
        16 * MIB,
        &RegionOptions {
            huge: false,
            ..Default::default()
        },
    )
    .unwrap();
    r.advise(.., Advice::NoHugePage).unwrap();
    r.as_mut_slice().fill(0xc3);
    let before = vmstat::read().unwrap();
    r.advise_mut(.., Advice::Free).unwrap();
    let stats = r.stats().unwrap();
    // MADV_FREE memory still counts in RSS: that is what LazyFree is for. Folios reach the
    // lazyfree LRU through a per-CPU batch of 15 (mm/swap.c, `cpu_fbatches.lru_lazyfree`), so
    // up to 14 pages per CPU may not show as LazyFree yet.
    let slack = lazyfree_slack();
    assert!(
        stats.lazy_free <= 16 * MIB as u64 && stats.lazy_free + slack >= 16 * MIB as u64,
        "{stats:?}"
    );
    assert!(stats.rss >= 16 * MIB as u64, "{stats:?}");
    let after = vmstat::read().unwrap();
    assert!(after.pglazyfree + slack / 4096 >= before.pglazyfree + (16 * MIB / 4096) as u64);
    // No pressure on a 24 GiB machine: the kernel has no reason to discard.
    assert!(r.as_slice().iter().all(|b| *b == 0xc3));
    // A write takes a page back: it no longer counts as lazily freed.
    let lazy = r.stats().unwrap().lazy_free;
    r.as_mut_slice()[8 * MIB] = 1;
    assert!(r.stats().unwrap().lazy_free < lazy);
}

#[test]
fn thp_whole_hugepage_free_keeps_the_huge_page() {
    assert!(
        thp_enabled(),
        "THP must be enabled (madvise or always) on this machine"
    );
    let mut r = huge_region(4 * MIB);
    let s0 = r.stats().unwrap();
    assert_eq!(
        s0.anon_huge_pages,
        4 * MIB as u64,
        "both 2 MiB pages huge: {s0:?}"
    );
    let splits0 = vmstat::read().unwrap().thp_split_pmd;
    r.advise_mut(..2 * MIB, Advice::Free).unwrap();
    let s1 = r.stats().unwrap();
    assert_eq!(s1.anon_huge_pages, 4 * MIB as u64, "no split: {s1:?}");
    assert_eq!(s1.lazy_free, 2 * MIB as u64, "{s1:?}");
    // One write into the lazily freed huge page takes the whole 2 MiB back, without a fault.
    r.as_mut_slice()[4096] = 7;
    let s2 = r.stats().unwrap();
    assert_eq!(s2.lazy_free, 0, "{s2:?}");
    assert_eq!(s2.anon_huge_pages, 4 * MIB as u64);
    // Other processes may split huge pages meanwhile, so only check that the counter is
    // readable and monotonic here; the split itself is asserted through AnonHugePages.
    assert!(vmstat::read().unwrap().thp_split_pmd >= splits0);
}

#[test]
fn thp_partial_free_splits_and_collapse_reforms() {
    assert!(
        thp_enabled(),
        "THP must be enabled (madvise or always) on this machine"
    );
    let caps = Capabilities::detect();
    let mut r = huge_region(4 * MIB);
    assert_eq!(r.stats().unwrap().anon_huge_pages, 4 * MIB as u64);
    // One 4 KiB page freed inside the second huge page splits it.
    r.advise_mut(2 * MIB + 4096..2 * MIB + 8192, Advice::Free)
        .unwrap();
    let split = r.stats().unwrap();
    assert_eq!(
        split.anon_huge_pages,
        2 * MIB as u64,
        "the second huge page is split: {split:?}"
    );
    assert!(
        r.as_slice()[2 * MIB] != 0,
        "the rest of the split page keeps its data"
    );
    // MADV_COLLAPSE (6.1+) re-forms it.
    if !caps.supports(Advice::Collapse) {
        panic!("MADV_COLLAPSE is not supported by kernel {}", caps.kernel);
    }
    r.as_mut_slice()[2 * MIB + 4096] = 1;
    r.advise(2 * MIB..4 * MIB, Advice::Collapse).unwrap();
    let collapsed = r.stats().unwrap();
    assert_eq!(collapsed.anon_huge_pages, 4 * MIB as u64, "{collapsed:?}");
    assert_eq!(r.as_slice()[2 * MIB + 4096], 1);
}

#[test]
fn cold_and_pageout_keep_contents() {
    let mut r = Region::new(4 * MIB).unwrap();
    for (i, b) in r.as_mut_slice().iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    r.advise(.., Advice::Cold).unwrap();
    r.advise(.., Advice::PageOut).unwrap();
    assert!(
        r.as_slice()
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8)
    );
}

#[test]
fn populate_fills_residency() {
    let r = Region::with_options(
        64 * 4096,
        &RegionOptions {
            populate: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.residency(..).unwrap().resident_pages(), 64);
    let half = r.residency(..32 * 4096).unwrap();
    assert_eq!(half.pages(), 32);
}

#[test]
fn stats_find_the_region_by_address_even_without_vma_names() {
    let mut a = Region::new(MIB).unwrap();
    let b = Region::new(3 * MIB).unwrap();
    a.as_mut_slice().fill(1);
    let sa = a.stats().unwrap();
    let sb = b.stats().unwrap();
    assert_eq!(sa.rss, MIB as u64);
    assert_eq!(sb.rss, 0);
    assert!(sa.vmas >= 1);
}

/// Moves this test process into a sandbox and back out on drop (before the sandbox itself
/// is dropped, which would otherwise kill its members). nextest runs each test in its own
/// process, so only this test is moved.
struct Inside<'a> {
    home: ebb::cgroup::MemoryCgroup,
    _sandbox: &'a ebb_lab::Sandbox,
}

impl<'a> Inside<'a> {
    fn enter(sandbox: &'a ebb_lab::Sandbox) -> Inside<'a> {
        let home = ebb::cgroup::own_memory_cgroup(std::process::id())
            .unwrap()
            .expect("this process has a memory cgroup");
        sandbox.add(std::process::id()).unwrap();
        Inside {
            home,
            _sandbox: sandbox,
        }
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        let _ = self.home.add_process(std::process::id());
    }
}

#[test]
fn free_loses_contents_under_a_sandbox_limit() {
    let sandbox = ebb_lab::Sandbox::new(ebb_lab::SandboxConfig {
        name_hint: "lazyfree".into(),
        memory_limit: Some(64 * MIB as u64),
        swap_limit: None,
    })
    .expect("a sandbox (needs root and the memory controller)");
    let inside = Inside::enter(&sandbox);
    // Pages allocated from now on are charged to the sandbox.
    let mut freed = Region::new(48 * MIB).unwrap();
    freed.advise(.., Advice::NoHugePage).unwrap();
    for (i, page) in freed.as_mut_slice().chunks_mut(4096).enumerate() {
        page.fill((i % 255) as u8 + 1);
    }
    freed.advise_mut(.., Advice::Free).unwrap();
    // A newcomer needs 40 MiB of a 64 MiB budget: reclaim discards lazily freed pages
    // (clean and unreferenced: mm/rmap.c try_to_unmap_one) instead of OOM-killing us.
    let mut newcomer = Region::new(40 * MIB).unwrap();
    newcomer.as_mut_slice().fill(9);
    let mut lost = 0;
    for (i, page) in freed.as_slice().chunks(4096).enumerate() {
        let want = (i % 255) as u8 + 1;
        if page.iter().all(|b| *b == 0) {
            lost += 1;
        } else {
            assert!(
                page.iter().all(|b| *b == want),
                "page {i} is neither intact nor zero"
            );
        }
    }
    drop(inside);
    let pages = 48 * MIB / 4096;
    assert!(
        lost > 0,
        "no lazily freed page was discarded under the limit"
    );
    assert!(lost <= pages);
    assert!(newcomer.as_slice().iter().all(|b| *b == 9));
    eprintln!("{lost} of {pages} lazily freed pages were discarded under a 64 MiB limit");
}
