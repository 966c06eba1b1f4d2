//! `ebb watch`: live memory pressure, for people and for programs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ebb::cgroup::{self, CgroupVersion};
use ebb::pressure::{Event, Monitor, MonitorOptions, Source, Stall};

use crate::output::bytes;

/// Which sources `ebb watch` listens to.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceChoice {
    /// PSI triggers: the cgroup's `memory.pressure` on v2, else /proc/pressure/memory.
    Psi,
    /// The memory cgroup: v1 pressure_level or v2 memory.events, plus a usage/limit watermark.
    Memcg,
    /// MemAvailable from /proc/meminfo (works everywhere).
    Meminfo,
    /// The best the host offers, as `Monitor::auto` picks them.
    Auto,
}

/// Arguments of `ebb watch`.
#[derive(clap::Args)]
pub struct Args {
    /// The memory cgroup to watch: a directory, or a path under the memory controller's root
    /// (default: this process's own memory cgroup).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Which sources to listen to.
    #[arg(long, value_enum, default_value = "auto")]
    source: SourceChoice,
    /// PSI trigger window in milliseconds (the kernel may accept only multiples of 2000).
    #[arg(long, default_value_t = 2000)]
    psi_window_ms: u64,
    /// PSI trigger stall threshold in milliseconds within the window.
    #[arg(long, default_value_t = 100)]
    psi_stall_ms: u64,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// JSON lines: one event per line (at_ms, level, source, detail); the sources picked go to stderr.
    #[arg(long)]
    json: bool,
}

/// Resolves `--cgroup`: an existing directory as is, else a path under the memory root.
fn resolve_cgroup(given: &Path) -> Result<PathBuf> {
    if given.is_absolute() && given.is_dir() {
        return Ok(given.to_path_buf());
    }
    let (_, root) = cgroup::memory_root()
        .context("finding the memory cgroup controller")?
        .context("no memory cgroup controller is mounted")?;
    let under = root.join(given.strip_prefix("/").unwrap_or(given));
    if under.is_dir() {
        Ok(under)
    } else {
        bail!(
            "no memory cgroup {} (looked at {} and {})",
            given.display(),
            given.display(),
            under.display()
        )
    }
}

fn monitor(args: &Args) -> Result<Monitor> {
    let cgroup = args.cgroup.as_deref().map(resolve_cgroup).transpose()?;
    let own = || -> Result<PathBuf> {
        Ok(cgroup::own_memory_cgroup(std::process::id())
            .context("reading /proc/self/cgroup")?
            .context("this process is in no memory cgroup: give --cgroup")?
            .path()
            .to_path_buf())
    };
    let window = Duration::from_millis(args.psi_window_ms);
    let stall = Duration::from_millis(args.psi_stall_ms);
    Ok(match args.source {
        SourceChoice::Auto => Monitor::auto_with(cgroup.as_deref(), MonitorOptions::default())?,
        SourceChoice::Meminfo => {
            let m = Monitor::new()?;
            m.add(Source::mem_available())?;
            m
        }
        SourceChoice::Psi => {
            let m = Monitor::new()?;
            match &cgroup {
                Some(cg) if cgroup::MemoryCgroup::open(cg)?.version() == CgroupVersion::V2 => {
                    m.add(Source::psi_cgroup(cg, Stall::Some, stall, window))?
                }
                Some(cg) => bail!(
                    "{} is a cgroup v1 group, which has no PSI file: use --source memcg, or omit --cgroup for system PSI",
                    cg.display()
                ),
                None => m.add(Source::psi_system(Stall::Some, stall, window))?,
            };
            m
        }
        SourceChoice::Memcg => {
            let cg = match cgroup {
                Some(cg) => cg,
                None => own()?,
            };
            let m = Monitor::new()?;
            match cgroup::MemoryCgroup::open(&cg)?.version() {
                CgroupVersion::V1 => m.add(Source::v1_pressure_level(&cg))?,
                CgroupVersion::V2 => m.add(Source::v2_events(&cg))?,
            };
            m.add(Source::watermark(&cg))?;
            m
        }
    })
}

