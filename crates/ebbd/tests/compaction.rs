//! Compaction of processes entering the cached band, on real children with real zram swap,
//! by a real `ebbd` subprocess scoped to the test's Sandbox.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ebb_lab::Hog;

const MIB: u64 = 1 << 20;

/// The acceptance check: default config (plus scope and socket), a 512 MiB child at adj 950
/// has >= 80% of its anon RSS in swap within 5 s, and its data checks out.
#[test]
fn zram_acceptance_512mib_cached_child_paged_out_within_5s() {
    let _zram = zram();
    let sb = sandbox("ebbd_accept");
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    hog.alloc(512 * MIB).unwrap();
    let before = mem(hog.pid());
    assert!(before.anonymous >= 500 * MIB);
    let d = Ebbd::start(&sb, "", &[]);
    let t0 = Instant::now();
    set_adj(hog.pid(), 950);
    let mut now = mem(hog.pid());
    while now.swap * 10 < before.anonymous * 8 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        now = mem(hog.pid());
    }
    let took = t0.elapsed();
    println!(
        "512 MiB cached child: swap {} MiB of anon {} MiB after {:?}",
        now.swap / MIB,
        before.anonymous / MIB,
        took
    );
    assert!(
        now.swap * 10 >= before.anonymous * 8,
        "only {} of {} bytes in swap after {took:?}",
        now.swap,
        before.anonymous
    );
    let s = d.wait_status(Duration::from_secs(3), |s| n(&s["compactions"]) == 1);
    assert_eq!(n(&s["compactions"]), 1, "{s}");
    assert!(n(&s["swap_gained_bytes"]) >= 400 * MIB, "{s}");
    assert!(n(&s["rss_reclaimed_bytes"]) >= 400 * MIB, "{s}");
    // Compressing 512 MiB into zram is real CPU work, and ebbd says how much of its own.
    let (cpu, total) = (
        s["compaction_cpu_seconds"].as_f64().unwrap(),
        s["cpu_seconds"].as_f64().unwrap(),
    );
    assert!(cpu > 0.1 && cpu <= total + 0.02, "{s}");
    let rec = &d.log_events("compacted")[0]["fields"];
    println!("compaction record: {rec}");
    assert!(rec["cpu_ms"].as_f64().unwrap() > 100.0, "{rec}");
    set_adj(hog.pid(), 0);
    assert!(hog.verify().unwrap(), "data corrupt after resume");
}

/// `mark PID cached` over the socket compacts like adj 950; `normal` ends the mark.
#[test]
fn zram_mark_cached_compacts_and_normal_unmarks() {
    let _zram = zram();
    let sb = sandbox("ebbd_mark");
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    hog.alloc(64 * MIB).unwrap();
    let d = Ebbd::start(&sb, "[kill]\nenabled = false\n", &[]);
    let s = d.wait_status(Duration::from_secs(2), |s| {
        n(&s["processes"]["foreground"]) == 1
    });
    assert_eq!(n(&s["processes"]["foreground"]), 1, "{s}");
    d.client().mark(hog.pid(), "cached").unwrap();
    let s = d.wait_status(Duration::from_secs(5), |s| n(&s["compactions"]) == 1);
    assert_eq!(n(&s["compactions"]), 1, "{s}");
    assert_eq!(n(&s["processes"]["cached"]), 1, "{s}");
    let m = mem(hog.pid());
    assert!(m.swap >= 50 * MIB, "swap {}", m.swap);
    d.client().mark(hog.pid(), "normal").unwrap();
    let s = d.wait_status(Duration::from_secs(2), |s| {
        n(&s["processes"]["cached"]) == 0
    });
    assert_eq!(n(&s["processes"]["foreground"]), 1, "{s}");
    assert!(hog.verify().unwrap());
    // Bad requests are refused with a reason.
    let err = d.client().mark(hog.pid(), "bogus").unwrap_err();
    assert!(err.to_string().contains("unknown band"), "{err}");
    let err = d.client().mark(1, "cached").unwrap_err();
    assert!(
        err.to_string().contains("outside the managed scope"),
        "{err}"
    );
}

