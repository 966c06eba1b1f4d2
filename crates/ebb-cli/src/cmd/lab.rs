//! `ebb lab`: the memory lab for experiments by hand (zram swap that stays until `down`).

use anyhow::{Context, Result};
use ebb_lab::{Lab, ZramStatus};
use serde_json::json;

use crate::output::{bytes, parse_size, print_json};

/// Subcommands of `ebb lab`.
#[derive(clap::Subcommand)]
pub enum LabCommand {
    /// Set up zram swap that stays until `ebb lab down` (recorded in /run/ebb-lab).
    Up {
        /// Uncompressed swap capacity (e.g. 2G, 512M).
        #[arg(long, default_value = "2G", value_parser = parse_size)]
        zram: u64,
        /// Compression algorithm (one of /sys/block/zram0/comp_algorithm).
        #[arg(long, default_value = "lz4")]
        algo: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Undo exactly what `ebb lab up` did.
    Down {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the lab's zram device and its compression.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// The compression ratio, once there is enough data for it to mean something: an almost
/// empty device reports its allocator's fixed overhead, not compression.
fn ratio(s: &ZramStatus) -> Option<f64> {
    if s.orig_data_size < 1 << 20 {
        None
    } else {
        s.compression_ratio()
    }
}

fn status_json(s: &ZramStatus) -> serde_json::Value {
    json!({
        "device": s.device,
        "algorithm": s.algorithm,
        "disksize_bytes": s.disksize,
        "orig_data_bytes": s.orig_data_size,
        "compr_data_bytes": s.compr_data_size,
        "mem_used_bytes": s.mem_used_total,
        "compression_ratio": ratio(s),
    })
}

fn print_status(s: &ZramStatus) {
    println!(
        "{}: {} swap, algorithm {}; holds {} in {} of RAM (ratio {})",
        s.device.display(),
        bytes(s.disksize),
        s.algorithm.as_deref().unwrap_or("?"),
        bytes(s.orig_data_size),
        bytes(s.mem_used_total),
        ratio(s).map_or("-".to_string(), |r| format!("{r:.2}"))
    );
}

/// Runs `ebb lab`.
pub fn run(c: LabCommand) -> Result<()> {
    match c {
        LabCommand::Up { zram, algo, json } => {
            let s = Lab::up(zram, &algo)
                .context("setting up the lab (needs root: CAP_SYS_ADMIN for swapon)")?;
            if json {
                print_json(&json!({ "up": true, "zram": status_json(&s) }));
            } else {
                print_status(&s);
            }
        }
        LabCommand::Down { json } => {
            let dev = Lab::down().context("taking the lab down")?;
            if json {
                print_json(&json!({ "removed": dev }));
            } else {
                match dev {
                    Some(d) => println!("{} swapped off and reset", d.display()),
                    None => println!("the lab was not up"),
                }
            }
        }
        LabCommand::Status { json } => {
            let s = Lab::status().context("reading the lab state")?;
            if json {
                print_json(&json!({ "up": s.is_some(), "zram": s.as_ref().map(status_json) }));
            } else {
                match s {
                    Some(s) => print_status(&s),
                    None => println!("the lab is not up"),
                }
            }
        }
    }
    Ok(())
}
