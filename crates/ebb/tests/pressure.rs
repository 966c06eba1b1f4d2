//! Memory-pressure signals against the real kernel.
//!
//! The v1 sources run against real memory cgroups (Sandboxes) with a child (`ebb-hog`)
//! overrunning the limit, with and without zram swap. This machine's memory controller is
//! cgroup v1, so the v2 files (`memory.events`, `memory.current`/`memory.max`) are tested on
//! a fake cgroup tree in a temp dir: the `fake_v2_*` tests. Needs root (skips, saying so,
//! without it). The fd-count test assumes one test per process (nextest).
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use ebb::pressure::{
    Detail, Error, Event, Level, Monitor, MonitorOptions, Source, SourceKind, Stall, Thresholds,
};
use ebb_lab::{Hog, Sandbox, SandboxConfig, ZramSwap};

const MIB: u64 = 1 << 20;

fn have_memcg() -> bool {
    let ok = rustix::process::geteuid().is_root()
        && Path::new("/sys/fs/cgroup/memory/memory.pressure_level").exists();
    if !ok {
        eprintln!("SKIP: needs root and a cgroup v1 memory controller with memory.pressure_level");
    }
    ok
}

fn sandbox(hint: &str, limit: u64, swap: Option<u64>) -> Sandbox {
    Sandbox::new(SandboxConfig {
        name_hint: hint.into(),
        memory_limit: Some(limit),
        swap_limit: swap,
    })
    .expect("creating a sandbox")
}

/// Every event arriving within `wait` (stops early once `done` holds for what was seen).
fn collect(rx: &Receiver<Event>, wait: Duration, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
    let end = Instant::now() + wait;
    let mut seen = Vec::new();
    while !done(&seen) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if let Ok(e) = rx.recv_timeout(left) {
            seen.push(e);
        }
    }
    seen
}

