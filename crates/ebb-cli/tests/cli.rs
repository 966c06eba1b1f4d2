//! The `ebb` command against the live system and live child processes.

use std::process::{Command, Output};

use ebb_lab::{Hog, Lab, Sandbox, SandboxConfig};
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn ebb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(args)
        .output()
        .expect("running ebb")
}

fn json(args: &[&str]) -> Value {
    let out = ebb(args);
    assert!(
        out.status.success(),
        "ebb {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ebb {args:?} printed invalid JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn sandbox(hint: &str) -> Sandbox {
    Sandbox::new(SandboxConfig {
        name_hint: hint.into(),
        memory_limit: Some(1 << 30),
        swap_limit: None,
    })
    .expect("sandbox")
}

fn swap_devices() -> Vec<String> {
    std::fs::read_to_string("/proc/swaps")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

#[test]
fn status_json_agrees_with_sysfs() {
    let before = swap_devices();
    let v = json(&["status", "--json"]);
    let after = swap_devices();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(v["kernel"], release.trim());
    let enabled = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap();
    let defrag = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/defrag").unwrap();
    assert!(enabled.contains(&format!("[{}]", v["thp"]["enabled"].as_str().unwrap())));
    assert!(defrag.contains(&format!("[{}]", v["thp"]["defrag"].as_str().unwrap())));
    assert_eq!(
        v["psi"]["available"],
        std::path::Path::new("/proc/pressure/memory").exists()
    );
    let version = v["cgroup"]["version"].as_str().unwrap();
    assert_eq!(
        version == "v1",
        std::path::Path::new("/sys/fs/cgroup/memory/memory.usage_in_bytes").exists()
    );
    for name in [
        "free",
        "dontneed",
        "cold",
        "pageout",
        "willneed",
        "populate_read",
        "populate_write",
        "hugepage",
        "nohugepage",
        "collapse",
    ] {
        assert_eq!(v["advice"][name], true, "advice {name} on a 6.x kernel");
    }
    assert_eq!(v["process_madvise"], true);
    if before == after {
        let listed: Vec<&str> = v["swap"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["device"].as_str().unwrap())
            .collect();
        assert_eq!(listed, before);
        for s in v["swap"].as_array().unwrap() {
            assert!(s["size_bytes"].as_u64().unwrap() > 0);
            assert!(s["used_bytes"].is_u64());
        }
    }
}

#[test]
fn ps_json_shows_a_live_child_with_its_real_rss() {
    let sb = sandbox("ps");
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    hog.alloc(64 * MIB).unwrap();
    let real = hog.rss().unwrap();
    let pid = hog.pid().to_string();
    let v = json(&["ps", "--json", "--pid", &pid]);
    let row = &v.as_array().unwrap()[0];
    assert_eq!(row["pid"].as_u64().unwrap(), hog.pid() as u64);
    let rss = row["rss_bytes"].as_u64().unwrap();
    assert!(rss >= 64 * MIB, "{row}");
    assert!(
        rss.abs_diff(real) < 4 * MIB,
        "ebb ps says {rss}, the child says {real}"
    );
    assert!(row["anon_bytes"].as_u64().unwrap() >= 64 * MIB);
    for key in [
        "comm",
        "swap_bytes",
        "lazyfree_bytes",
        "thp_bytes",
        "oom_score_adj",
    ] {
        assert!(!row[key].is_null(), "missing {key} in {row}");
    }
    // The full listing has it too, and sorting holds.
    let all = json(&["ps", "--json", "--sort", "rss"]);
    let rows = all.as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["pid"].as_u64() == Some(hog.pid() as u64))
    );
    assert!(
        rows.windows(2)
            .all(|w| w[0]["rss_bytes"].as_u64() >= w[1]["rss_bytes"].as_u64())
    );
    let top = json(&["ps", "--json", "--top", "3"]);
    assert!(top.as_array().unwrap().len() <= 3);
}

