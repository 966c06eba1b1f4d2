//! The `ebbd` command: check-config, capabilities, signals, the socket's permissions and
//! status, metrics, and discovery at scale.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ebbd::config::Config;
use ebbd::daemon::{Daemon, Options};
use ebbd::server::{Context, handle};

fn ebbd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ebbd"))
}

#[test]
fn check_config_reports_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[compaction]\nmin_interval_s = 5\n").unwrap();
    let out = ebbd().arg("check-config").arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    for (text, pos, word) in [
        ("[kill]\nmin_adj = 100\n  bogus = 1\n", ":3:3:", "bogus"),
        ("[ranks]\nscan_interval_ms = 5\n", ":2:", "10..=60000"),
        ("[kill]\nmin_level = \"severe\"\n", ":2:13:", "severe"),
        ("[compaction\n", ":1:", ""),
        ("[ranks]\nprevious = 950\n", ":2:", "ranks.cached"),
        ("[metrics]\nlisten = \"10.0.0.1:9750\"\n", ":2:", "loopback"),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let out = ebbd().arg("check-config").arg(&bad).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text:?}: {err}");
        assert!(err.contains(&format!("bad.toml{pos}")), "{text:?}: {err}");
        assert!(err.contains(word), "{text:?}: {err}");
    }
    // Running with a bad config refuses to start, naming the place.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[socket]\nmod = 0o600\n").unwrap();
    let out = ebbd().arg("--config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml:2:1"));
}

