//! Run the app-switch benchmark by hand (the CLI's `ebb bench app-switch` does the same):
//!
//! ```text
//! cargo build --release -p ebb-lab -p ebbd
//! sudo target/release/examples/bench_app_switch --quick --out /tmp/app-switch
//! ```
//!
//! Flags: `--quick`, `--apps N`, `--app-mib M`, `--budget SIZE` (e.g. `1G`),
//! `--policy LIST` (comma-separated: kernel,kill-only,ebbd,earlyoom), `--seed S`,
//! `--switches N`, `--dwell-ms MS`, `--rounds R`, `--zipf S`, `--kill-level LEVEL`, `--no-marks`,
//! `--ebbd-set section.key=value` (repeatable),
//! `--json`, `--out DIR`.
use std::process::ExitCode;

use ebb_lab::bench::app_switch::{self, Options};

fn usage(msg: &str) -> ExitCode {
    eprintln!("bench_app_switch: {msg}");
    eprintln!(
        "usage: bench_app_switch [--quick] [--apps N] [--app-mib M] [--budget SIZE] [--policy LIST] \
         [--seed S] [--switches N] [--dwell-ms MS] [--rounds R] [--zipf S] [--kill-level LEVEL] [--no-marks] [--ebbd-set S.K=V] [--json] [--out DIR]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut opts = Options::default();
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let r: Result<(), String> = (|| {
            match a.as_str() {
                "--quick" => opts.quick = true,
                "--json" => json = true,
                "--apps" => {
                    opts.apps = Some(value(&a)?.parse().map_err(|e| format!("--apps: {e}"))?)
                }
                "--app-mib" => {
                    opts.app_mib = Some(value(&a)?.parse().map_err(|e| format!("--app-mib: {e}"))?)
                }
                "--budget" => opts.budget = Some(app_switch::parse_size(&value(&a)?)?),
                "--policy" => opts.policies = app_switch::parse_policies(&value(&a)?)?,
                "--seed" => {
                    opts.seed = Some(value(&a)?.parse().map_err(|e| format!("--seed: {e}"))?)
                }
                "--switches" => {
                    opts.switches =
                        Some(value(&a)?.parse().map_err(|e| format!("--switches: {e}"))?)
                }
                "--dwell-ms" => {
                    opts.dwell_ms =
                        Some(value(&a)?.parse().map_err(|e| format!("--dwell-ms: {e}"))?)
                }
                "--rounds" => {
                    opts.rounds = Some(value(&a)?.parse().map_err(|e| format!("--rounds: {e}"))?)
                }
                "--no-marks" => opts.no_marks = true,
                "--zipf" => {
                    opts.zipf_s = Some(value(&a)?.parse().map_err(|e| format!("--zipf: {e}"))?)
                }
                "--ebbd-set" => opts.ebbd_set.push(value(&a)?),
                "--kill-level" => opts.kill_min_level = Some(value(&a)?),
                "--out" => opts.out_dir = Some(value(&a)?.into()),
                other => return Err(format!("unknown argument {other:?}")),
            }
            Ok(())
        })();
        if let Err(e) = r {
            return usage(&e);
        }
    }
    match app_switch::run(&opts, app_switch::terminal_progress()) {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("bench_app_switch: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.render());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench_app_switch: {e}");
            ExitCode::FAILURE
        }
    }
}