fn has(events: &[Event], kind: SourceKind) -> bool {
    events.iter().any(|e| e.source == kind)
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A 64 MiB sandbox without swap: the child gets near the limit (watermark), then
/// overruns it (reclaim → pressure_level) and is OOM-killed.
#[test]
fn v1_overrun_without_swap_gives_events_from_each_v1_source() {
    if !have_memcg() {
        return;
    }
    let sb = sandbox("pressure-noswap", 64 * MIB, Some(0));
    let m = Monitor::new().unwrap();
    let v1 = m.add(Source::v1_pressure_level(sb.path())).unwrap();
    let wm = m.add(Source::watermark(sb.path())).unwrap();
    let rx = m.subscribe();
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    // About 61 MiB charged: above the 90 % watermark, no reclaim yet.
    hog.alloc(60 * MIB).unwrap();
    let near = collect(&rx, Duration::from_secs(3), |s| {
        has(s, SourceKind::Watermark)
    });
    let e = near
        .iter()
        .find(|e| e.source == SourceKind::Watermark)
        .expect("a watermark event near the limit");
    assert_eq!(e.id, wm);
    match &e.detail {
        Detail::Watermark {
            cgroup,
            usage_bytes,
            limit_bytes,
            fraction,
        } => {
            assert_eq!(cgroup, sb.path());
            assert_eq!(*limit_bytes, 64 * MIB);
            // Event-driven: reported as usage crossed 90 % during the allocation.
            assert!(*usage_bytes as f64 >= 0.9 * (64 * MIB) as f64, "{e:?}");
            assert_eq!(
                Thresholds::WATERMARK.level(*fraction),
                Some(e.level),
                "{e:?}"
            );
        }
        other => panic!("watermark event with {other:?}"),
    }
    // Overrun: reclaim finds nothing to reclaim without swap, the child dies.
    assert!(
        hog.fill(64 * MIB).is_err(),
        "the child should be OOM-killed"
    );
    let over = collect(&rx, Duration::from_secs(3), |s| {
        has(s, SourceKind::V1PressureLevel)
    });
    let e = over
        .iter()
        .find(|e| e.source == SourceKind::V1PressureLevel)
        .expect("a pressure_level event from the overrun");
    assert_eq!(e.id, v1);
    match &e.detail {
        Detail::V1PressureLevel {
            cgroup,
            limit_bytes,
            ..
        } => {
            assert_eq!(cgroup, sb.path());
            assert_eq!(*limit_bytes, Some(64 * MIB));
        }
        other => panic!("pressure_level event with {other:?}"),
    }
    assert!(m.is_running());
}

/// With zram swap the overrunning child survives, swapping: sustained pressure, events from
/// both v1 sources, and the child's data intact.
#[test]
fn zram_v1_overrun_with_swap_gives_events_from_each_v1_source() {
    if !have_memcg() {
        return;
    }
    let _swap = ZramSwap::shared(1024 * MIB, "lz4").expect("zram swap");
    let sb = sandbox("pressure-zram", 64 * MIB, Some(512 * MIB));
    let m = Monitor::new().unwrap();
    m.add(Source::v1_pressure_level(sb.path())).unwrap();
    m.add(Source::watermark(sb.path())).unwrap();
    let rx = m.subscribe();
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    hog.fill(160 * MIB)
        .expect("with swap the child survives the overrun");
    let seen = collect(&rx, Duration::from_secs(5), |s| {
        has(s, SourceKind::V1PressureLevel) && has(s, SourceKind::Watermark)
    });
    let v1 = seen
        .iter()
        .filter(|e| e.source == SourceKind::V1PressureLevel)
        .max_by_key(|e| e.level)
        .expect("pressure_level events while swapping");
    assert!(v1.level >= Level::Low);
    let wm = seen
        .iter()
        .filter(|e| e.source == SourceKind::Watermark)
        .max_by_key(|e| e.level)
        .expect("watermark events while at the limit");
    // Swapping at the limit: usage sits right at it.
    assert!(wm.level >= Level::Medium, "{wm:?}");
    assert!(sb.swap_usage().unwrap() > 0, "the overrun went to swap");
    assert!(hog.verify().unwrap(), "swapped data came back intact");
    // The serialized form carries the contract fields.
    let json: serde_json::Value = serde_json::to_value(v1).unwrap();
    assert_eq!(json["source"], "v1_pressure_level");
    assert!(json["at_ms"].is_u64() && json["level"].is_string());
}

/// MemAvailable with no cgroup at all: thresholds placed around the machine's real state
/// fire with the real numbers; thresholds far above it stay quiet.
#[test]
fn mem_available_fallback_works_without_a_cgroup() {
    let info = ebb::procfs::meminfo::read().unwrap();
    let used = 1.0 - info.mem_available as f64 / info.mem_total as f64;
    let m = Monitor::new().unwrap();
    let rx = m.subscribe();
    let low = (used * 0.5).max(0.0001);
    m.add(Source::MemAvailable {
        thresholds: Thresholds {
            low,
            medium: 1.0,
            critical: 1.0,
        },
        interval: Duration::from_millis(20),
    })
    .unwrap();
    let e = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("a MemAvailable event");
    assert_eq!(e.source, SourceKind::MemAvailable);
    assert_eq!(e.level, Level::Low);
    let Detail::MemAvailable {
        available_bytes,
        total_bytes,
        fraction_used,
    } = e.detail
    else {
        panic!("{e:?}")
    };
    assert_eq!(total_bytes, info.mem_total);
    assert!(available_bytes.abs_diff(info.mem_available) < info.mem_total / 20);
    assert!(fraction_used >= low);
    // Repeats of the same level are rate-limited to one per second.
    let burst = collect(&rx, Duration::from_millis(500), |_| false);
    assert!(burst.is_empty(), "{burst:?}");

    let quiet = Monitor::new().unwrap();
    let rx = quiet.subscribe();
    let far = (used + 1.0) / 2.0;
    quiet
        .add(Source::MemAvailable {
            thresholds: Thresholds {
                low: far,
                medium: far,
                critical: far,
            },
            interval: Duration::from_millis(20),
        })
        .unwrap();
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}

/// A fake v2 cgroup directory (this machine has no v2 memory controller).
fn fake_v2(dir: &Path, current: u64, max: &str) {
    std::fs::write(dir.join("memory.current"), format!("{current}\n")).unwrap();
    std::fs::write(dir.join("memory.max"), format!("{max}\n")).unwrap();
    std::fs::write(
        dir.join("memory.events"),
        "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    )
    .unwrap();
}

#[test]
fn fake_v2_memory_events_rising_give_events() {
    let dir = tempfile::tempdir().unwrap();
    fake_v2(dir.path(), 1 << 20, "max");
    let m = Monitor::with_options(MonitorOptions {
        min_interval: Duration::from_millis(1),
    })
    .unwrap();
    let rx = m.subscribe();
    let id = m.add(Source::v2_events(dir.path())).unwrap();
    // A regular file cannot be polled: the source says it reads on a timer.
    assert!(
        m.sources()[0].how.contains("not pollable"),
        "{:?}",
        m.sources()
    );
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "no rise, no event"
    );
    // The source keeps its fd open: rewrite the file in place, as the kernel does.
    std::fs::write(
        dir.path().join("memory.events"),
        "low 0\nhigh 2\nmax 0\noom 0\noom_kill 0\n",
    )
    .unwrap();
    let e = rx.recv_timeout(Duration::from_secs(2)).expect("high rose");
    assert_eq!((e.id, e.level), (id, Level::Low));
    match &e.detail {
        Detail::V2Events { rose, counters, .. } => {
            assert_eq!(rose, &vec!["high"]);
            assert_eq!(counters.high, 2);
        }
        other => panic!("{other:?}"),
    }
    std::fs::write(
        dir.path().join("memory.events"),
        "low 0\nhigh 2\nmax 1\noom 1\noom_kill 1\n",
    )
    .unwrap();
    let e = rx.recv_timeout(Duration::from_secs(2)).expect("oom rose");
    assert_eq!(e.level, Level::Critical);
    let Detail::V2Events { rose, .. } = &e.detail else {
        panic!()
    };
    assert_eq!(rose, &vec!["max", "oom", "oom_kill"]);
    // The v1-only source refuses a v2 group, naming both.
    let err = m.add(Source::v1_pressure_level(dir.path())).unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongCgroupVersion {
                needs: "v1",
                found: "v2",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn fake_v2_watermark_follows_current_and_max() {
    let dir = tempfile::tempdir().unwrap();
    fake_v2(dir.path(), 50 * MIB, &(100 * MIB).to_string());
    let m = Monitor::with_options(MonitorOptions {
        min_interval: Duration::from_millis(1),
    })
    .unwrap();
    let rx = m.subscribe();
    m.add(Source::Watermark {
        cgroup: dir.path().to_path_buf(),
        thresholds: Thresholds::WATERMARK,
        interval: Duration::from_millis(10),
    })
    .unwrap();
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "50 % is below every watermark"
    );
    std::fs::write(dir.path().join("memory.current"), format!("{}\n", 96 * MIB)).unwrap();
    let e = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("96 % crosses medium");
    assert_eq!(e.level, Level::Medium);
    assert_eq!(
        e.detail,
        Detail::Watermark {
            cgroup: dir.path().to_path_buf(),
            usage_bytes: 96 * MIB,
            limit_bytes: 100 * MIB,
            fraction: 0.96,
        }
    );
    // Lowering the limit under the usage is critical.
    std::fs::write(dir.path().join("memory.max"), format!("{}\n", 90 * MIB)).unwrap();
    let e = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("usage over max");
    assert_eq!(e.level, Level::Critical);

    // Without a limit there is nothing to compare with: a typed error at registration.
    let unlimited = tempfile::tempdir().unwrap();
    fake_v2(unlimited.path(), 1, "max");
    let err = m.add(Source::watermark(unlimited.path())).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NoLimit {
                file: "memory.max",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&unlimited.path().display().to_string())
    );
}

#[test]
fn fake_v2_removed_cgroup_ends_its_registration_with_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let cg = dir.path().join("ebb-fake");
    std::fs::create_dir(&cg).unwrap();
    fake_v2(&cg, 10, "100");
    let m = Monitor::new().unwrap();
    let rx = m.subscribe();
    let events = m.add(Source::v2_events(&cg)).unwrap();
    let wm = m.add(Source::watermark(&cg)).unwrap();
    let keep = m.add(Source::mem_available()).unwrap();
    assert_eq!(m.sources().len(), 3);
    std::fs::remove_dir_all(&cg).unwrap();
    let seen = collect(&rx, Duration::from_secs(3), |s| {
        s.iter()
            .filter(|e| matches!(e.detail, Detail::Removed { .. }))
            .count()
            >= 2
    });
    for id in [events, wm] {
        let ending: Vec<_> = seen.iter().filter(|e| e.id == id).collect();
        assert_eq!(ending.len(), 1, "one ending event for {id:?}: {seen:?}");
        assert_eq!(ending[0].detail, Detail::Removed { path: cg.clone() });
    }
    let ids: Vec<_> = m.sources().iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![keep]);
}