#[test]
fn without_capabilities_exits_1_naming_cap_sys_nice() {
    let out = ebbd()
        .args(["--socket", "/nonexistent/ebbd.sock"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("CAP_SYS_NICE"), "{err}");
    assert!(err.contains("CAP_KILL"), "{err}");
}

#[test]
fn sigterm_exits_0_and_sighup_keeps_the_old_config_on_error() {
    let sb = sandbox("ebbd_signals");
    let mut child = sb.spawn(Command::new("sleep").arg("600")).unwrap();
    set_adj(child.id(), 850);
    let mut d = Ebbd::start(&sb, "", &[]);
    let s = d.wait_status(Duration::from_secs(2), |s| {
        n(&s["processes"]["previous"]) == 1
    });
    assert_eq!(n(&s["processes"]["previous"]), 1, "{s}");
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    // A bad new file: kept the old one, said why.
    std::fs::write(&d.config, "[ranks]\ncached = 5000\n").unwrap();
    d.signal(libc::SIGHUP);
    let t0 = Instant::now();
    while d
        .log_events("config reload refused; keeping the old config")
        .is_empty()
    {
        assert!(t0.elapsed() < Duration::from_secs(5), "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.log_text().contains("ebbd.toml:2:"), "{}", d.log_text());
    assert_eq!(d.status()["ok"], true);
    // A good one: reloaded.
    std::fs::write(
        &d.config,
        config_text(sb.path(), &d.socket, "[ranks]\ncached = 800\n"),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    let t0 = Instant::now();
    while d.log_events("config reloaded").is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5), "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The new bands apply to processes already known: it entered cached, and a compaction
    // was considered (and skipped: `sleep` is too small).
    let s = d.wait_status(Duration::from_secs(2), |s| {
        n(&s["compactions_skipped"]["small"]) == 1
    });
    assert_eq!(n(&s["processes"]["cached"]), 1, "{s}");
    assert_eq!(n(&s["compactions_skipped"]["small"]), 1, "{s}");
    let socket = d.socket.clone();
    assert_eq!(d.stop(), Some(0));
    assert!(!socket.exists(), "socket left behind");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn mark_needs_root_or_the_owner_and_status_has_the_contract_fields() {
    let sb = sandbox("ebbd_perm");
    let mut child = sb.spawn(Command::new("sleep").arg("600")).unwrap();
    let (wake, _rx) = std::sync::mpsc::channel();
    let ctx = Context {
        marks: Arc::default(),
        stats: Arc::default(),
        scope: Some(sb.cgroup().clone()),
        wake,
    };
    let req = format!(
        "{{\"cmd\":\"mark\",\"pid\":{},\"band\":\"cached\"}}",
        child.id()
    );
    // The child runs as root; uid 65534 is neither root nor its owner.
    let r = handle(&req, 65534, &ctx);
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("permission denied"),
        "{r}"
    );
    assert!(ctx.marks.lock().unwrap().is_empty());
    let r = handle(&req, 0, &ctx);
    assert_eq!(r["ok"], true, "{r}");
    assert!(ctx.marks.lock().unwrap().contains_key(&child.id()));
    for bad in [
        "{",
        "{\"cmd\":\"x\"}",
        "{\"cmd\":\"mark\",\"pid\":-1,\"band\":\"cached\"}",
    ] {
        assert_eq!(handle(bad, 0, &ctx)["ok"], false, "{bad}");
    }
    let s = handle("{\"cmd\":\"status\"}", 65534, &ctx);
    for key in [
        "ok",
        "pid",
        "uptime_s",
        "dry_run",
        "processes",
        "compactions",
        "compactions_cancelled",
        "compaction_bytes_advised",
        "rss_reclaimed_bytes",
        "swap_gained_bytes",
        "kills",
        "pressure_events",
        "cpu_seconds",
        "prefetches",
    ] {
        assert!(s.get(key).is_some(), "status lacks {key}: {s}");
    }
    for band in [
        "foreground",
        "visible",
        "perceptible",
        "previous",
        "cached",
        "other",
    ] {
        assert!(s["processes"].get(band).is_some(), "{s}");
    }
    assert!(s["kills"].get("total").is_some() && s["kills"].get("by_reason").is_some());
    child.kill().unwrap();
    child.wait().unwrap();
}

/// In-process daemon: Prometheus text on loopback.
#[test]
fn metrics_are_served_on_loopback() {
    let sb = sandbox("ebbd_metrics");
    let mut child = sb.spawn(Command::new("sleep").arg("600")).unwrap();
    set_adj(child.id(), 950);
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.scope.cgroup = sb.path().display().to_string();
    config.socket.path = dir.path().join("s.sock");
    config.metrics.listen = "127.0.0.1:0".into();
    config.kill.enabled = false;
    config.ranks.scan_interval_ms = 20;
    let mut daemon = Daemon::start(Options {
        config,
        ..Options::default()
    })
    .unwrap();
    let addr = daemon.metrics_addr.unwrap();
    let control = daemon.control();
    let runner = std::thread::spawn(move || daemon.run());
    std::thread::sleep(Duration::from_millis(300));
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    control.stop();
    runner.join().unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    for m in [
        "ebbd_compactions_total",
        "ebbd_rss_reclaimed_bytes_total",
        "ebbd_pressure_events_total",
        "ebbd_kill_seconds_total",
        "ebbd_scan_seconds_total",
        "ebbd_processes{band=\"cached\"} 1",
        "ebbd_compactions_skipped_total{reason=\"small\"} 1",
    ] {
        assert!(text.contains(m), "missing {m}:\n{text}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Discovery at scale: 2000 sleeping children; every one found, one adj change detected,
/// and the CPU cost per scan printed (scoped: cgroup.procs; unscoped: all of /proc).
#[test]
fn scan_finds_2000_children_and_detects_one_change() {
    const N: usize = 2000;
    let sb = sandbox("ebbd_scan");
    let mut children = Vec::with_capacity(N);
    for _ in 0..N {
        children.push(sb.spawn(Command::new("sleep").arg("600")).unwrap());
    }
    let ranks = ebbd::config::Ranks::default();
    let mut scanner = ebbd::scan::Scanner::new();
    let (changes, first) = scanner.scan(Some(sb.cgroup()), &ranks, &[]);
    assert_eq!(changes.len(), N, "first scan sees every child as new");
    let cpu = || ebbd::metrics::cpu_seconds();
    let rounds = 20;
    let c0 = cpu();
    let t0 = Instant::now();
    for _ in 0..rounds {
        let (changes, _) = scanner.scan(Some(sb.cgroup()), &ranks, &[]);
        assert!(changes.is_empty(), "{changes:?}");
    }
    let scoped_cpu = (cpu() - c0) / rounds as f64;
    let scoped_wall = t0.elapsed() / rounds;
    set_adj(children[7].id(), 950);
    let (changes, _) = scanner.scan(Some(sb.cgroup()), &ranks, &[]);
    assert_eq!(changes, vec![ebbd::scan::Change::Changed(children[7].id())]);
    // Unscoped: the whole of /proc.
    let mut all = ebbd::scan::Scanner::new();
    all.scan(None, &ranks, &[]);
    let c0 = cpu();
    let t0 = Instant::now();
    let mut pids = 0;
    for _ in 0..rounds {
        let (_, st) = all.scan(None, &ranks, &[]);
        pids = st.pids;
    }
    let all_cpu = (cpu() - c0) / rounds as f64;
    let all_wall = t0.elapsed() / rounds;
    println!(
        "scan of {N} scoped processes: first {:?}; steady {:.2} ms CPU ({:.2} us/process), {:?} wall",
        first.elapsed,
        scoped_cpu * 1e3,
        scoped_cpu * 1e6 / N as f64,
        scoped_wall
    );
    println!(
        "scan of all {pids} /proc processes: {:.2} ms CPU ({:.2} us/process), {:?} wall; at 200 ms a scan: {:.1}% of one CPU",
        all_cpu * 1e3,
        all_cpu * 1e6 / pids as f64,
        all_wall,
        all_cpu / 0.2 * 100.0
    );
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}