#[test]
fn advise_unknown_pid_fails_with_exit_1() {
    let out = ebb(&["advise", "1073741800", "cold"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no process 1073741800"), "{err}");
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    for args in [
        &["advise", "notapid", "cold"][..],
        &["advise", "1", "dontneed"][..],
        &["ps", "--sort", "size"][..],
        &["frobnicate"][..],
        &["lab", "up", "--zram", "lots"][..],
    ] {
        let out = ebb(args);
        assert_eq!(out.status.code(), Some(2), "ebb {args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("error:") && err.contains("--help"),
            "ebb {args:?}: {err}"
        );
    }
}

#[test]
fn advise_without_cap_sys_nice_names_the_capability() {
    // Drop to an unprivileged user and advise a process of that same user: the maps are
    // readable, process_madvise is refused for lack of CAP_SYS_NICE.
    use std::os::unix::process::CommandExt;
    let mut target = Command::new("sleep");
    target.arg("30").uid(65534).gid(65534);
    let mut target = target.spawn().expect("spawning sleep as nobody");
    let out = Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(["advise", &target.id().to_string(), "cold"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let _ = target.kill();
    let _ = target.wait();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CAP_SYS_NICE"), "{err}");
}

#[test]
fn advise_dry_run_changes_nothing() {
    let sb = sandbox("dry");
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    hog.alloc(32 * MIB).unwrap();
    let pid = hog.pid().to_string();
    let v = json(&[
        "advise",
        &pid,
        "pageout",
        "--anon-only",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["bytes_advised"], 0);
    assert!(v["bytes_requested"].as_u64().unwrap() >= 32 * MIB);
    assert_eq!(v["swap_before"], v["swap_after"]);
}

/// The acceptance check of the foundation issue: with `ebb lab up`, `ebb advise PID pageout`
/// on a 256 MiB child moves at least 200 MiB to swap, and `ebb lab down` leaves /proc/swaps
/// as it was. Runs in the serial zram group.
#[test]
fn zram_lab_up_advise_pageout_lab_down() {
    if Lab::status().ok().flatten().is_some() {
        panic!("a lab is already up on this machine: take it down with `ebb lab down` first");
    }
    let swaps_before = swap_devices();
    let up = json(&["lab", "up", "--zram", "1G", "--algo", "lz4", "--json"]);
    assert_eq!(up["up"], true);
    struct Down;
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = Lab::down();
        }
    }
    let _down = Down;
    let status = json(&["lab", "status", "--json"]);
    assert_eq!(status["up"], true);
    let sb = sandbox("acceptance");
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    hog.alloc(256 * MIB).unwrap();
    let pid = hog.pid().to_string();
    let v = json(&["advise", &pid, "pageout", "--json"]);
    let gained = v["swap_after"].as_u64().unwrap() - v["swap_before"].as_u64().unwrap();
    let dropped = v["rss_before"].as_u64().unwrap() - v["rss_after"].as_u64().unwrap();
    assert!(gained >= 200 * MIB, "swap gained {} MiB: {v}", gained / MIB);
    assert!(
        dropped >= 200 * MIB,
        "rss dropped {} MiB: {v}",
        dropped / MIB
    );
    assert!(v["skipped_ranges"].is_array());
    assert!(hog.verify().unwrap(), "the child's data changed");
    drop(hog);
    let down = json(&["lab", "down", "--json"]);
    assert!(down["removed"].is_string(), "{down}");
    assert_eq!(swap_devices(), swaps_before);
}

/// `ebb watch --cgroup <sandbox> --json` prints a JSON event when a child overruns the
/// sandbox's limit. The delay is printed, not asserted (the machine is shared); the deadline
/// only keeps a broken watcher from hanging the test.
#[test]
fn watch_json_reports_a_child_overrunning_its_sandbox() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let sb = Sandbox::new(SandboxConfig {
        name_hint: "watch".into(),
        memory_limit: Some(64 * MIB),
        swap_limit: Some(0),
    })
    .unwrap();
    let path = sb.path().to_str().unwrap().to_string();
    let mut watch = Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args([
            "watch",
            "--cgroup",
            &path,
            "--json",
            "--count",
            "1",
            "--duration",
            "20",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut stderr = BufReader::new(watch.stderr.take().unwrap());
    let stdout = watch.stdout.take().unwrap();
    let _reap = Reap(watch);
    // The first stderr line lists the sources: the watcher is registered.
    let mut sources = String::new();
    stderr.read_line(&mut sources).unwrap();
    let listed: Value = serde_json::from_str(&sources).unwrap();
    assert!(
        !listed["sources"].as_array().unwrap().is_empty(),
        "{sources}"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    let started = Instant::now();
    let _ = hog.fill(256 * MIB); // OOM-killed at the limit: that is the point
    let (at, line) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("no event within 10 s of the overrun");
    let event: Value = serde_json::from_str(&line).unwrap();
    for key in ["at_ms", "level", "source"] {
        assert!(!event[key].is_null(), "missing {key}: {line}");
    }
    eprintln!(
        "first event {:?} after the child started overrunning: {line}",
        at.saturating_duration_since(started)
    );
}

/// An idle `ebb watch` sleeps: it once spun on an expired status deadline in `--json` mode.
/// The bound is a spin detector (a spinning loop takes a whole core), not a speed test.
#[test]
fn idle_watch_does_not_spin() {
    use std::time::Duration;
    for json in [true, false] {
        let mut args = vec!["watch", "--source", "meminfo", "--duration", "4"];
        if json {
            args.push("--json");
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_ebb"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let cpu_ns = |pid: u32| -> u64 {
            let mut total = 0;
            for t in std::fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .flatten()
            {
                let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
                total += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            total
        };
        std::thread::sleep(Duration::from_millis(1000));
        let before = cpu_ns(child.id());
        std::thread::sleep(Duration::from_millis(2000));
        let used = cpu_ns(child.id()) - before;
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            used < 500_000_000,
            "ebb watch (json: {json}) used {} ms of CPU in 2 s idle",
            used / 1_000_000
        );
    }
}
