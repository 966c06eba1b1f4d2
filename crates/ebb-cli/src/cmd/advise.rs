//! `ebb advise`: process_madvise on another process, reporting what actually happened.

use anyhow::Result;
use ebb::process::{AdviseOptions, MapSelection, select_ranges};
use ebb::{Advice, Process};
use serde_json::json;

use crate::output::{bytes, print_json};

/// The advice `ebb advise` can give another process.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RemoteAdvice {
    /// MADV_COLD: reclaim these pages first when memory is short.
    Cold,
    /// MADV_PAGEOUT: reclaim now (anonymous pages go to swap).
    Pageout,
    /// MADV_WILLNEED: read them back in (from swap or the file).
    Willneed,
    /// MADV_COLLAPSE: collapse into transparent huge pages.
    Collapse,
}

impl From<RemoteAdvice> for Advice {
    fn from(a: RemoteAdvice) -> Advice {
        match a {
            RemoteAdvice::Cold => Advice::Cold,
            RemoteAdvice::Pageout => Advice::PageOut,
            RemoteAdvice::Willneed => Advice::WillNeed,
            RemoteAdvice::Collapse => Advice::Collapse,
        }
    }
}

/// Arguments of `ebb advise`.
#[derive(clap::Args)]
pub struct Args {
    /// The target process.
    pid: u32,
    /// The advice.
    #[arg(value_enum)]
    advice: RemoteAdvice,
    /// Only private anonymous mappings (heap, stack, anonymous mmap).
    #[arg(long, conflicts_with = "file_only")]
    anon_only: bool,
    /// Only private file-backed mappings.
    #[arg(long)]
    file_only: bool,
    /// Show what would be advised, and advise nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `ebb advise`.
pub fn run(args: Args) -> Result<()> {
    let advice: Advice = args.advice.into();
    let selection = if args.anon_only {
        MapSelection::Anon
    } else if args.file_only {
        MapSelection::File
    } else {
        MapSelection::All
    };
    let process = Process::open(args.pid)?;
    let maps = process.maps()?;
    let ranges = select_ranges(&maps, selection);
    let requested: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    if args.dry_run {
        let rollup = process.rollup()?;
        if args.json {
            print_json(&json!({
                "pid": args.pid,
                "advice": advice.name(),
                "dry_run": true,
                "selection": selection,
                "ranges": ranges.len(),
                "bytes_requested": requested,
                "bytes_advised": 0,
                "rss_before": rollup.rss,
                "rss_after": rollup.rss,
                "swap_before": rollup.swap,
                "swap_after": rollup.swap,
                "skipped_ranges": [],
            }));
        } else {
            println!(
                "dry run: would give {} to {} ranges ({}) of process {}; RSS {}, swap {}",
                advice.kernel_name(),
                ranges.len(),
                bytes(requested),
                args.pid,
                bytes(rollup.rss),
                bytes(rollup.swap)
            );
        }
        return Ok(());
    }
    let report = process.advise_with(&ranges, advice, &AdviseOptions::default())?;
    let before = report.before.unwrap_or_default();
    let after = report.after.unwrap_or_default();
    let swap_total = ebb::caps::read_swaps()
        .map(|s| s.iter().map(|d| d.size_bytes).sum::<u64>())
        .unwrap_or(0);
    let note = if advice == Advice::PageOut && swap_total == 0 && selection != MapSelection::File {
        Some(
            "no swap is configured: MADV_PAGEOUT returned success but anonymous memory stayed resident (try `ebb lab up`)",
        )
    } else {
        None
    };
    if args.json {
        print_json(&json!({
            "pid": report.pid,
            "advice": advice.name(),
            "dry_run": false,
            "selection": selection,
            "ranges": report.ranges,
            "bytes_requested": report.bytes_requested,
            "bytes_advised": report.bytes_advised,
            "rss_before": before.rss,
            "rss_after": after.rss,
            "anon_before": before.anon,
            "anon_after": after.anon,
            "swap_before": before.swap,
            "swap_after": after.swap,
            "skipped_ranges": report.skipped,
            "calls": report.calls,
            "elapsed_ms": report.elapsed.as_secs_f64() * 1000.0,
            "note": note,
        }));
    } else {
        println!(
            "{} on process {}: {} of {} advised in {} ranges ({} calls, {:.1} ms)",
            advice.kernel_name(),
            report.pid,
            bytes(report.bytes_advised),
            bytes(report.bytes_requested),
            report.ranges,
            report.calls,
            report.elapsed.as_secs_f64() * 1000.0
        );
        println!("  RSS  {} -> {}", bytes(before.rss), bytes(after.rss));
        println!("  swap {} -> {}", bytes(before.swap), bytes(after.swap));
        for s in &report.skipped {
            println!("  skipped {:#x}-{:#x}: {}", s.start, s.end, s.reason);
        }
        if let Some(n) = note {
            println!("  note: {n}");
        }
    }
    Ok(())
}
