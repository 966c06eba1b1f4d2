//! Remote advice (process_madvise through a pidfd) on real child processes, in a Sandbox,
//! with real zram swap.

use std::time::Duration;

use ebb::process::{AdviseOptions, Error, MapSelection, select_ranges};
use ebb::{Advice, Process, Region};
use ebb_lab::{Hog, Sandbox, SandboxConfig, ZramSwap};

const MIB: u64 = 1 << 20;

fn sandbox(hint: &str, memory_limit: Option<u64>, swap_limit: Option<u64>) -> Sandbox {
    Sandbox::new(SandboxConfig {
        name_hint: hint.into(),
        memory_limit,
        swap_limit,
    })
    .expect("creating a sandbox (needs root and the memory controller)")
}

fn anon_ranges(p: &Process) -> Vec<std::ops::Range<u64>> {
    select_ranges(&p.maps().unwrap(), MapSelection::Anon)
}

#[test]
fn zram_pageout_moves_rss_to_swap_and_data_survives() {
    let _swap = ZramSwap::shared(1 << 30, "lz4").expect("zram swap");
    let sb = sandbox("pageout", Some(512 * MIB), Some(1024 * MIB));
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    hog.alloc(128 * MIB).unwrap();
    let p = Process::open(hog.pid()).unwrap();
    let report = p.advise(&anon_ranges(&p), Advice::PageOut).unwrap();
    assert!(report.skipped.is_empty(), "{report:?}");
    assert!(report.bytes_advised >= 128 * MIB, "{report:?}");
    let swapped = report.swap_gained().unwrap();
    let dropped = report.rss_dropped().unwrap();
    assert!(
        swapped >= 120 * MIB,
        "swap gained only {} MiB: {report:?}",
        swapped / MIB
    );
    assert!(
        dropped >= 120 * MIB,
        "RSS dropped only {} MiB: {report:?}",
        dropped / MIB
    );
    // Faulting it back in gives the same bytes.
    assert!(hog.verify().unwrap(), "data changed after pageout");
    assert!(p.rollup().unwrap().rss >= 128 * MIB);
}

/// Runs in the serial `zram` test group (its name says zram), so no ebb swap is up meanwhile.
#[test]
fn no_zram_pageout_without_swap_succeeds_but_reclaims_nothing() {
    // Only a machine without swap shows this: a v1 memsw limit does not stop MADV_PAGEOUT
    // (memsw counts memory plus swap, so moving a page to swap does not change it).
    let swaps = ebb::caps::read_swaps().unwrap();
    assert!(
        swaps.is_empty(),
        "this test needs a machine with no swap active, but found {swaps:?}"
    );
    let sb = sandbox("noswap", Some(512 * MIB), None);
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    hog.alloc(64 * MIB).unwrap();
    let p = Process::open(hog.pid()).unwrap();
    let report = p.advise(&anon_ranges(&p), Advice::PageOut).unwrap();
    // The kernel says it advised everything...
    assert!(report.bytes_advised >= 64 * MIB, "{report:?}");
    // ...and nothing moved.
    assert_eq!(report.swap_gained(), Some(0), "{report:?}");
    assert!(report.rss_dropped().unwrap() < 8 * MIB, "{report:?}");
    assert!(hog.verify().unwrap());
}

