//! The memory lab against the real kernel: memory cgroups, zram swap and hogs.
//!
//! These need root, a memory cgroup controller and zram; where the machine lacks them
//! they print `SKIP: <reason>` and pass. On the lab machines (LAB.md) they must run.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ebb_lab::hog::{self, Hog};
use ebb_lab::{Sandbox, SandboxConfig, ZramSwap, zram};

const MIB: u64 = 1 << 20;

fn have_memcg() -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP: needs root to create memory cgroups");
        return false;
    }
    match ebb::cgroup::memory_root() {
        Ok(Some(_)) => true,
        other => {
            eprintln!("SKIP: no memory cgroup controller ({other:?})");
            false
        }
    }
}

fn have_zram() -> bool {
    if !have_memcg() {
        return false;
    }
    if !Path::new("/sys/class/zram-control").exists() && !Path::new("/sys/block/zram0").exists() {
        eprintln!("SKIP: zram module not loaded");
        return false;
    }
    true
}

fn sandbox(hint: &str, memory_limit: Option<u64>, swap_limit: Option<u64>) -> Sandbox {
    Sandbox::new(SandboxConfig {
        name_hint: hint.into(),
        memory_limit,
        swap_limit,
    })
    .unwrap()
}

#[test]
fn hog_allocates_and_verifies() {
    let mut hog = Hog::spawn(None).unwrap();
    let (addr, len) = hog.alloc(16 * MIB).unwrap();
    assert_ne!(addr, 0);
    assert_eq!(len, 16 * MIB);
    assert!(hog.verify().unwrap());
    let hog::Verify::Ok(sum1) = hog.touch().unwrap() else {
        panic!("corrupt")
    };
    let hog::Verify::Ok(sum2) = hog.verify_detail().unwrap() else {
        panic!("corrupt")
    };
    assert_eq!(sum1, sum2);
    assert!(hog.rss().unwrap() >= 16 * MIB);
    hog.free().unwrap();
    assert!(hog.rss().unwrap() < 16 * MIB);
    assert!(hog.exit().unwrap().success());
}

#[test]
fn spawned_child_is_in_sandbox_before_exec() {
    if !have_memcg() {
        return;
    }
    let sb = sandbox("spawn", None, None);
    // The child reports its own cgroup: it must already be the sandbox when it runs.
    let out = sb
        .spawn(
            Command::new("cat")
                .arg("/proc/self/cgroup")
                .stdout(Stdio::piped()),
        )
        .unwrap()
        .wait_with_output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let name = sb.path().file_name().unwrap().to_str().unwrap();
    let want = format!("/{name}");
    assert!(
        text.lines()
            .any(|l| l.ends_with(&want) && (l.contains(":memory:") || l.starts_with("0::"))),
        "{text}"
    );
}

#[test]
fn sandbox_without_swap_hits_the_limit() {
    if !have_memcg() {
        return;
    }
    // swap_limit 0: no swap even if a parallel test has zram swap on.
    let sb = sandbox("oom", Some(64 * MIB), Some(0));
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    let t = Instant::now();
    let result = hog.fill(256 * MIB);
    let failcnt = sb.failcnt().unwrap();
    let oom_kills = sb.cgroup().oom_kills().unwrap();
    eprintln!(
        "fill 256 MiB in 64 MiB, no swap: {result:?} after {:?}, failcnt {failcnt}, oom_kills {oom_kills}",
        t.elapsed()
    );
    match result {
        Err(hog::Error::Died { status, .. }) => {
            assert!(hog::killed_by_sigkill(&status), "{status}")
        }
        other => panic!("expected an OOM kill, got {other:?}"),
    }
    // With memsw == limit, v1 on 6.18 can OOM-kill with failcnt still 0 (see failcnt docs).
    assert!(
        failcnt > 0 || oom_kills > 0,
        "failcnt {failcnt}, oom_kills {oom_kills}"
    );
    assert_eq!(oom_kills, 1);
    assert!(sb.procs().unwrap().is_empty());
}