/// A real v1 cgroup removed under a live registration: the kernel signals the eventfds,
/// the monitor reports `Removed` once and keeps serving the rest.
#[test]
fn v1_removed_cgroup_ends_its_registration_with_an_event() {
    if !have_memcg() {
        return;
    }
    let sb = sandbox("pressure-rm", 64 * MIB, None);
    let path = sb.path().to_path_buf();
    let m = Monitor::new().unwrap();
    let rx = m.subscribe();
    let v1 = m.add(Source::v1_pressure_level(&path)).unwrap();
    let wm = m.add(Source::watermark(&path)).unwrap();
    let other = m.add(Source::mem_available()).unwrap();
    drop(sb);
    assert!(!path.exists());
    let seen = collect(&rx, Duration::from_secs(3), |s| {
        s.iter()
            .filter(|e| matches!(e.detail, Detail::Removed { .. }))
            .count()
            >= 2
    });
    for id in [v1, wm] {
        let e = seen
            .iter()
            .find(|e| e.id == id)
            .unwrap_or_else(|| panic!("no event for {id:?}: {seen:?}"));
        assert_eq!(e.detail, Detail::Removed { path: path.clone() });
    }
    // Exactly one ending event per registration, no error loop.
    let more = collect(&rx, Duration::from_millis(300), |_| false);
    assert!(more.iter().all(|e| e.id == other), "{more:?}");
    let ids: Vec<_> = m.sources().iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![other]);
}

