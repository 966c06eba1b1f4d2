//! `ebb bench`: the benchmarks that show every claim side by side, in one run.
//!
//! Each benchmark lives in `ebb_lab::bench`; this module maps flags to its options and
//! prints its table or JSON.

use anyhow::{Result, anyhow};
use serde::Serialize;

use crate::output::print_json;

/// The benchmarks.
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Latency from a memory limit being reached to the first event, per pressure source;
    /// idle events and monitor CPU.
    Pressure {
        /// Fewer repeats and a 5 s idle window instead of 30 s.
        #[arg(long)]
        quick: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Volatile memory (pin/unpin): cycle cost against the floor, Chromium's cookie scheme
    /// and DONTNEED + regenerate; a torture run under a real squeeze.
    Volatile {
        /// A short run (at least 1 M page pins in the torture run).
        #[arg(long)]
        quick: bool,
        /// Skip the torture run (cycle costs only).
        #[arg(long)]
        no_torture: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The purgeable cache against a plain LRU of the same budget, each squeezed by a
    /// neighbour in a sandbox.
    Cache {
        /// A shorter, smaller run.
        #[arg(long)]
        quick: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The hugepage-preserving heap against the floor, per-span MADV_FREE/DONTNEED, glibc,
    /// jemalloc and mimalloc: reuse cost and faults, THP coverage, release under pressure.
    Heap {
        /// Short gaps, fewer bursts, smaller churn.
        #[arg(long)]
        quick: bool,
        /// Run only these scenarios (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<HeapScenario>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Hot starts vs cold starts: apps switched by a Zipf trace under a memory budget, with
    /// the kernel alone, kill-only (lmkd-style), ebbd (compaction first) and earlyoom.
    AppSwitch(AppSwitchArgs),
}

/// Arguments of `ebb bench app-switch`.
#[derive(clap::Args)]
pub struct AppSwitchArgs {
    /// The quick profile (at most 3 minutes).
    #[arg(long)]
    quick: bool,
    /// Number of apps.
    #[arg(long)]
    apps: Option<usize>,
    /// Working set of each app, MiB.
    #[arg(long)]
    app_mib: Option<u64>,
    /// Memory budget of all apps together (e.g. 1G; default: half the working sets).
    #[arg(long, value_parser = crate::output::parse_size)]
    budget: Option<u64>,
    /// Policies to run, comma-separated: kernel, kill-only, ebbd, earlyoom.
    #[arg(long, value_parser = parse_policies)]
    policy: Option<PolicyList>,
    /// Seed of the switch trace.
    #[arg(long)]
    seed: Option<u64>,
    /// Number of switches.
    #[arg(long)]
    switches: Option<usize>,
    /// Foreground work after each switch, ms.
    #[arg(long)]
    dwell_ms: Option<u64>,
    /// Override an ebbd config key for the kill-only and ebbd policies (section.key=value).
    #[arg(long = "ebbd-set", value_name = "SECTION.KEY=VALUE")]
    ebbd_set: Vec<String>,
    /// Write charts (PNG and SVG) and the JSON report here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// A parsed `--policy` list.
#[derive(Clone)]
pub struct PolicyList(Vec<ebb_lab::bench::app_switch::Policy>);

fn parse_policies(s: &str) -> Result<PolicyList, String> {
    ebb_lab::bench::app_switch::parse_policies(s).map(PolicyList)
}

/// Options of the app-switch benchmark from the command line.
pub fn app_switch_options(a: &AppSwitchArgs) -> ebb_lab::bench::app_switch::Options {
    ebb_lab::bench::app_switch::Options {
        quick: a.quick,
        apps: a.apps,
        app_mib: a.app_mib,
        budget: a.budget,
        policies: a.policy.clone().map(|p| p.0).unwrap_or_default(),
        seed: a.seed,
        switches: a.switches,
        dwell_ms: a.dwell_ms,
        out_dir: a.out.clone(),
        ebbd_set: a.ebbd_set.clone(),
        ..Default::default()
    }
}

/// The scenarios of `ebb bench heap`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HeapScenario {
    /// Bursts of alloc + write + free with idle gaps.
    Reuse,
    /// THP coverage under random churn.
    Thp,
    /// Release when a neighbour needs the memory.
    Pressure,
}

fn emit<R: Serialize>(report: &R, render: impl FnOnce(&R) -> String, json: bool) -> Result<()> {
    if json {
        print_json(&serde_json::to_value(report)?);
    } else {
        print!("{}", render(report));
    }
    Ok(())
}

/// Runs `ebb bench`.
pub fn run(c: BenchCommand) -> Result<()> {
    match c {
        BenchCommand::Pressure { quick, json } => {
            use ebb_lab::bench::pressure::{Options, run};
            let report = run(&Options {
                quick,
                ..Options::default()
            })
            .map_err(|e| anyhow!("bench pressure: {e}"))?;
            emit(&report, |r| r.render(), json)
        }
        BenchCommand::Volatile {
            quick,
            no_torture,
            json,
        } => {
            use ebb_lab::bench::volatile::{Options, run};
            let report = run(&Options {
                quick,
                torture: !no_torture,
                ..Options::default()
            })
            .map_err(|e| anyhow!("bench volatile: {e}"))?;
            emit(&report, |r| r.render(), json)
        }
        BenchCommand::Heap { quick, only, json } => {
            use ebb_lab::bench::heap::{Options, run};
            let all = only.is_empty();
            let report = run(&Options {
                quick,
                reuse: all || only.contains(&HeapScenario::Reuse),
                thp: all || only.contains(&HeapScenario::Thp),
                pressure: all || only.contains(&HeapScenario::Pressure),
            })
            .map_err(|e| anyhow!("bench heap: {e}"))?;
            emit(&report, |r| r.render(), json)
        }
        BenchCommand::AppSwitch(a) => {
            use ebb_lab::bench::app_switch::{run, terminal_progress};
            let report = run(&app_switch_options(&a), terminal_progress())
                .map_err(|e| anyhow!("bench app-switch: {e}"))?;
            emit(&report, |r| r.render(), a.json)
        }
        BenchCommand::Cache { quick, json } => {
            use ebb_lab::bench::cache::{Options, run};
            let report = run(&Options { quick }).map_err(|e| anyhow!("bench cache: {e}"))?;
            emit(&report, |r| r.render(), json)
        }
    }
}