#[test]
fn zram_swap_lets_an_overrun_survive() {
    if !have_zram() {
        return;
    }
    let swap = ZramSwap::shared(1024 * MIB, "lz4").unwrap();
    let sb = sandbox("swap", Some(64 * MIB), Some(512 * MIB));
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    let t = Instant::now();
    hog.alloc(256 * MIB).unwrap();
    let alloc_time = t.elapsed();
    let swapped = sb.swap_usage().unwrap();
    let stat = sb.stat().unwrap();
    let status = swap.status().unwrap();
    eprintln!(
        "256 MiB in 64 MiB + zram: {alloc_time:?}, usage {} MiB, swap {} MiB (stat swap {:?} MiB), \
         failcnt {}, zram {status:?}, ratio {:?}",
        sb.usage().unwrap() / MIB,
        swapped / MIB,
        stat.swap.map(|s| s / MIB),
        sb.failcnt().unwrap(),
        status.compression_ratio()
    );
    assert!(sb.usage().unwrap() <= 64 * MIB);
    assert!(swapped >= 150 * MIB, "swap usage {swapped}");
    assert!(status.orig_data_size > 0);
    let t = Instant::now();
    assert!(hog.verify().unwrap(), "pattern survived swap");
    eprintln!("verify (swap-in) took {:?}", t.elapsed());
}

#[test]
fn sandbox_drop_kills_and_removes() {
    if !have_memcg() {
        return;
    }
    let sb = sandbox("drop", Some(64 * MIB), None);
    let path = sb.path().to_path_buf();
    let mut child = sb.spawn(Command::new("sleep").arg("1000")).unwrap();
    assert_eq!(sb.procs().unwrap(), vec![child.id()]);
    let t = Instant::now();
    drop(sb);
    eprintln!("drop with a running child took {:?}", t.elapsed());
    assert!(!path.exists(), "{} left behind", path.display());
    let status = child.wait().unwrap();
    assert!(hog::killed_by_sigkill(&status), "{status}");
}

#[test]
fn kill_all_empties_the_group() {
    if !have_memcg() {
        return;
    }
    let sb = sandbox("killall", None, None);
    let mut a = Hog::spawn(Some(&sb)).unwrap();
    let mut b = Hog::spawn(Some(&sb)).unwrap();
    b.alloc(MIB).unwrap();
    let mut c = Command::new("sleep").arg("1000").spawn().unwrap();
    sb.add(c.id()).unwrap();
    assert_eq!(sb.procs().unwrap().len(), 3);
    sb.kill_all(Duration::from_secs(5)).unwrap();
    assert!(sb.procs().unwrap().is_empty());
    assert!(hog::killed_by_sigkill(&a.kill().unwrap()));
    assert!(hog::killed_by_sigkill(&b.kill().unwrap()));
    assert!(hog::killed_by_sigkill(&c.wait().unwrap()));
}

fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    pid
}

#[test]
fn sweep_removes_stale_groups_only() {
    if !have_memcg() {
        return;
    }
    let (_, root) = ebb::cgroup::memory_root().unwrap().unwrap();
    let stale = root.join(format!("ebb-test-{}-0", dead_pid()));
    let live = root.join(format!("ebb-test-{}-999999", std::process::id()));
    std::fs::create_dir(&stale).unwrap();
    std::fs::create_dir(&live).unwrap();
    let removed = ebb_lab::sweep_stale();
    let live_survived = live.exists();
    let _ = std::fs::remove_dir(&live);
    let _ = std::fs::remove_dir(&stale);
    let removed: Vec<PathBuf> = removed.unwrap();
    assert!(removed.contains(&stale), "{removed:?}");
    assert!(live_survived);
}

#[test]
fn zram_shared_by_concurrent_users_is_restored() {
    if !have_zram() {
        return;
    }
    let before = zram::active_swaps().unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let workers: Vec<_> = [0u64, 1]
        .into_iter()
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let swap = ZramSwap::shared(256 * MIB, "lz4").unwrap();
                let dev = swap.device();
                assert!(zram::active_swaps().unwrap().contains(&dev));
                barrier.wait(); // both hold it now
                std::thread::sleep(Duration::from_millis(50 * i));
                drop(swap);
                dev
            })
        })
        .collect();
    let devices: Vec<PathBuf> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(devices[0], devices[1], "both users share one device");
    let after = zram::active_swaps().unwrap();
    eprintln!("swaps before {before:?}, during {devices:?}, after {after:?}");
    assert_eq!(before, after);
}