#[test]
fn bad_cgroup_paths_are_typed_errors_naming_the_path() {
    let m = Monitor::new().unwrap();
    let missing = PathBuf::from("/sys/fs/cgroup/memory/ebb-does-not-exist");
    for source in [
        Source::v1_pressure_level(&missing),
        Source::watermark(&missing),
        Source::v2_events(&missing),
    ] {
        let err = m.add(source).unwrap_err();
        assert!(
            matches!(&err, Error::NoSuchCgroup { path } if *path == missing),
            "{err}"
        );
        assert!(err.to_string().contains("ebb-does-not-exist"));
    }
    let err = Monitor::auto_for(&missing).unwrap_err();
    assert!(matches!(err, Error::NoSuchCgroup { .. }), "{err}");

    let plain = tempfile::tempdir().unwrap();
    let err = m.add(Source::watermark(plain.path())).unwrap_err();
    assert!(
        matches!(&err, Error::NotMemoryCgroup { path } if path == plain.path()),
        "{err}"
    );
    assert!(
        err.to_string().contains("memory.current"),
        "the message names the rule: {err}"
    );
    // The PSI file of a directory that is not a cgroup.
    let err = m
        .add(Source::psi_cgroup(
            plain.path(),
            Stall::Some,
            Duration::from_millis(100),
            Duration::from_secs(2),
        ))
        .unwrap_err();
    assert!(matches!(err, Error::NotMemoryCgroup { .. }), "{err}");
    assert!(m.sources().is_empty());
}

#[test]
fn psi_windows_the_kernel_refuses_are_explained() {
    if !Path::new("/proc/pressure/memory").exists() {
        eprintln!("SKIP: no PSI");
        return;
    }
    let m = Monitor::new().unwrap();
    // Fixed rules, checked before asking the kernel.
    let err = m
        .add(Source::psi_system(
            Stall::Some,
            Duration::from_millis(10),
            Duration::from_millis(100),
        ))
        .unwrap_err();
    assert!(matches!(err, Error::PsiArgs { .. }), "{err}");
    assert!(err.to_string().contains("/proc/pressure/memory"));
    // A window this kernel refuses (LAB.md: only whole multiples of 2 s).
    let fd_before = fd_count();
    let err = m
        .add(Source::psi_system(
            Stall::Some,
            Duration::from_millis(150),
            Duration::from_secs(1),
        ))
        .unwrap_err();
    match &err {
        Error::PsiWindow {
            path,
            window,
            nearest,
            rule,
        } => {
            assert_eq!(path, Path::new("/proc/pressure/memory"));
            assert_eq!(*window, Duration::from_secs(1));
            assert_eq!(*nearest, Some(Duration::from_secs(2)));
            assert!(rule.contains("multiples of 2 s"));
        }
        other => panic!("expected PsiWindow, got {other}"),
    }
    assert!(
        err.to_string().contains("nearest accepted window: 2s"),
        "{err}"
    );
    assert_eq!(fd_count(), fd_before, "probing leaves no fd open");
    // The window it suggested works.
    m.add(Source::psi_system(
        Stall::Some,
        Duration::from_millis(150),
        Duration::from_secs(2),
    ))
    .unwrap();
}

