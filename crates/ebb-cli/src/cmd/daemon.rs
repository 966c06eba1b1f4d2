//! `ebb daemon status`: what ebbd has done, over its socket.

use anyhow::Result;
use serde_json::Value;

use crate::output::{bytes, print_json};

/// `ebb daemon` subcommands.
#[derive(clap::Subcommand)]
pub enum DaemonCommand {
    /// Processes by band, compactions, bytes reclaimed, kills, pressure events.
    Status {
        /// Print JSON instead of text (the socket's status object).
        #[arg(long)]
        json: bool,
        /// ebbd's socket.
        #[arg(long, default_value = "/run/ebbd.sock")]
        socket: std::path::PathBuf,
    },
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Runs `ebb daemon …`.
pub fn run(cmd: DaemonCommand) -> Result<()> {
    let DaemonCommand::Status { json, socket } = cmd;
    let s = ebbd::client::Client::connect(&socket)?.status()?;
    if json {
        print_json(&s);
        return Ok(());
    }
    let p = &s["processes"];
    println!(
        "ebbd          pid {} up {} s{}; CPU {:.2} s",
        u(&s["pid"]),
        u(&s["uptime_s"]),
        if s["dry_run"] == true {
            " (dry run)"
        } else {
            ""
        },
        s["cpu_seconds"].as_f64().unwrap_or(0.0)
    );
    println!(
        "processes     foreground {} visible {} perceptible {} previous {} cached {} other {}",
        u(&p["foreground"]),
        u(&p["visible"]),
        u(&p["perceptible"]),
        u(&p["previous"]),
        u(&p["cached"]),
        u(&p["other"])
    );
    println!(
        "compactions   {} ({} cancelled); advised {}, RSS reclaimed {}, swap gained {}; CPU {:.2} s",
        u(&s["compactions"]),
        u(&s["compactions_cancelled"]),
        bytes(u(&s["compaction_bytes_advised"])),
        bytes(u(&s["rss_reclaimed_bytes"])),
        bytes(u(&s["swap_gained_bytes"])),
        s["compaction_cpu_seconds"].as_f64().unwrap_or(0.0)
    );
    if let Some(skipped) = s["compactions_skipped"].as_object()
        && !skipped.is_empty()
    {
        let list: Vec<String> = skipped
            .iter()
            .map(|(k, v)| format!("{k} {}", u(v)))
            .collect();
        println!("skipped       {}", list.join(", "));
    }
    if let Some(h) = s["headroom"].as_object() {
        println!(
            "headroom      {} free, keeping {}; {} compactions for headroom",
            bytes(u(&h["free_bytes"])),
            bytes(u(&h["headroom_bytes"])),
            u(&s["headroom_compactions"])
        );
    }
    println!("prefetches    {}", u(&s["prefetches"]));
    let by: Vec<String> = s["kills"]["by_reason"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k} {}", u(v))).collect())
        .unwrap_or_default();
    println!(
        "kills         {}{}",
        u(&s["kills"]["total"]),
        if by.is_empty() {
            String::new()
        } else {
            format!(" ({})", by.join(", "))
        }
    );
    println!("pressure      {} events", u(&s["pressure_events"]));
    Ok(())
}
