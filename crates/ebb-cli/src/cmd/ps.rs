//! `ebb ps`: per-process memory, like smem, with lazily freed and THP bytes.

use anyhow::{Context, Result};
use ebb::procfs;
use serde::Serialize;

use crate::output::{Table, bytes, print_json};

/// Sort keys of `ebb ps`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SortKey {
    /// Resident bytes.
    Rss,
    /// Swapped bytes.
    Swap,
    /// Lazily freed (MADV_FREE) bytes not yet reclaimed.
    Lazyfree,
    /// Transparent huge page bytes.
    Thp,
    /// Anonymous resident bytes.
    Anon,
}

/// Arguments of `ebb ps`.
#[derive(clap::Args)]
pub struct Args {
    /// Sort by this column, largest first.
    #[arg(long, value_enum, default_value = "rss")]
    sort: SortKey,
    /// Show only the first N processes.
    #[arg(long)]
    top: Option<usize>,
    /// Only these pids.
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One process's memory.
#[derive(Debug, Serialize)]
pub struct ProcMem {
    /// Pid.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// Resident bytes.
    pub rss_bytes: u64,
    /// Proportional set size.
    pub pss_bytes: u64,
    /// Anonymous resident bytes.
    pub anon_bytes: u64,
    /// Swapped bytes.
    pub swap_bytes: u64,
    /// Lazily freed bytes still counted in RSS.
    pub lazyfree_bytes: u64,
    /// Transparent huge page bytes.
    pub thp_bytes: u64,
    /// oom_score_adj.
    pub oom_score_adj: i16,
}

/// Reads one process, or None if it is a kernel thread or vanished meanwhile.
pub fn read_one(pid: u32) -> Result<Option<ProcMem>, procfs::Error> {
    let status = match procfs::status::read(pid) {
        Ok(s) => s,
        Err(procfs::Error::NoProcess { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    if status.kthread == Some(true) {
        return Ok(None);
    }
    let rollup = match procfs::smaps::read_rollup(pid) {
        Ok(r) => r,
        Err(procfs::Error::NoProcess { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    if rollup.rss == 0 && rollup.swap == 0 && status.vm_size == 0 {
        return Ok(None); // kernel thread on kernels without the Kthread: line
    }
    let oom_score_adj = procfs::oom::read_oom_score_adj(pid).unwrap_or(0);
    Ok(Some(ProcMem {
        pid,
        comm: status.name,
        rss_bytes: rollup.rss,
        pss_bytes: rollup.pss,
        anon_bytes: rollup.anonymous,
        swap_bytes: rollup.swap,
        lazyfree_bytes: rollup.lazy_free,
        thp_bytes: rollup.anon_huge_pages,
        oom_score_adj,
    }))
}

/// Runs `ebb ps`.
pub fn run(args: Args) -> Result<()> {
    let pids = if args.pids.is_empty() {
        procfs::list_pids().context("listing /proc")?
    } else {
        args.pids.clone()
    };
    let mut rows = Vec::new();
    let mut unreadable = 0;
    for pid in pids {
        match read_one(pid) {
            Ok(Some(p)) => rows.push(p),
            Ok(None) => {}
            Err(e) if !args.pids.is_empty() => {
                return Err(e).with_context(|| format!("reading /proc/{pid}"));
            }
            Err(_) => unreadable += 1,
        }
    }
    if !args.pids.is_empty() {
        if let Some(missing) = args
            .pids
            .iter()
            .find(|p| !rows.iter().any(|r| r.pid == **p))
        {
            anyhow::bail!("no process {missing}");
        }
    }
    let key = |p: &ProcMem| match args.sort {
        SortKey::Rss => p.rss_bytes,
        SortKey::Swap => p.swap_bytes,
        SortKey::Lazyfree => p.lazyfree_bytes,
        SortKey::Thp => p.thp_bytes,
        SortKey::Anon => p.anon_bytes,
    };
    rows.sort_by(|a, b| key(b).cmp(&key(a)).then(a.pid.cmp(&b.pid)));
    if let Some(n) = args.top {
        rows.truncate(n);
    }
    if args.json {
        print_json(&serde_json::to_value(&rows)?);
        return Ok(());
    }
    let mut t = Table::new(&[
        "PID", "COMM", "RSS", "ANON", "SWAP", "LAZYFREE", "THP", "ADJ",
    ]);
    for p in &rows {
        t.row(vec![
            p.pid.to_string(),
            p.comm.clone(),
            bytes(p.rss_bytes),
            bytes(p.anon_bytes),
            bytes(p.swap_bytes),
            bytes(p.lazyfree_bytes),
            bytes(p.thp_bytes),
            p.oom_score_adj.to_string(),
        ]);
    }
    print!("{}", t.render());
    if unreadable > 0 {
        let who = if rustix::process::geteuid().is_root() {
            "the kernel refuses some even to root, e.g. pid 1's smaps_rollup"
        } else {
            "run as root to see them"
        };
        eprintln!("({unreadable} processes could not be read: {who})");
    }
    Ok(())
}
