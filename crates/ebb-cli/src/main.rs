//! `ebb`: inspect memory, apply advice, run the memory lab and the benchmarks.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error.

mod cmd;
mod output;

use clap::{Parser, Subcommand};

/// ebb: memory the Linux kernel can take back.
#[derive(Parser)]
#[command(name = "ebb", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: quick benchmarks side by side, the lab set up and torn down, one summary.
    Demo(cmd::demo::Args),
    /// What this kernel and this process can do: advice, THP, swap, PSI, cgroups.
    Status(cmd::status::Args),
    /// Per-process memory: RSS, anonymous, swap, lazily freed and THP bytes.
    Ps(cmd::ps::Args),
    /// Give memory advice to another process (process_madvise) and report what it did.
    Advise(cmd::advise::Args),
    /// Tell ebbd where a process stands: foreground, visible, perceptible, cached or normal.
    Mark(cmd::mark::Args),
    /// The ebbd daemon: its status over the socket.
    #[command(subcommand)]
    Daemon(cmd::daemon::DaemonCommand),
    /// Live memory pressure: PSI, memory cgroup events, MemAvailable.
    Watch(cmd::watch::Args),
    /// Benchmarks, each compared side by side in one run.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// The memory lab: zram swap for experiments by hand.
    #[command(subcommand)]
    Lab(cmd::lab::LabCommand),
    /// Act as the lab's memory hog (the stdin/stdout protocol of `ebb_lab::hog`).
    #[command(hide = true)]
    Hog,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => cmd::demo::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Ps(a) => cmd::ps::run(a),
        Command::Advise(a) => cmd::advise::run(a),
        Command::Mark(a) => cmd::mark::run(a),
        Command::Daemon(c) => cmd::daemon::run(c),
        Command::Lab(c) => cmd::lab::run(c),
        Command::Watch(a) => cmd::watch::run(a),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Hog => ebb_lab::hog::run_child(std::iter::empty())
            .map_err(|e| anyhow::anyhow!("running as hog: {e}")),
    };
    if let Err(e) = result {
        eprintln!("ebb: error: {e:#}");
        std::process::exit(1);
    }
}
