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
        BenchCommand::Cache { quick, json } => {
            use ebb_lab::bench::cache::{Options, run};
            let report = run(&Options { quick }).map_err(|e| anyhow!("bench cache: {e}"))?;
            emit(&report, |r| r.render(), json)
        }
    }
}
