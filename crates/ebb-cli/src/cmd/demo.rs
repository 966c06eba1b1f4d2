//! `ebb demo`: the main job. Quick versions of the benchmarks, the lab set up and torn down,
//! and one table of what ebb achieved against the baselines.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use ebb::Capabilities;
use serde_json::{Value, json};

use crate::output::Table;

/// Arguments of `ebb demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Where the charts and the JSON reports go.
    #[arg(long, default_value = "ebb-demo")]
    out: PathBuf,
    /// Print the summary as JSON (the full reports are in --out either way).
    #[arg(long)]
    json: bool,
}

/// One line of the summary.
struct Row {
    claim: &'static str,
    ebb: String,
    baseline: String,
    result: String,
    target: &'static str,
    met: Option<bool>,
}

impl Row {
    fn json(&self) -> Value {
        json!({
            "claim": self.claim, "ebb": self.ebb, "baseline": self.baseline,
            "result": self.result, "target": self.target, "met": self.met,
        })
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn opt(x: Option<f64>, digits: usize, unit: &str) -> String {
    x.map_or("-".to_string(), |v| format!("{v:.digits$}{unit}"))
}

fn step(name: &str) {
    eprintln!("\n== {name}");
}

fn save(out: &std::path::Path, name: &str, value: &impl serde::Serialize) -> Result<()> {
    let path = out.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs `ebb demo`.
pub fn run(args: Args) -> Result<()> {
    use ebb_lab::bench;
    let started = Instant::now();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let caps = Capabilities::detect();
    let lab_ok = caps.privileges.root && caps.cgroup.version.is_some();
    eprintln!(
        "ebb demo: quick versions of the benchmarks on this machine (kernel {}), side by side in one run.",
        caps.kernel
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();

    // The lab: one zram swap for the whole demo, removed at the end (also on error).
    let _swap = if lab_ok {
        match ebb_lab::ZramSwap::shared(2 << 30, "lz4") {
            Ok(s) => {
                eprintln!(
                    "lab: zram swap on {} (2 GiB, lz4), set up by this demo and removed when it ends",
                    s.device().display()
                );
                Some(s)
            }
            Err(e) => {
                skipped.push(format!("zram swap could not be set up ({e}): the benchmarks that need it set up their own or fail"));
                None
            }
        }
    } else {
        let why = if !caps.privileges.root {
            "not running as root"
        } else {
            "no memory cgroup controller is mounted"
        };
        for what in [
            "app-switch (memory cgroup budget, zram swap, ebbd's process_madvise needs CAP_SYS_NICE)",
            "heap pressure scenario (a neighbour in a memory cgroup)",
            "volatile torture run (a memory cgroup squeezed by a neighbour)",
            "purgeable cache vs plain LRU (a memory cgroup)",
            "pressure-event latency (a memory cgroup with a limit)",
        ] {
            skipped.push(format!("{what}: {why}"));
        }
        None
    };

    if lab_ok {
        step("app-switch: hot starts vs cold starts (quick profile, all policies)");
        let out = args.out.join("app-switch");
        let opts = bench::app_switch::Options {
            quick: true,
            out_dir: Some(out.clone()),
            ..Default::default()
        };
        match bench::app_switch::run(&opts, bench::app_switch::terminal_progress()) {
            Ok(r) => {
                save(&args.out, "app-switch", &r)?;
                let p = |n: &str| r.policies.get(n);
                let t = &r.targets;
                rows.push(Row {
                    claim: "cached apps resumed hot (hot-start ratio)",
                    ebb: opt(p("ebbd").map(|x| x.hot_start_ratio), 2, ""),
                    baseline: format!(
                        "kill-only {}, earlyoom {}, kernel {}",
                        opt(p("kill-only").map(|x| x.hot_start_ratio), 2, ""),
                        opt(p("earlyoom").map(|x| x.hot_start_ratio), 2, ""),
                        opt(p("kernel").map(|x| x.hot_start_ratio), 2, "")
                    ),
                    result: opt(t.ebbd_vs_kill_only_hot_ratio, 2, "x kill-only"),
                    target: ">= 2x kill-only",
                    met: t.ebbd_vs_kill_only_hot_ratio.map(|v| v >= 2.0),
                });
                rows.push(Row {
                    claim: "resume p95 vs cold start p50",
                    ebb: opt(p("ebbd").and_then(|x| x.resume_p95_ms), 1, " ms"),
                    baseline: format!(
                        "cold start {}",
                        opt(p("ebbd").and_then(|x| x.cold_start_p50_ms), 0, " ms")
                    ),
                    result: opt(t.ebbd_resume_p95_over_cold_p50, 3, ""),
                    target: "<= 0.33",
                    met: t.ebbd_resume_p95_over_cold_p50.map(|v| v <= 1.0 / 3.0),
                });
                rows.push(Row {
                    claim: "ebbd CPU over the run",
                    ebb: opt(t.ebbd_cpu_pct, 2, "% of a core"),
                    baseline: format!(
                        "ebbd besides its page-out {}; kill-only {}",
                        opt(
                            p("ebbd").and_then(|x| x.daemon_cpu_pct_besides_compaction),
                            2,
                            "%"
                        ),
                        opt(p("kill-only").and_then(|x| x.daemon_cpu_pct), 2, "%")
                    ),
                    result: opt(t.ebbd_cpu_pct, 2, "%"),
                    target: "<= 2%",
                    met: t.ebbd_cpu_pct.map(|v| v <= 2.0),
                });
                for (name, why) in &r.skipped {
                    skipped.push(format!("app-switch policy {name}: {why}"));
                }
            }
            Err(e) => skipped.push(format!("app-switch failed: {e}")),
        }
    }

    step("heap: SPLITTABLE semantics against the floor, glibc, jemalloc, mimalloc (quick)");
    let heap_opts = bench::heap::Options {
        quick: true,
        pressure: lab_ok,
        ..Default::default()
    };
    match bench::heap::run(&heap_opts) {
        Ok(r) => {
            save(&args.out, "heap", &r)?;
            let worst = r
                .reuse
                .iter()
                .filter_map(|(span, row)| row.get("ebb").map(|f| (span.clone(), f.vs_floor)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            let ebb_faults: u64 = r
                .reuse
                .values()
                .filter_map(|row| row.get("ebb"))
                .map(|f| f.faults)
                .sum();
            let glibc_faults: u64 = r
                .reuse
                .values()
                .filter_map(|row| row.get("glibc"))
                .map(|f| f.faults)
                .sum();
            if let Some((span, ratio)) = worst {
                rows.push(Row {
                    claim: "heap reuse time vs keeping one buffer (worst span)",
                    ebb: format!("{ratio:.2}x at {span}"),
                    baseline: r
                        .reuse
                        .get(&span)
                        .and_then(|row| {
                            Some(format!(
                                "glibc {:.2}x, jemalloc {:.2}x, mimalloc {:.2}x",
                                row.get("glibc")?.vs_floor,
                                row.get("jemalloc")?.vs_floor,
                                row.get("mimalloc")?.vs_floor
                            ))
                        })
                        .unwrap_or_default(),
                    result: format!("{ratio:.2}x floor"),
                    target: "<= 1.1x",
                    met: Some(ratio <= 1.1),
                });
            }
            // The floor touches reuse_bytes / 4 KiB pages per burst, in every span size.
            let pages = (r.bursts * (r.reuse_bytes / 4096) * r.reuse.len()) as u64;
            rows.push(Row {
                claim: "heap page faults over all reuse bursts",
                ebb: ebb_faults.to_string(),
                baseline: format!("glibc {glibc_faults}"),
                result: format!("{ebb_faults}/{pages} pages"),
                target: "<= 1% of the floor's pages",
                met: (pages > 0).then_some(ebb_faults * 100 <= pages),
            });
            if let Some(thp) = r.thp.get("ebb") {
                let others: Vec<String> = r
                    .thp
                    .iter()
                    .filter(|(k, _)| k.as_str() != "ebb")
                    .map(|(k, v)| format!("{k} {}", pct(v.coverage)))
                    .collect();
                rows.push(Row {
                    claim: "THP coverage of the heap, no pressure",
                    ebb: pct(thp.coverage),
                    baseline: others.join(", "),
                    result: pct(thp.coverage),
                    target: ">= 99%",
                    met: Some(thp.coverage >= 0.99),
                });
            }
            if let Some(p) = &r.pressure {
                let keep = p.runs.get("ebb-keep").map(|k| k.neighbour_killed);
                rows.push(Row {
                    claim: "heap memory released within 1 s of pressure",
                    ebb: format!(
                        "{}, neighbour {}",
                        pct(p.released_fraction_1s),
                        if p.neighbour_killed {
                            "KILLED"
                        } else {
                            "survived"
                        }
                    ),
                    baseline: format!(
                        "keep-everything: neighbour {}",
                        match keep {
                            Some(true) => "killed",
                            Some(false) => "survived",
                            None => "-",
                        }
                    ),
                    result: pct(p.released_fraction_1s),
                    target: ">= 90%, neighbour survives",
                    met: Some(p.released_fraction_1s >= 0.9 && !p.neighbour_killed),
                });
            }
        }
        Err(e) => skipped.push(format!("heap benchmark failed: {e}")),
    }

    step("volatile memory: pin/unpin (MADV_FREE_UNDO) cost and torture (quick)");
    let vol_opts = bench::volatile::Options {
        quick: true,
        torture: lab_ok,
        ..Default::default()
    };
    match bench::volatile::run(&vol_opts) {
        Ok(r) => {
            save(&args.out, "volatile", &r)?;
            rows.push(Row {
                claim: "pin+unpin cost vs the floor, 4 KiB pages",
                ebb: format!("{:.0} ns/page", r.cycle.ebb_4k_ns),
                baseline: format!(
                    "floor {:.0}, cookie {:.0}, DONTNEED+regenerate {:.0} ns/page",
                    r.cycle.floor_4k_ns, r.cycle.cookie_4k_ns, r.cycle.dontneed_4k_ns
                ),
                result: format!("{:.2}x floor", r.ratio_to_floor_4k),
                target: "<= 1.2x",
                met: Some(r.ratio_to_floor_4k <= 1.2),
            });
            rows.push(Row {
                claim: "pin+unpin cost vs the floor, THP",
                ebb: format!("{:.2} ns/page", r.cycle.ebb_thp_ns),
                baseline: format!("floor {:.2} ns/page", r.cycle.floor_thp_ns),
                result: format!("{:.2}x floor", r.ratio_to_floor_thp),
                target: "<= 1.2x",
                met: Some(r.ratio_to_floor_thp <= 1.2),
            });
            rows.push(Row {
                claim: "unpin cost vs Chromium's cookie scheme",
                ebb: format!("{:.0} ns/page", r.cycle.ebb_unpin_4k_ns),
                baseline: format!("cookie {:.0} ns/page", r.cycle.cookie_unpin_4k_ns),
                result: format!("{:.2}x cookie", r.unpin_ratio_to_cookie_4k),
                target: "< 1x",
                met: Some(r.unpin_ratio_to_cookie_4k < 1.0),
            });
            if lab_ok {
                rows.push(Row {
                    claim: "torture under a real squeeze: pins, lost, corrupt",
                    ebb: format!(
                        "{} pins, {} lost, {} corrupt",
                        r.torture.page_pins, r.torture.pages_lost, r.torture.corruptions
                    ),
                    baseline: String::new(),
                    result: format!("{} corruptions", r.torture.corruptions),
                    target: "0 corrupt, > 0 lost",
                    met: Some(r.torture.corruptions == 0 && r.torture.pages_lost > 0),
                });
            }
        }
        Err(e) => skipped.push(format!("volatile benchmark failed: {e}")),
    }

    if lab_ok {
        step("purgeable cache vs a plain LRU, squeezed by a neighbour (quick)");
        match bench::cache::run(&bench::cache::Options { quick: true }) {
            Ok(r) => {
                save(&args.out, "cache", &r)?;
                rows.push(Row {
                    claim: "cache under a squeezing neighbour",
                    ebb: format!(
                        "{} (hit rate {:.2}, {} purged, {} corrupt)",
                        if r.ebb.killed { "KILLED" } else { "survived" },
                        r.ebb.hit_rate,
                        r.ebb.purged,
                        r.ebb.corrupt
                    ),
                    baseline: format!(
                        "plain LRU {}",
                        if r.plain.killed {
                            "OOM-killed"
                        } else {
                            "survived"
                        }
                    ),
                    result: String::new(),
                    target: "ebb survives",
                    met: Some(!r.ebb.killed && r.ebb.corrupt == 0),
                });
            }
            Err(e) => skipped.push(format!("cache benchmark failed: {e}")),
        }

        step("pressure events: delay from the limit to the first event (quick)");
        match bench::pressure::run(&bench::pressure::Options {
            quick: true,
            ..Default::default()
        }) {
            Ok(r) => {
                save(&args.out, "pressure", &r)?;
                let p50 = |n: &str| r.sources.get(n).and_then(|s| s.latency_ms_p50);
                rows.push(Row {
                    claim: "pressure event after a limit is reached (p50)",
                    ebb: format!(
                        "v1 pressure_level {}",
                        opt(p50("v1_pressure_level"), 1, " ms")
                    ),
                    baseline: format!("PSI {} (2 s window)", opt(p50("psi"), 0, " ms")),
                    result: opt(p50("v1_pressure_level"), 1, " ms"),
                    target: "<= 100 ms",
                    met: p50("v1_pressure_level").map(|v| v <= 100.0),
                });
            }
            Err(e) => skipped.push(format!("pressure benchmark failed: {e}")),
        }
    }

    let elapsed = started.elapsed().as_secs_f64();
    if args.json {
        crate::output::print_json(&json!({
            "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
            "skipped": skipped,
            "out": args.out,
            "elapsed_s": elapsed,
        }));
        return Ok(());
    }
    let mut t = Table::new(&["claim", "ebb", "baseline", "result", "target", ""]);
    for r in &rows {
        t.row(vec![
            r.claim.to_string(),
            r.ebb.clone(),
            r.baseline.clone(),
            r.result.clone(),
            r.target.to_string(),
            match r.met {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "",
            }
            .to_string(),
        ]);
    }
    println!("\nWhat ebb achieved on this machine, against the baselines ({elapsed:.0} s):\n");
    print!("{}", t.render_text());
    for s in &skipped {
        println!("skipped: {s}");
    }
    println!(
        "\nCharts and full JSON reports: {}/ (app-switch charts in {}/app-switch/)",
        args.out.display(),
        args.out.display()
    );
    Ok(())
}
