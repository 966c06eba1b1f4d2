//! `ebb mark PID BAND`: tell ebbd where a process stands (over its socket).

use anyhow::{Context, Result};

/// The bands `ebb mark` can set.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Band {
    /// The app in front: never compacted, killed last.
    Foreground,
    /// Visible.
    Visible,
    /// Perceptible (playing audio, …).
    Perceptible,
    /// Cached: compacted now (file COLD, anon PAGEOUT), killed first under pressure.
    Cached,
    /// Remove the mark: back to the band of its oom_score_adj.
    Normal,
}

impl Band {
    fn as_str(self) -> &'static str {
        match self {
            Band::Foreground => "foreground",
            Band::Visible => "visible",
            Band::Perceptible => "perceptible",
            Band::Cached => "cached",
            Band::Normal => "normal",
        }
    }
}

/// Arguments of `ebb mark`.
#[derive(clap::Args)]
pub struct Args {
    /// The process.
    pid: u32,
    /// Its band.
    #[arg(value_enum)]
    band: Band,
    /// ebbd's socket.
    #[arg(long, default_value = "/run/ebbd.sock")]
    socket: std::path::PathBuf,
}

/// Runs `ebb mark`.
pub fn run(args: Args) -> Result<()> {
    let mut client = ebbd::client::Client::connect(&args.socket)?;
    client
        .mark(args.pid, args.band.as_str())
        .with_context(|| format!("marking process {} {}", args.pid, args.band.as_str()))?;
    println!("process {} marked {}", args.pid, args.band.as_str());
    Ok(())
}