#[test]
fn zram_exit_during_pageout_is_process_gone() {
    let _swap = ZramSwap::shared(1 << 30, "lz4").expect("zram swap");
    let sb = sandbox("gone", None, None);
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    hog.alloc(512 * MIB).unwrap();
    let p = Process::open(hog.pid()).unwrap();
    let ranges = anon_ranges(&p);
    let pid = hog.pid();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        // SAFETY: plain kill(2) of our own child, which is alive until the hog is dropped
        // (the main thread holds it, unreaped, so the pid cannot be reused meanwhile).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    // Small batches make the advice span many calls, so the exit lands mid-operation.
    let ranges: Vec<_> = ranges
        .iter()
        .flat_map(|r| {
            (r.start..r.end)
                .step_by(MIB as usize)
                .map(|s| s..(s + MIB).min(r.end))
        })
        .collect();
    let opts = AdviseOptions {
        batch: 4,
        ..Default::default()
    };
    let result = p.advise_with(&ranges, Advice::PageOut, &opts);
    killer.join().unwrap();
    match result {
        Err(Error::ProcessGone { pid: gone }) => assert_eq!(gone, pid),
        other => panic!("expected ProcessGone, got {other:?}"),
    }
    // Reaped and gone: the held pidfd keeps refusing, whatever the pid is reused for.
    let _ = hog.kill();
    assert!(!p.is_alive());
    assert!(matches!(
        p.advise(&ranges[..1], Advice::Cold),
        Err(Error::ProcessGone { .. })
    ));
    assert!(
        matches!(Process::open(pid), Err(Error::NoProcess { .. }))
            || Process::open(pid).is_ok_and(|q| q.pid() == pid)
    );
}

#[test]
fn refused_vma_is_skipped_and_reported() {
    // process_madvise on ourselves needs no capability; a locked VMA is refused (EINVAL:
    // can_madv_lru_vma) and the ranges after it are still advised.
    let a = Region::new(MIB as usize).unwrap();
    let locked = Region::new(MIB as usize).unwrap();
    let c = Region::new(MIB as usize).unwrap();
    // SAFETY: mlock only pins pages of our own mapping in RAM; it changes no contents.
    let rc = unsafe { libc::mlock(locked.as_ptr().cast(), locked.len()) };
    assert_eq!(rc, 0, "mlock: {}", std::io::Error::last_os_error());
    let range = |r: &Region| r.addr() as u64..(r.addr() + r.len()) as u64;
    let me = Process::open(std::process::id()).unwrap();
    let report = me
        .advise(&[range(&a), range(&locked), range(&c)], Advice::Cold)
        .unwrap();
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    assert_eq!(report.skipped[0].start, locked.addr() as u64);
    assert!(report.skipped[0].reason.starts_with("EINVAL"), "{report:?}");
    assert_eq!(report.bytes_advised, 2 * MIB, "{report:?}");
}

#[test]
fn unmapped_range_is_skipped() {
    let a = Region::new(MIB as usize).unwrap();
    let hole = {
        let r = Region::new(MIB as usize).unwrap();
        r.addr() as u64..(r.addr() + r.len()) as u64
    };
    let me = Process::open(std::process::id()).unwrap();
    let report = me
        .advise(
            &[hole.clone(), a.addr() as u64..(a.addr() + a.len()) as u64],
            Advice::Cold,
        )
        .unwrap();
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    assert!(report.skipped[0].reason.starts_with("ENOMEM"), "{report:?}");
    assert_eq!(report.bytes_advised, MIB);
}

#[test]
fn destructive_advice_is_refused_for_other_processes() {
    let me = Process::open(std::process::id()).unwrap();
    assert!(matches!(
        me.advise(&[], Advice::DontNeed),
        Err(Error::NotRemoteAdvice {
            advice: Advice::DontNeed
        })
    ));
}

#[test]
fn missing_process_is_no_process() {
    assert!(matches!(
        Process::open(0x3fff_fff0),
        Err(Error::NoProcess { pid: 0x3fff_fff0 })
    ));
}

#[test]
fn many_ranges_are_batched_at_the_iovec_limit() {
    // 3000 one-page ranges: three process_madvise calls of at most 1024 iovecs.
    let r = Region::new(3000 * 4096).unwrap();
    let ranges: Vec<_> = (0..3000u64)
        .map(|i| {
            let s = r.addr() as u64 + i * 4096;
            s..s + 4096
        })
        .collect();
    let me = Process::open(std::process::id()).unwrap();
    let report = me.advise(&ranges, Advice::Cold).unwrap();
    assert_eq!(report.calls, 3, "{report:?}");
    assert_eq!(report.bytes_advised, 3000 * 4096);
}