/// Leaving the band mid-compaction stops it between batches.
#[test]
fn zram_leaving_cached_mid_compaction_cancels_remaining_batches() {
    let _zram = zram();
    let sb = sandbox("ebbd_cancel");
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    hog.alloc(1024 * MIB).unwrap();
    let before = mem(hog.pid());
    // 1 MiB per call: about a thousand calls, so the cancel lands between two of them.
    let d = Ebbd::start(
        &sb,
        "[ranks]\nscan_interval_ms = 20\n[compaction]\nbatch_ranges = 1\nmax_range_mib = 1\n[kill]\nenabled = false\n",
        &[],
    );
    set_adj(hog.pid(), 950);
    let t0 = Instant::now();
    while mem(hog.pid()).swap < 32 * MIB {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "compaction never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    set_adj(hog.pid(), 0);
    let s = d.wait_status(Duration::from_secs(10), |s| n(&s["compactions"]) == 1);
    assert_eq!(n(&s["compactions_cancelled"]), 1, "{s}");
    let after = mem(hog.pid());
    println!(
        "cancelled: swap {} MiB of {} MiB anon",
        after.swap / MIB,
        before.anonymous / MIB
    );
    assert!(
        after.swap < before.anonymous * 9 / 10,
        "the whole process went to swap: {} of {}",
        after.swap,
        before.anonymous
    );
    let rec = &d.log_events("compacted")[0]["fields"];
    assert_eq!(rec["cancelled"], true, "{rec}");
    assert!(hog.verify().unwrap());
}

/// min_interval_s, min_anon_rss_mib and min_growth_mib hold.
#[test]
fn zram_throttles_hold() {
    let _zram = zram();
    let sb = sandbox("ebbd_throttle");
    let mut big = Hog::spawn(Some(&sb)).unwrap();
    big.alloc(64 * MIB).unwrap();
    let mut small = Hog::spawn(Some(&sb)).unwrap();
    small.alloc(MIB).unwrap();
    let d = Ebbd::start(
        &sb,
        "[ranks]\nscan_interval_ms = 20\n[compaction]\nmin_interval_s = 2\nmin_anon_rss_mib = 4\nmin_growth_mib = 8\n[kill]\nenabled = false\n",
        &[],
    );
    let skipped = |s: &serde_json::Value, r: &str| n(&s["compactions_skipped"][r]);
    // Small: skipped.
    set_adj(small.pid(), 950);
    let s = d.wait_status(Duration::from_secs(3), |s| skipped(s, "small") == 1);
    assert_eq!(skipped(&s, "small"), 1, "{s}");
    assert_eq!(mem(small.pid()).swap, 0);
    // Big: compacted once.
    set_adj(big.pid(), 950);
    let s = d.wait_status(Duration::from_secs(5), |s| n(&s["compactions"]) == 1);
    assert_eq!(n(&s["compactions"]), 1, "{s}");
    let t_compacted = Instant::now();
    // Out and back in within the interval: not again.
    set_adj(big.pid(), 0);
    std::thread::sleep(Duration::from_millis(200));
    assert!(big.verify().unwrap());
    set_adj(big.pid(), 950);
    let s = d.wait_status(Duration::from_secs(1), |s| skipped(s, "interval") == 1);
    assert!(
        t_compacted.elapsed() < Duration::from_secs(2),
        "test too slow for its interval"
    );
    assert_eq!(skipped(&s, "interval"), 1, "{s}");
    assert_eq!(n(&s["compactions"]), 1, "{s}");
    // After the interval, with the anon RSS back (verify faulted it in): grown, compacted.
    set_adj(big.pid(), 0);
    std::thread::sleep(Duration::from_millis(2100));
    set_adj(big.pid(), 950);
    let s = d.wait_status(Duration::from_secs(5), |s| n(&s["compactions"]) == 2);
    assert_eq!(n(&s["compactions"]), 2, "{s}");
    // After another interval, grown by 6 MiB only: skipped for growth.
    set_adj(big.pid(), 0);
    big.alloc(6 * MIB).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    set_adj(big.pid(), 950);
    let s = d.wait_status(Duration::from_secs(3), |s| skipped(s, "growth") == 1);
    assert_eq!(skipped(&s, "growth"), 1, "{s}");
    assert_eq!(n(&s["compactions"]), 2, "{s}");
    assert!(big.verify().unwrap());
    assert!(small.verify().unwrap());
}

/// A child exiting in the middle of its compaction: no panic, the daemon carries on.
#[test]
fn zram_child_exiting_mid_compaction_is_no_error() {
    let _zram = zram();
    let sb = sandbox("ebbd_exit");
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    hog.alloc(512 * MIB).unwrap();
    let d = Ebbd::start(
        &sb,
        "[ranks]\nscan_interval_ms = 20\n[compaction]\nbatch_ranges = 1\nmax_range_mib = 1\n[kill]\nenabled = false\n",
        &[],
    );
    set_adj(hog.pid(), 950);
    let t0 = Instant::now();
    while mem(hog.pid()).swap < 16 * MIB {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "compaction never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    hog.kill().unwrap();
    let s = d.wait_status(Duration::from_secs(5), |s| {
        n(&s["compactions_skipped"]["gone"]) + n(&s["compactions"]) >= 1
    });
    assert!(
        n(&s["compactions_skipped"]["gone"]) + n(&s["compactions"]) >= 1,
        "{s}"
    );
    // Still working: a new child is compacted.
    let mut next = Hog::spawn(Some(&sb)).unwrap();
    next.alloc(32 * MIB).unwrap();
    set_adj(next.pid(), 950);
    let before = n(&s["compactions"]);
    let s = d.wait_status(Duration::from_secs(5), |s| n(&s["compactions"]) > before);
    assert!(n(&s["compactions"]) > before, "{s}");
    assert!(next.verify().unwrap());
}

/// A pid reused by another process: the old process's mark does not reach the newcomer.
#[test]
fn zram_reused_pid_is_not_the_marked_process() {
    let _zram = zram();
    let sb = sandbox("ebbd_reuse");
    let d = Ebbd::start(
        &sb,
        "[ranks]\nscan_interval_ms = 20\n[kill]\nenabled = false\n",
        &[],
    );
    // Force pid reuse through ns_last_pid (root); other forks on the machine may race us,
    // so try a few times.
    for attempt in 0..20 {
        let mut first = sb
            .spawn(std::process::Command::new("sleep").arg("600"))
            .unwrap();
        let pid = first.id();
        d.client().mark(pid, "cached").unwrap();
        d.wait_status(Duration::from_secs(2), |s| {
            n(&s["processes"]["cached"]) == 1
        });
        first.kill().unwrap();
        first.wait().unwrap();
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let mut hog = Hog::spawn(Some(&sb)).unwrap();
        if hog.pid() != pid {
            eprintln!("attempt {attempt}: got pid {} instead of {pid}", hog.pid());
            continue;
        }
        hog.alloc(32 * MIB).unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        let s = d.status();
        assert_eq!(n(&s["processes"]["cached"]), 0, "{s}");
        assert_eq!(n(&s["compactions"]), 0, "{s}");
        assert_eq!(mem(hog.pid()).swap, 0, "the newcomer was paged out");
        assert!(hog.verify().unwrap());
        return;
    }
    panic!("could not get a pid reused in 20 attempts");
}

/// Dry run decides and logs, and advises nothing.
#[test]
fn zram_dry_run_acts_on_nothing() {
    let _zram = zram();
    let sb = sandbox("ebbd_dry");
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    hog.alloc(64 * MIB).unwrap();
    let d = Ebbd::start(&sb, "[ranks]\nscan_interval_ms = 20\n", &["--dry-run"]);
    set_adj(hog.pid(), 950);
    let s = d.wait_status(Duration::from_secs(3), |s| {
        n(&s["compactions_skipped"]["dry_run"]) == 1
    });
    assert_eq!(s["dry_run"], true);
    assert_eq!(n(&s["compactions_skipped"]["dry_run"]), 1, "{s}");
    assert_eq!(n(&s["compactions"]), 0, "{s}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(mem(hog.pid()).swap, 0);
    assert!(hog.verify().unwrap());
}

/// With no swap at all, anon memory is not paged out (file mappings only, logged why).
/// In the zram group so that no other test's zram is active; /proc/swaps must be empty.
#[test]
fn zram_group_no_pageout_without_swap() {
    let t0 = Instant::now();
    while !ebb::caps::read_swaps().unwrap().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "/proc/swaps is not empty (another run holds swap): cannot test the no-swap case"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let sb = sandbox("ebbd_noswap");
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    hog.alloc(64 * MIB).unwrap();
    let before = mem(hog.pid());
    let d = Ebbd::start(
        &sb,
        "[ranks]\nscan_interval_ms = 20\n[kill]\nenabled = false\n",
        &[],
    );
    set_adj(hog.pid(), 950);
    let s = d.wait_status(Duration::from_secs(5), |s| n(&s["compactions"]) == 1);
    assert_eq!(n(&s["compactions"]), 1, "{s}");
    let rec = d.log_events("compacted")[0]["fields"].clone();
    assert_eq!(rec["mode"], "file_only", "{rec}");
    assert_eq!(rec["file_only_reason"], "no_swap", "{rec}");
    let after = mem(hog.pid());
    assert!(
        after.anonymous >= before.anonymous * 95 / 100,
        "anon fell with no swap"
    );
    assert_eq!(after.swap, 0);
    assert!(hog.verify().unwrap());
}

/// prefetch_on_resume: leaving the band reads back what was paged out, before any touch.
#[test]
fn zram_prefetch_on_resume_reads_back_paged_out_ranges() {
    let _zram = zram();
    let sb = sandbox("ebbd_prefetch");
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    hog.alloc(64 * MIB).unwrap();
    let d = Ebbd::start(
        &sb,
        "[ranks]\nscan_interval_ms = 20\n[compaction]\nprefetch_on_resume = true\n[kill]\nenabled = false\n",
        &[],
    );
    set_adj(hog.pid(), 950);
    let s = d.wait_status(Duration::from_secs(5), |s| n(&s["compactions"]) == 1);
    assert_eq!(n(&s["compactions"]), 1, "{s}");
    let out = mem(hog.pid());
    assert!(out.swap >= 50 * MIB, "{}", out.swap);
    set_adj(hog.pid(), 0);
    let s = d.wait_status(Duration::from_secs(5), |s| n(&s["prefetches"]) == 1);
    assert_eq!(n(&s["prefetches"]), 1, "{s}");
    // Remote WILLNEED on anon memory reads swap into the swap cache (mapped at the next touch,
    // as minor faults), so RSS does not move; the log has what was asked for.
    let rec = &d.log_events("prefetched on resume")[0]["fields"];
    assert!(rec["bytes"].as_u64().unwrap() >= 60 * MIB, "{rec}");
    assert!(hog.verify().unwrap());
}

/// Members of a configured cached cgroup count as cached whatever their adj.
#[test]
fn zram_cached_cgroup_members_are_compacted() {
    struct Nested(std::path::PathBuf);
    impl Drop for Nested {
        fn drop(&mut self) {
            for _ in 0..50 {
                if std::fs::remove_dir(&self.0).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let _zram = zram();
    let sb = sandbox("ebbd_cachedcg");
    let nested = Nested(sb.path().join("ebb-cached"));
    std::fs::create_dir(&nested.0).unwrap();
    let mut inside = Hog::spawn(Some(&sb)).unwrap();
    let mut outside = Hog::spawn(Some(&sb)).unwrap();
    inside.alloc(32 * MIB).unwrap();
    outside.alloc(32 * MIB).unwrap();
    ebb::cgroup::MemoryCgroup::open(&nested.0)
        .unwrap()
        .add_process(inside.pid())
        .unwrap();
    let d = Ebbd::start(
        &sb,
        &format!(
            "[ranks]\nscan_interval_ms = 20\ncached_cgroups = [{:?}]\n[kill]\nenabled = false\n",
            nested.0.display().to_string()
        ),
        &[],
    );
    let s = d.wait_status(Duration::from_secs(5), |s| n(&s["compactions"]) == 1);
    assert_eq!(n(&s["compactions"]), 1, "{s}");
    assert_eq!(n(&s["processes"]["cached"]), 1, "{s}");
    assert!(mem(inside.pid()).swap >= 24 * MIB);
    assert_eq!(mem(outside.pid()).swap, 0);
    assert!(inside.verify().unwrap());
    assert!(outside.verify().unwrap());
    drop(inside);
    drop(outside);
}

/// A frozen cgroup's processes count as cached (v1 freezer here).
#[test]
fn zram_frozen_cgroup_members_are_compacted() {
    struct Freezer(std::path::PathBuf);
    impl Drop for Freezer {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
            for _ in 0..100 {
                if std::fs::remove_dir(&self.0).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let root = std::path::Path::new("/sys/fs/cgroup/freezer");
    assert!(
        root.join("freezer.state").exists() || root.join("cgroup.procs").exists(),
        "no v1 freezer here"
    );
    let _zram = zram();
    let sb = sandbox("ebbd_frozen");
    let frz = Freezer(root.join(format!("ebb-frozen-{}", std::process::id())));
    std::fs::create_dir(&frz.0).unwrap();
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    hog.alloc(32 * MIB).unwrap();
    std::fs::write(frz.0.join("cgroup.procs"), hog.pid().to_string()).unwrap();
    let d = Ebbd::start(
        &sb,
        "[ranks]\nscan_interval_ms = 20\n[kill]\nenabled = false\n",
        &[],
    );
    let s = d.wait_status(Duration::from_secs(2), |s| {
        n(&s["processes"]["foreground"]) == 1
    });
    assert_eq!(n(&s["compactions"]), 0, "{s}");
    std::fs::write(frz.0.join("freezer.state"), "FROZEN").unwrap();
    // Membership is re-read every FREEZER_REFRESH scans (25 x 20 ms).
    let s = d.wait_status(Duration::from_secs(5), |s| n(&s["compactions"]) == 1);
    assert_eq!(n(&s["compactions"]), 1, "{s}");
    assert!(mem(hog.pid()).swap >= 24 * MIB);
    std::fs::write(frz.0.join("freezer.state"), "THAWED").unwrap();
    let s = d.wait_status(Duration::from_secs(2), |s| {
        n(&s["processes"]["cached"]) == 0
    });
    assert_eq!(n(&s["processes"]["cached"]), 0, "{s}");
    assert!(hog.verify().unwrap());
    drop(hog);
}

/// `trigger = "headroom"`: nothing is compacted while the scope has room; once a foreground
/// child eats into the headroom, the process cached longest is compacted (files and anon), and
/// only as many as it takes: the one cached later stays whole.
#[test]
fn zram_headroom_compacts_the_oldest_cached_only_when_short() {
    let _zram = zram();
    let sb = ebb_lab::Sandbox::new(ebb_lab::SandboxConfig {
        name_hint: "ebbd_headroom".into(),
        memory_limit: Some(512 * MIB),
        swap_limit: None,
    })
    .unwrap();
    let mut old = Hog::spawn(Some(&sb)).unwrap();
    let mut newer = Hog::spawn(Some(&sb)).unwrap();
    let mut fg = Hog::spawn(Some(&sb)).unwrap();
    for h in [&mut old, &mut newer, &mut fg] {
        h.alloc(96 * MIB).unwrap();
    }
    // Headroom 25% of 512 MiB = 128 MiB; about 290 MiB in use, so 220 MiB free.
    let d = Ebbd::start(
        &sb,
        "[ranks]\nscan_interval_ms = 50\n[compaction]\ntrigger = \"headroom\"\nheadroom_pct = 25\n[kill]\nenabled = false\n",
        &[],
    );
    set_adj(old.pid(), 950);
    std::thread::sleep(Duration::from_millis(200));
    set_adj(newer.pid(), 950);
    let s = d.wait_status(Duration::from_secs(2), |s| {
        n(&s["processes"]["cached"]) == 2 && !s["headroom"].is_null()
    });
    std::thread::sleep(Duration::from_millis(500));
    let s2 = d.status();
    assert_eq!(n(&s2["compactions"]), 0, "room enough, yet compacted: {s2}");
    let free = n(&s["headroom"]["free_bytes"]);
    assert!(free > 128 * MIB, "{s}");
    assert_eq!(n(&s["headroom"]["headroom_bytes"]), 128 * MIB, "{s}");
    // The foreground takes 160 MiB more: about 60 MiB free, short of 128.
    fg.alloc(160 * MIB).unwrap();
    let s = d.wait_status(Duration::from_secs(5), |s| n(&s["compactions"]) >= 1);
    assert_eq!(n(&s["compactions"]), 1, "{s}");
    std::thread::sleep(Duration::from_millis(600));
    let s = d.status();
    assert_eq!(n(&s["compactions"]), 1, "compacted more than needed: {s}");
    assert_eq!(n(&s["headroom_compactions"]), 1, "{s}");
    assert!(n(&s["headroom"]["free_bytes"]) >= 128 * MIB, "{s}");
    let (o, w) = (mem(old.pid()), mem(newer.pid()));
    println!(
        "oldest cached: swap {} MiB; newer cached: swap {} MiB; {s}",
        o.swap / MIB,
        w.swap / MIB
    );
    assert!(o.swap >= 80 * MIB, "the oldest was not compacted: {o:?}");
    assert!(w.swap < 8 * MIB, "the newer one was compacted too: {w:?}");
    let rec = &d.log_events("short of headroom: compacting the process cached longest")[0];
    assert_eq!(n(&rec["fields"]["pid"]), u64::from(old.pid()), "{rec}");
    assert!(old.verify().unwrap(), "data corrupt after compaction");
}
