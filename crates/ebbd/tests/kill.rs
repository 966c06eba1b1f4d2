//! The last-resort killer under real memory-cgroup pressure (as lmkd's own test does:
//! children at adj 0…1000 in a group, pressure, kills highest adj first).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use ebb_lab::{Hog, Sandbox, SandboxConfig};

const MIB: u64 = 1 << 20;

#[test]
fn kills_go_highest_adj_first_and_spare_protected_and_low_adj() {
    let sb = Sandbox::new(SandboxConfig {
        name_hint: "ebbd_kill".into(),
        memory_limit: Some(192 * MIB),
        // memory+swap = memory: no swap in this group, whatever else the machine runs.
        swap_limit: Some(0),
    })
    .unwrap();
    // Our own group: with the kernel's OOM killer off, the filler waits for ebbd to act
    // instead of being killed by the kernel.
    std::fs::write(sb.path().join("memory.oom_control"), "1").unwrap();
    // A protected copy of the hog, under another comm.
    let dir = tempfile::tempdir().unwrap();
    let keeper_exe = dir.path().join("ebb-keeper");
    std::fs::copy(Hog::program().unwrap(), &keeper_exe).unwrap();

    let adjs: [i16; 8] = [1000, 950, 900, 700, 300, 200, 100, 0];
    let mut hogs: Vec<(i16, Hog)> = Vec::new();
    for adj in adjs {
        let mut h = Hog::spawn(Some(&sb)).unwrap();
        h.alloc(16 * MIB).unwrap();
        set_adj(h.pid(), adj);
        hogs.push((adj, h));
    }
    let mut keeper = Hog::spawn_command(Command::new(&keeper_exe), Some(&sb)).unwrap();
    keeper.alloc(16 * MIB).unwrap();
    set_adj(keeper.pid(), 1000);
    let mut filler = Hog::spawn(Some(&sb)).unwrap();
    set_adj(filler.pid(), 0);

    let d = Ebbd::start(
        &sb,
        &format!(
            "[ranks]\nscan_interval_ms = 50\n[compaction]\nenabled = false\n[kill]\ncgroup = {:?}\nprotected = [\"ebb-keeper\"]\nwait_exit_ms = 3000\n",
            sb.path().display().to_string()
        ),
        &[],
    );
    let total = |s: &serde_json::Value| -> u64 {
        [
            "foreground",
            "visible",
            "perceptible",
            "previous",
            "cached",
            "other",
        ]
        .iter()
        .map(|b| n(&s["processes"][b]))
        .sum()
    };
    let s = d.wait_status(Duration::from_secs(3), |s| total(s) == 10);
    assert_eq!(total(&s), 10, "{s}");

    // Overrun the limit: 9 x 16 MiB held, 96 MiB more wanted in a 192 MiB group.
    let filled = filler.fill(96 * MIB);
    assert!(filled.is_ok(), "filler failed: {filled:?}");
    assert!(filler.verify().unwrap());

    let kills = d.log_events("killed");
    let killed: Vec<(u32, i64)> = kills
        .iter()
        .map(|k| {
            (
                k["fields"]["pid"].as_u64().unwrap() as u32,
                k["fields"]["adj"].as_i64().unwrap(),
            )
        })
        .collect();
    println!("kills (pid, adj): {killed:?}");
    for k in &kills {
        let f = &k["fields"];
        assert!(
            f["reason"].as_str().unwrap().starts_with("pressure_"),
            "{f}"
        );
        assert!(f["rss"].as_u64().unwrap() >= 16 * MIB, "{f}");
        assert!(f.get("swap").is_some() && f.get("source").is_some(), "{f}");
    }
    assert!(killed.len() >= 3, "too few kills: {killed:?}");
    // Highest adj first, one at a time.
    let order: Vec<i64> = killed.iter().map(|k| k.1).collect();
    let expected: Vec<i64> = adjs
        .iter()
        .map(|a| i64::from(*a))
        .take(order.len())
        .collect();
    assert_eq!(order, expected, "kill order");
    for (adj, h) in &mut hogs {
        let dead = killed.iter().any(|k| k.0 == h.pid());
        if *adj < 200 {
            assert!(!dead, "adj {adj} is below min_adj and was killed");
            assert!(h.verify().unwrap());
        }
        if dead {
            let st = h.kill().unwrap();
            assert!(ebb_lab::hog::killed_by_sigkill(&st), "adj {adj}: {st:?}");
        }
    }
    assert!(
        !killed.iter().any(|k| k.0 == keeper.pid()),
        "protected process killed"
    );
    assert!(keeper.verify().unwrap());
    let s = d.status();
    assert_eq!(n(&s["kills"]["total"]), killed.len() as u64, "{s}");
    assert!(n(&s["pressure_events"]) >= 1, "{s}");
}