/// Runs as root: re-executes this test as `nobody`, where writing `cgroup.event_control`
/// of a root-owned sandbox is refused.
#[test]
fn no_permission_is_a_typed_error() {
    const CHILD: &str = "EBB_PRESSURE_TEST_CGROUP";
    if let Some(cg) = std::env::var_os(CHILD) {
        // The unprivileged child.
        let m = Monitor::new().unwrap();
        let err = m
            .add(Source::v1_pressure_level(PathBuf::from(&cg)))
            .unwrap_err();
        match &err {
            Error::Permission { path, rule, .. } => {
                assert_eq!(path, &PathBuf::from(&cg).join("cgroup.event_control"));
                assert!(rule.contains("write access"));
            }
            other => panic!("expected Permission, got {other}"),
        }
        println!("CHILD-OK {err}");
        return;
    }
    if !have_memcg() {
        return;
    }
    let sb = sandbox("pressure-perm", 64 * MIB, None);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "no_permission_is_a_typed_error",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, sb.path())
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHILD-OK permission denied"),
        "child: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Drop the monitor while events are flowing: its thread is gone and every fd it opened
/// (epoll, eventfds, trigger fds, files) is closed.
#[test]
fn drop_mid_stream_joins_the_thread_and_closes_every_fd() {
    if !have_memcg() {
        return;
    }
    let sb = sandbox("pressure-drop", 64 * MIB, Some(0));
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    hog.alloc(60 * MIB).unwrap();
    let before = fd_count();
    let m = Monitor::new().unwrap();
    m.add(Source::v1_pressure_level(sb.path())).unwrap();
    m.add(Source::watermark(sb.path())).unwrap();
    m.add(Source::mem_available()).unwrap();
    if Path::new("/proc/pressure/memory").exists() {
        m.add(Source::psi_system(
            Stall::Some,
            Duration::from_millis(150),
            Duration::from_secs(2),
        ))
        .unwrap();
    }
    let rx = m.subscribe();
    m.on_event(|_| {});
    assert!(fd_count() > before + 5, "the sources hold fds");
    rx.recv_timeout(Duration::from_secs(3))
        .expect("events are flowing");
    let tid = m.thread_id().unwrap();
    assert!(Path::new(&format!("/proc/self/task/{tid}")).exists());
    drop(m);
    assert!(
        !Path::new(&format!("/proc/self/task/{tid}")).exists(),
        "monitor thread joined"
    );
    assert_eq!(fd_count(), before, "every fd closed");
    // The channel ends with the monitor.
    while rx.try_recv().is_ok() {}
    assert!(matches!(rx.recv(), Err(std::sync::mpsc::RecvError)));
}

#[test]
fn auto_for_a_v1_sandbox_says_what_it_picked() {
    if !have_memcg() {
        return;
    }
    let sb = sandbox("pressure-auto", 64 * MIB, None);
    let m = Monitor::auto_for(sb.path()).unwrap();
    let picked: Vec<_> = m
        .choices()
        .iter()
        .filter(|c| c.picked)
        .map(|c| c.kind)
        .collect();
    assert!(
        picked.contains(&SourceKind::V1PressureLevel),
        "{:?}",
        m.choices()
    );
    assert!(picked.contains(&SourceKind::Watermark), "{:?}", m.choices());
    assert!(
        !picked.contains(&SourceKind::MemAvailable),
        "{:?}",
        m.choices()
    );
    assert!(m.choices().iter().all(|c| !c.why.is_empty()));
    assert_eq!(m.sources().len(), picked.len());
    let snap = m.snapshot();
    assert_eq!(snap.cgroup.as_deref(), Some(sb.path()));
    assert_eq!(snap.limit_bytes, Some(64 * MIB));
    assert!(snap.mem_available_bytes.is_some());

    // A sandbox without a limit: no watermark, MemAvailable instead.
    let open = Sandbox::new(SandboxConfig {
        name_hint: "pressure-auto-nolimit".into(),
        memory_limit: None,
        swap_limit: None,
    })
    .unwrap();
    let m = Monitor::auto_for(open.path()).unwrap();
    let wm = m
        .choices()
        .iter()
        .find(|c| c.kind == SourceKind::Watermark)
        .unwrap();
    assert!(!wm.picked && wm.why.contains("no memory limit"), "{wm:?}");
    assert!(
        m.choices()
            .iter()
            .any(|c| c.kind == SourceKind::MemAvailable && c.picked)
    );
}