fn describe(e: &Event) -> String {
    use ebb::pressure::Detail;
    let what = match &e.detail {
        Detail::Psi {
            some_avg10,
            full_avg10,
            trigger,
            ..
        } => format!(
            "trigger '{trigger}': some avg10 {some_avg10:.2}%{}",
            full_avg10.map_or(String::new(), |f| format!(", full avg10 {f:.2}%"))
        ),
        Detail::V1PressureLevel {
            cgroup,
            usage_bytes,
            limit_bytes,
            ..
        } => format!(
            "{}: usage {} of {}",
            cgroup.display(),
            usage_bytes.map_or("?".into(), bytes),
            limit_bytes.map_or("unlimited".into(), bytes)
        ),
        Detail::V2Events { cgroup, rose, .. } => {
            format!("{}: {} rose", cgroup.display(), rose.join(", "))
        }
        Detail::Watermark {
            cgroup,
            usage_bytes,
            limit_bytes,
            fraction,
        } => format!(
            "{}: usage {} of {} ({:.0}%)",
            cgroup.display(),
            bytes(*usage_bytes),
            bytes(*limit_bytes),
            fraction * 100.0
        ),
        Detail::MemAvailable {
            available_bytes,
            total_bytes,
            ..
        } => format!(
            "MemAvailable {} of {}",
            bytes(*available_bytes),
            bytes(*total_bytes)
        ),
        Detail::Removed { path } => {
            format!("{} was removed: this source has ended", path.display())
        }
        Detail::Failed { path, error } => {
            format!("{}: {error}: this source has ended", path.display())
        }
    };
    let dropped = if e.suppressed > 0 {
        format!(" (+{} rate-limited)", e.suppressed)
    } else {
        String::new()
    };
    format!(
        "{:>8.3}s  {:<8}  {:<17}  {what}{dropped}",
        e.at_ms as f64 / 1000.0,
        e.level.as_str(),
        e.source.name()
    )
}

/// Runs `ebb watch`.
pub fn run(args: Args) -> Result<()> {
    let monitor = monitor(&args)?;
    let sources = monitor.sources();
    if sources.is_empty() {
        bail!("no pressure source could be registered");
    }
    if args.json {
        eprintln!(
            "{}",
            serde_json::json!({ "sources": sources, "choices": monitor.choices() })
        );
    } else {
        for s in &sources {
            println!(
                "watching {} on {} ({})",
                s.kind.name(),
                s.target.display(),
                s.how
            );
        }
        for c in monitor.choices().iter().filter(|c| !c.picked) {
            println!(
                "not using {} on {}: {}",
                c.kind.name(),
                c.target.display(),
                c.why
            );
        }
    }
    let events = monitor.subscribe();
    let started = Instant::now();
    let deadline = args
        .duration
        .map(|s| started + Duration::from_secs_f64(s.max(0.0)));
    let mut next_status = started + Duration::from_secs(1);
    let mut seen = 0u64;
    let stdout = std::io::stdout();
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) || args.count.is_some_and(|c| seen >= c) {
            return Ok(());
        }
        let mut wake = next_status;
        if let Some(d) = deadline {
            wake = wake.min(d);
        }
        match events.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(e) => {
                seen += 1;
                let mut out = stdout.lock();
                if args.json {
                    writeln!(out, "{}", serde_json::to_string(&e)?)?;
                } else {
                    writeln!(out, "{}", describe(&e))?;
                }
                out.flush()?;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the pressure monitor stopped")
            }
        }
        if Instant::now() >= next_status {
            // The deadline moves on in JSON mode too, or the wait above would spin.
            next_status += Duration::from_secs(1);
            if args.json {
                continue;
            }
            let s = monitor.snapshot();
            let mut line = format!("{:>8.3}s  status   ", s.at_ms as f64 / 1000.0);
            if let Some(p) = s.psi_some_avg10 {
                line += &format!("  PSI some avg10 {p:.2}%");
            }
            if let Some(f) = s.psi_full_avg10 {
                line += &format!(" full {f:.2}%");
            }
            if let Some(u) = s.usage_bytes {
                line += &format!(
                    "  usage {} of {}",
                    bytes(u),
                    s.limit_bytes.map_or("unlimited".into(), bytes)
                );
            }
            if let Some(a) = s.mem_available_bytes {
                line += &format!("  MemAvailable {}", bytes(a));
            }
            println!("{line}");
        }
    }
}