/// The victim is checked through its pidfd: a stale start time (pid reused), an exited
/// process, a protected name or a dry run never lead to a kill of the wrong process.
#[test]
fn kill_one_never_hits_a_wrong_or_gone_target() {
    use ebbd::config::Kill;
    use ebbd::killer::{Candidate, kill_one};
    let sb = sandbox("ebbd_kill_one");
    let mut a = sb.spawn(Command::new("sleep").arg("600")).unwrap();
    let start = ebbd::scan::read_stat(a.id()).unwrap().start_time;
    let mut gone = sb.spawn(&mut Command::new("true")).unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    set_adj(a.id(), 1000);
    let s = Kill::default();
    let cand = |pid, start_time, comm: &str| Candidate {
        pid,
        start_time,
        comm: comm.into(),
        adj: 1000,
        marked: false,
    };
    // Stale identity: as if the pid had been reused since the scan.
    assert!(kill_one(&[cand(a.id(), start + 1, "sleep")], &s, "t", "t", false).is_none());
    // Exited.
    assert!(kill_one(&[cand(gone_pid, 1, "true")], &s, "t", "t", false).is_none());
    // Protected.
    let p = Kill {
        protected: vec!["sleep".into()],
        ..Kill::default()
    };
    assert!(kill_one(&[cand(a.id(), start, "sleep")], &p, "t", "t", false).is_none());
    // Dry run: chosen, not killed.
    let r = kill_one(&[cand(a.id(), start, "sleep")], &s, "t", "t", true).unwrap();
    assert!(r.dry_run);
    assert!(a.try_wait().unwrap().is_none(), "dry run killed");
    // adj re-read at kill time: lowered below min_adj since the scan, spared.
    set_adj(a.id(), 0);
    assert!(kill_one(&[cand(a.id(), start, "sleep")], &s, "t", "t", false).is_none());
    set_adj(a.id(), 1000);
    let r = kill_one(
        &[cand(a.id(), start, "sleep")],
        &s,
        "pressure_critical",
        "psi",
        false,
    )
    .unwrap();
    assert_eq!(r.pid, a.id());
    assert!(r.exited, "{r:?}");
    let st = a.wait().unwrap();
    assert!(ebb_lab::hog::killed_by_sigkill(&st), "{st:?}");
}

/// A group at its limit because it reads a file is not short of memory: the watermark fires,
/// the killer counts the clean page cache as free, and nobody dies.
#[test]
fn page_cache_at_the_limit_kills_nobody() {
    let sb = Sandbox::new(SandboxConfig {
        name_hint: "ebbd_cache".into(),
        memory_limit: Some(96 * MIB),
        swap_limit: Some(0),
    })
    .unwrap();
    let mut victim = Hog::spawn(Some(&sb)).unwrap();
    victim.alloc(16 * MIB).unwrap();
    set_adj(victim.pid(), 950);
    // A 256 MiB file, written outside the group and dropped from the page cache, so reading
    // it charges the group with clean cache only.
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let file = dir.path().join("data");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&file).unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..256 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    }
    let d = Ebbd::start(
        &sb,
        &format!(
            "[ranks]\nscan_interval_ms = 50\n[compaction]\nenabled = false\n[kill]\ncgroup = {:?}\n",
            sb.path().display().to_string()
        ),
        &[],
    );
    d.wait_status(Duration::from_secs(3), |s| {
        n(&s["processes"]["cached"]) == 1
    });
    for _ in 0..2 {
        let status = sb
            .spawn(
                Command::new("cat")
                    .arg(&file)
                    .stdout(std::process::Stdio::null()),
            )
            .unwrap()
            .wait()
            .unwrap();
        assert!(status.success());
    }
    let usage = sb.cgroup().usage().unwrap();
    let s = d.wait_status(Duration::from_secs(3), |s| n(&s["kills_unconfirmed"]) >= 1);
    println!("usage {} MiB of 96; {s}", usage >> 20);
    assert!(
        usage >= 90 * MIB,
        "the group never reached its limit: {usage}"
    );
    assert!(
        n(&s["kills_unconfirmed"]) >= 1,
        "no watermark event was checked: {s}"
    );
    assert_eq!(n(&s["kills"]["total"]), 0, "killed for page cache: {s}");
    assert!(victim.verify().unwrap());
}
