//! The app-switch benchmark on a tiny configuration: real apps in a real memory cgroup
//! with real zram swap (needs root, a memory cgroup and the zram module, as on the lab
//! machines). Checks the report's invariants, not timings.
//!
//! The `kernel` policy always runs; `ebbd` and `kill-only` run when an `ebbd` binary is
//! found (`$EBBD`, or next to the test binary), and are reported skipped otherwise.
use ebb_lab::bench::app_switch::{self, Options, Policy, PolicyReport};

fn check(name: &str, r: &PolicyReport, switches: u64, apps: u64) {
    assert_eq!(r.switches, switches, "{name}: every switch replayed");
    assert_eq!(
        r.hot + r.cold,
        r.switches,
        "{name}: every switch is hot or cold"
    );
    assert!(r.failed <= r.cold, "{name}: failures are cold switches");
    assert!(
        (0.0..=1.0).contains(&r.hot_start_ratio),
        "{name}: ratio {}",
        r.hot_start_ratio
    );
    assert_eq!(
        r.hot_from_ram + r.hot_from_swap,
        r.hot,
        "{name}: hot from RAM + swap"
    );
    assert_eq!(
        r.resume_ms.len() as u64,
        r.hot,
        "{name}: one latency per hot start"
    );
    assert!(
        r.resume_ms.iter().all(|&l| l > 0.0),
        "{name}: latencies positive"
    );
    // Launches plus cold switches, minus those that never came up.
    assert!(r.cold_starts >= apps, "{name}: every app was launched cold");
    assert!(r.cold_start_ms.iter().all(|&l| l > 0.0));
    if r.hot > 0 {
        let (p50, p95, p99) = (
            r.resume_p50_ms.unwrap(),
            r.resume_p95_ms.unwrap(),
            r.resume_p99_ms.unwrap(),
        );
        assert!(
            0.0 < p50 && p50 <= p95 && p95 <= p99,
            "{name}: {p50} {p95} {p99}"
        );
    }
    assert!(r.cold_start_p50_ms.unwrap() > 0.0);
    assert_eq!(
        r.corrupt_pages, 0,
        "{name}: no page may come back wrong: {:?}",
        r.notes
    );
    assert!(
        r.foreground_mib_per_s > 0.0,
        "{name}: the foreground app worked"
    );
    if let Some(c) = r.daemon_cpu_pct {
        assert!(c >= 0.0);
    }
}

#[test]
fn zram_tiny_run_keeps_its_invariants_and_leaves_nothing_behind() {
    // scripts/test builds every binary first, ebbd included.
    if let Err(e) = app_switch::ebbd_program(None) {
        panic!("the ebbd binary is needed (cargo build --workspace --bins): {e}");
    }
    let policies = vec![Policy::Kernel, Policy::KillOnly, Policy::Ebbd];
    let out = tempfile::tempdir().unwrap();
    let opts = Options {
        quick: true,
        apps: Some(3),
        app_mib: Some(24),
        budget: Some(48 << 20),
        policies: policies.clone(),
        seed: Some(3),
        switches: Some(8),
        dwell_ms: Some(50),
        rounds: Some(50),
        out_dir: Some(out.path().to_path_buf()),
        ..Options::default()
    };
    let mut calls = 0u64;
    let report = app_switch::run(&opts, |p| {
        if let Some(p) = p {
            assert!(p.done <= p.total);
            calls += 1;
        }
    })
    .unwrap();
    assert_eq!(calls, policies.len() as u64 * (3 + 8));
    assert_eq!(report.config.trace.len(), 8);
    for p in &policies {
        match report.policies.get(p.name()) {
            Some(r) => check(p.name(), r, 8, 3),
            None => panic!(
                "{} did not run: {:?}",
                p.name(),
                report.skipped.get(p.name())
            ),
        }
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("app-switch.json")).unwrap())
            .unwrap();
    for key in [
        "hot_start_ratio",
        "resume_p95_ms",
        "cold_start_p50_ms",
        "kills",
        "daemon_cpu_pct",
    ] {
        assert!(
            json["policies"]["kernel"].get(key).is_some(),
            "JSON lacks policies.kernel.{key}"
        );
    }
    assert!(report.render().contains("hot-start ratio"));
    // Nothing left behind: no sandbox of this process, no app, no data files.
    let me = std::process::id();
    let root = std::path::Path::new("/sys/fs/cgroup/memory");
    if root.is_dir() {
        let left: Vec<_> = std::fs::read_dir(root)
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("ebb-appswitch") && n.contains(&format!("-{me}-"))
            })
            .collect();
        assert!(left.is_empty(), "sandboxes left: {left:?}");
    }
    let files: Vec<_> = std::fs::read_dir("/var/tmp")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name().to_string_lossy().contains("ebb-appswitch-")
                && e.file_name().to_string_lossy().contains(&format!("-{me}-"))
        })
        .collect();
    assert!(files.is_empty(), "data dirs left: {files:?}");
    let apps = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let pid = e.file_name().to_string_lossy().into_owned();
            pid.parse::<u32>().is_ok()
                && std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
                    s.contains("(ebb-app)") && s.split_whitespace().nth(3) == Some(&me.to_string())
                })
        })
        .count();
    assert_eq!(apps, 0, "apps of this test still running");
}