#[test]
fn zram_exclusive_setup_and_status() {
    if !have_zram() {
        return;
    }
    let before = zram::active_swaps().unwrap();
    let swap = ZramSwap::setup(128 * MIB, "lzo").unwrap();
    let status = swap.status().unwrap();
    assert_eq!(status.disksize, 128 * MIB);
    assert_eq!(status.algorithm.as_deref(), Some("lzo"));
    assert!(zram::active_swaps().unwrap().contains(&swap.device()));
    drop(swap);
    assert_eq!(zram::active_swaps().unwrap(), before);
    assert!(matches!(
        ZramSwap::setup(128 * MIB, "no-such-algo"),
        Err(zram::Error::Algorithm { .. })
    ));
    assert_eq!(zram::active_swaps().unwrap(), before);
}

/// Not a test on its own: `zram_crashed_shared_user_is_pruned` re-runs this test binary
/// with `EBB_ZRAM_HELPER=1` to get a second process that joins the shared swap and
/// then dies without releasing it. Without the variable it does nothing.
#[test]
fn zram_helper_child() {
    if std::env::var_os("EBB_ZRAM_HELPER").is_none() {
        return;
    }
    let swap = ZramSwap::shared(128 * MIB, "lz4").unwrap();
    println!("ready {}", swap.device().display());
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn zram_crashed_shared_user_is_pruned() {
    use std::io::BufRead;
    if !have_zram() {
        return;
    }
    let before = zram::active_swaps().unwrap();
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "zram_helper_child", "--nocapture"])
        .env("EBB_ZRAM_HELPER", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(helper.stdout.take().unwrap()).lines();
    let device = loop {
        let line = lines.next().expect("helper printed ready").unwrap();
        if let Some(dev) = line.strip_prefix("ready ") {
            break PathBuf::from(dev);
        }
    };
    assert!(zram::active_swaps().unwrap().contains(&device));
    helper.kill().unwrap(); // crash: no Drop runs in the helper
    helper.wait().unwrap();
    assert!(
        zram::active_swaps().unwrap().contains(&device),
        "left behind by the crash"
    );
    // The next user prunes the dead pid, tears the stale device down and starts afresh.
    let swap = ZramSwap::shared(128 * MIB, "lz4").unwrap();
    assert!(zram::active_swaps().unwrap().contains(&swap.device()));
    drop(swap);
    assert_eq!(zram::active_swaps().unwrap(), before);
}

#[test]
fn zram_lab_up_and_down() {
    if !have_zram() {
        return;
    }
    if let Some(status) = ebb_lab::Lab::status().unwrap() {
        eprintln!("SKIP: a lab is already up on {status:?}; not touching it");
        return;
    }
    let before = zram::active_swaps().unwrap();
    let status = ebb_lab::Lab::up(256 * MIB, "lz4").unwrap();
    assert_eq!(status.disksize, 256 * MIB);
    assert!(zram::active_swaps().unwrap().contains(&status.device));
    assert_eq!(
        ebb_lab::Lab::status().unwrap().unwrap().device,
        status.device
    );
    assert!(matches!(
        ebb_lab::Lab::up(256 * MIB, "lz4"),
        Err(zram::Error::AlreadyUp { .. })
    ));
    // While the lab is up, the shared swap is the lab's device (one device, not two that
    // split the swap traffic), and dropping the handle leaves the lab alone.
    let shared = ZramSwap::shared(128 * MIB, "lzo-rle").unwrap();
    assert_eq!(shared.device(), status.device);
    drop(shared);
    assert!(zram::active_swaps().unwrap().contains(&status.device));
    assert_eq!(ebb_lab::Lab::down().unwrap(), Some(status.device));
    assert_eq!(ebb_lab::Lab::status().unwrap(), None);
    assert_eq!(ebb_lab::Lab::down().unwrap(), None);
    assert_eq!(zram::active_swaps().unwrap(), before);
}
