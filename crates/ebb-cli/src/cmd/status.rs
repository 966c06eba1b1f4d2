//! `ebb status`: capabilities, THP, swap, PSI and cgroups.

use anyhow::Result;
use ebb::Capabilities;
use serde_json::json;

use crate::output::{Table, bytes, print_json};

/// Arguments of `ebb status`.
#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The JSON form of the capabilities.
pub fn to_json(c: &Capabilities) -> serde_json::Value {
    let advice: serde_json::Map<String, serde_json::Value> = c
        .advice
        .iter()
        .map(|(a, ok)| (a.name().to_string(), json!(ok)))
        .collect();
    json!({
        "kernel": c.kernel,
        "thp": c.thp,
        "swap": c.swap,
        "psi": {
            "available": c.psi.available,
            "trigger_windows": c.psi.trigger_windows,
            "trigger_rule": c.psi.trigger_windows.describe(),
            "memory": c.psi.memory,
        },
        "cgroup": c.cgroup,
        "advice": advice,
        "process_madvise": c.process_madvise,
        "process_mrelease": c.process_mrelease,
        "pidfd": c.pidfd,
        "privileges": c.privileges,
    })
}

/// Runs `ebb status`.
pub fn run(args: Args) -> Result<()> {
    let c = Capabilities::detect();
    if args.json {
        print_json(&to_json(&c));
        return Ok(());
    }
    let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
    let mut t = Table::new(&["", ""]);
    t.row(vec!["kernel".into(), c.kernel.clone()]);
    t.row(vec![
        "THP".into(),
        format!(
            "enabled={} defrag={} max_ptes_none={} huge page {}",
            c.thp.enabled.as_deref().unwrap_or("unavailable"),
            c.thp.defrag.as_deref().unwrap_or("-"),
            c.thp
                .max_ptes_none
                .map_or("-".to_string(), |v| v.to_string()),
            bytes(c.thp.huge_page_size as u64),
        ),
    ]);
    if c.swap.is_empty() {
        t.row(vec![
            "swap".into(),
            "none (MADV_PAGEOUT of anonymous memory will reclaim nothing; try `ebb lab up`)".into(),
        ]);
    }
    for s in &c.swap {
        t.row(vec![
            "swap".into(),
            format!(
                "{} {} used of {}",
                s.device,
                bytes(s.used_bytes),
                bytes(s.size_bytes)
            ),
        ]);
    }
    t.row(vec![
        "PSI".into(),
        match &c.psi.memory {
            Some(p) => format!(
                "memory some avg10={:.2} full avg10={:.2}; triggers: {}",
                p.some.avg10,
                p.full.as_ref().map_or(0.0, |f| f.avg10),
                c.psi.trigger_windows.describe()
            ),
            None => "unavailable (kernel without PSI, or booted with psi=0)".into(),
        },
    ]);
    t.row(vec![
        "memory cgroup".into(),
        match (&c.cgroup.version, &c.cgroup.memory_root) {
            (Some(v), Some(root)) => format!(
                "{v} at {}; this process in {}",
                root.display(),
                c.cgroup
                    .own
                    .as_ref()
                    .map_or("?".into(), |p| p.display().to_string())
            ),
            _ => "no memory controller mounted".into(),
        },
    ]);
    let supported: Vec<&str> = c
        .advice
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(a, _)| a.name())
        .collect();
    let missing: Vec<&str> = c
        .advice
        .iter()
        .filter(|(_, ok)| !*ok)
        .map(|(a, _)| a.name())
        .collect();
    t.row(vec!["advice".into(), supported.join(" ")]);
    if !missing.is_empty() {
        t.row(vec!["advice missing".into(), missing.join(" ")]);
    }
    t.row(vec![
        "syscalls".into(),
        format!(
            "pidfd={} process_madvise={} process_mrelease={}",
            yes(c.pidfd),
            yes(c.process_madvise),
            yes(c.process_mrelease)
        ),
    ]);
    let p = &c.privileges;
    t.row(vec![
        "privileges".into(),
        format!(
            "root={} CAP_SYS_NICE={} (advise others) CAP_KILL={} CAP_SYS_RESOURCE={} (any PSI window) CAP_SYS_ADMIN={} (swap)",
            yes(p.root),
            yes(p.cap_sys_nice),
            yes(p.cap_kill),
            yes(p.cap_sys_resource),
            yes(p.cap_sys_admin)
        ),
    ]);
    print!("{}", t.render_pairs());
    Ok(())
}