/// The v1 watermark is woken by kernel usage thresholds; lowering the limit under the
/// usage crosses no threshold, so the one-second re-check reports it and re-arms.
#[test]
fn v1_watermark_follows_a_changed_limit() {
    if !have_memcg() {
        return;
    }
    let sb = sandbox("pressure-relimit", 64 * MIB, None);
    let mut hog = Hog::spawn(Some(&sb)).unwrap();
    hog.alloc(40 * MIB).unwrap();
    let m = Monitor::new().unwrap();
    let rx = m.subscribe();
    m.add(Source::watermark(sb.path())).unwrap();
    assert!(
        m.sources()[0].how.contains("v1 usage thresholds"),
        "{:?}",
        m.sources()
    );
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "about 65 % of the limit: quiet"
    );
    sb.cgroup().set_limit(Some(44 * MIB)).unwrap();
    let e = rx
        .recv_timeout(Duration::from_secs(3))
        .expect("the re-check sees the new limit");
    let Detail::Watermark {
        limit_bytes,
        fraction,
        ..
    } = e.detail
    else {
        panic!("{e:?}")
    };
    assert_eq!(limit_bytes, 44 * MIB);
    assert_eq!(Thresholds::WATERMARK.level(fraction), Some(e.level));
    // Re-armed at the new limit: growing past 99 % of 44 MiB is reported at once as critical.
    let _ = hog.fill(8 * MIB);
    let seen = collect(&rx, Duration::from_secs(3), |s| {
        s.iter().any(|e| e.level == Level::Critical)
    });
    assert!(seen.iter().any(|e| e.level == Level::Critical), "{seen:?}");
}

/// `Monitor::auto()` registers on the caller's own memory cgroup, and LAB.md forbids
/// touching groups ebb did not set up: so this test re-executes itself inside a Sandbox.
#[test]
fn auto_for_this_process_names_every_choice() {
    const CHILD: &str = "EBB_PRESSURE_AUTO_CHILD";
    if let Some(expected) = std::env::var_os(CHILD) {
        let m = Monitor::auto().unwrap();
        for c in m.choices() {
            println!(
                "{} {} picked={} ({})",
                c.kind,
                c.target.display(),
                c.picked,
                c.why
            );
        }
        let picked: Vec<_> = m.choices().iter().filter(|c| c.picked).collect();
        assert!(
            picked
                .iter()
                .any(|c| c.kind == SourceKind::V1PressureLevel && c.target == Path::new(&expected))
        );
        assert!(
            picked.iter().any(|c| c.kind == SourceKind::Watermark),
            "the sandbox has a limit"
        );
        assert!(m.choices().iter().all(|c| !c.why.is_empty()));
        assert_eq!(m.sources().len(), picked.len());
        // Shared with the heap and the cache across threads.
        fn shareable<T: Send + Sync>(_: &T) {}
        shareable(&m);
        println!("CHILD-OK");
        return;
    }
    if !have_memcg() {
        return;
    }
    let sb = sandbox("pressure-autoself", 256 * MIB, None);
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "auto_for_this_process_names_every_choice",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD, sb.path())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let out = sb.spawn(&mut cmd).unwrap().wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHILD-OK"),
        "child: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
}

#[test]
fn fake_v2_memory_pressure_that_cannot_be_polled_is_not_psi() {
    let dir = tempfile::tempdir().unwrap();
    fake_v2(dir.path(), 1, "100");
    std::fs::write(
        dir.path().join("memory.pressure"),
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    )
    .unwrap();
    let m = Monitor::new().unwrap();
    let err = m
        .add(Source::psi_cgroup(
            dir.path(),
            Stall::Full,
            Duration::from_millis(100),
            Duration::from_secs(2),
        ))
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotPsi { path, .. } if path.ends_with("memory.pressure")),
        "{err}"
    );
}
