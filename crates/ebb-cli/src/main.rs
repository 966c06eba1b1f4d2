//! The `ebb` command.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error (clap's default for bad arguments).
use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ebb", about = "Memory the Linux kernel can take back")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The memory lab: zram swap for experiments.
    Lab {
        #[command(subcommand)]
        action: LabCmd,
    },
    /// Act as the lab's memory hog (stdin/stdout protocol of `ebb_lab::hog`).
    #[command(hide = true)]
    Hog,
}

#[derive(Subcommand)]
enum LabCmd {
    /// Set up zram swap that stays until `ebb lab down` (recorded in /run/ebb-lab).
    Up {
        /// Uncompressed capacity, in MiB.
        #[arg(long, default_value_t = 2048)]
        size_mib: u64,
        /// Compression algorithm (see /sys/block/zram0/comp_algorithm).
        #[arg(long, default_value = "lz4")]
        algorithm: String,
    },
    /// Undo exactly what `ebb lab up` did.
    Down,
    /// Show the lab's zram device and its compression.
    Status,
}

fn print_status(s: &ebb_lab::ZramStatus) {
    println!(
        "{}: algorithm {}, disksize {} MiB, stored {} MiB in {} MiB of RAM (ratio {})",
        s.device.display(),
        s.algorithm.as_deref().unwrap_or("?"),
        s.disksize >> 20,
        s.orig_data_size >> 20,
        s.mem_used_total >> 20,
        s.compression_ratio()
            .map_or("-".to_string(), |r| format!("{r:.2}"))
    );
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Hog => ebb_lab::hog::run_child(std::iter::empty()).context("running as hog")?,
        Cmd::Lab { action } => match action {
            LabCmd::Up {
                size_mib,
                algorithm,
            } => print_status(
                &ebb_lab::Lab::up(size_mib << 20, &algorithm).context("setting up the lab")?,
            ),
            LabCmd::Down => match ebb_lab::Lab::down().context("taking the lab down")? {
                Some(dev) => println!("{} removed", dev.display()),
                None => println!("the lab was not up"),
            },
            LabCmd::Status => match ebb_lab::Lab::status().context("reading the lab state")? {
                Some(s) => print_status(&s),
                None => println!("the lab is not up"),
            },
        },
    }
    Ok(())
}
