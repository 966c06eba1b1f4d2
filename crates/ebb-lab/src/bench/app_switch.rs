//! The app-switch benchmark: hot starts against cold starts, policy by policy, side by side.
//!
//! The claim measured (MADV_COLD/MADV_PAGEOUT's cover letter): with proactive reclaim of
//! cached apps, resuming an app is more often a *hot start* (the process is still alive)
//! than a *cold start* (it was killed and must be started and rebuilt from scratch).
//!
//! # The set-up
//! - **Apps**: `apps` children running `ebb-app` (see [`crate::app`]), each with a working
//!   set of `app_mib` MiB: 7/8 anonymous memory of mixed compressibility computed by a
//!   hash chain, 1/8 a private mapping of a data file, and a hot part (1/8 of the
//!   anonymous memory, and a quarter as much again from the file) touched on every resume. A cold start is exec
//!   plus rebuilding the working set; a resume touches the hot part and checks every page
//!   of it against the hashes it had when built.
//! - **Trace**: `switches` foreground switches drawn from a Zipf distribution
//!   (exponent `zipf_s`) by a seeded generator: identical for every policy. The
//!   foreground app gets `oom_score_adj` 0, the previous one 700, all others 950 (as
//!   Android's ActivityManager ranks them for lmkd). After each switch the foreground app
//!   works on its hot part for `dwell_ms` (the foreground throughput).
//! - **Budget**: all apps run in one [`Sandbox`] limited to `budget` bytes (default half
//!   of the sum of working sets), with shared zram swap ([`ZramSwap::shared`]). zram's
//!   compressed pages are not charged to the memory cgroup: the report shows the zram
//!   RAM in use so that nothing is hidden.
//! - **Policies**, each a fresh run (new sandbox, new data files) on the same trace:
//!   - `kernel`: zram and the kernel alone; the cgroup's OOM killer kills when it must;
//!   - `kill-only`: `ebbd` with `compaction.enabled = false`: lmkd-style kills of cached
//!     apps on memory pressure of the sandbox;
//!   - `ebbd`: `ebbd` as shipped: cached apps are compacted into zram
//!     (MADV_PAGEOUT through process_madvise), kills are the last resort;
//!   - `earlyoom`: Debian's earlyoom, an outside kill-only baseline. It watches the
//!     system's `MemAvailable`; to make it see the budget it is told to act once
//!     `MemAvailable` falls `budget` below its value at the start of the run
//!     (`-M`), the apps' sandbox has no binding limit, and earlyoom runs as the init of its
//!     own PID namespace (`unshare --pid --fork --mount-proc`) with the apps joined into it
//!     (`nsenter`), so that the only processes it can see, and kill, are the apps. (A
//!     ballast that pins the rest of the machine's memory would do the same for
//!     `MemAvailable`, but on a shared 24 GiB machine it would push everyone else into
//!     reclaim; the threshold offset is the same arithmetic without pinning anything.)
//!
//! # Metrics
//! Per policy: hot-start ratio (switches that found the app alive ÷ switches), hot
//! from RAM vs hot from swap (the resume took major faults), resume latency p50/p95/p99
//! (switch until the hot part is touched and checked), cold-start latency p50 (switch,
//! or launch, until the working set is rebuilt), kills by reason, compactions, bytes
//! paged out, pswpin/pswpout deltas, zram compression ratio, PSI some/full deltas,
//! daemon CPU % of one core (`utime + stime` of the daemon over the run's wall time),
//! foreground throughput, and pages found corrupt (must be 0).
//!
//! # Safety contract
//! The only `unsafe` is the `pre_exec` hook that makes each policy daemon die with the
//! benchmark (`prctl(PR_SET_PDEATHSIG)`): one async-signal-safe syscall in the forked child.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::app::{self, App, AppSpec};
use crate::{Sandbox, SandboxConfig, ZramSwap, sandbox, zram};

mod chart;

const MIB: u64 = 1 << 20;

/// An error that stops the benchmark (a policy that cannot run is skipped instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The options make no sense.
    #[error("bad options: {0}")]
    Options(String),
    /// The app binary is missing.
    #[error(transparent)]
    App(#[from] app::Error),
    /// The sandbox could not be made or used (needs root and a memory cgroup).
    #[error("sandbox: {0}")]
    Sandbox(#[from] sandbox::Error),
    /// zram swap could not be set up (needs root and the zram module).
    #[error("zram swap: {0}")]
    Zram(#[from] zram::Error),
    /// Reading a kernel file failed.
    #[error(transparent)]
    Procfs(#[from] ebb::procfs::Error),
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A memory policy under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Policy {
    /// zram swap and the kernel alone.
    #[serde(rename = "kernel")]
    Kernel,
    /// ebbd with compaction off: kills only.
    #[serde(rename = "kill-only")]
    KillOnly,
    /// ebbd: compaction of cached apps, kills as a last resort.
    #[serde(rename = "ebbd")]
    Ebbd,
    /// Debian's earlyoom, made to see the budget.
    #[serde(rename = "earlyoom")]
    Earlyoom,
}

impl Policy {
    /// Every policy, in report order.
    pub const ALL: [Policy; 4] = [
        Policy::Kernel,
        Policy::KillOnly,
        Policy::Ebbd,
        Policy::Earlyoom,
    ];

    /// The name used on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Kernel => "kernel",
            Policy::KillOnly => "kill-only",
            Policy::Ebbd => "ebbd",
            Policy::Earlyoom => "earlyoom",
        }
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("unknown policy {s:?}; expected kernel, kill-only, ebbd or earlyoom")
            })
    }
}

/// Parse a comma-separated policy list (`kernel,ebbd`).
pub fn parse_policies(list: &str) -> Result<Vec<Policy>, String> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect()
}

/// Parse a size: bytes, or with a K/M/G suffix (binary units): `1G`, `768M`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(|v| (v * mult as f64) as u64)
        .ok_or_else(|| format!("bad size {s:?}; expected e.g. 1G, 768M or a byte count"))
}

/// What to run. Fields left `None` take the profile's value ([`Options::quick`] or not).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The quick profile (≤ 3 minutes for all policies) instead of the default (≤ 20).
    pub quick: bool,
    /// Number of apps.
    pub apps: Option<usize>,
    /// Working set of each app, MiB.
    pub app_mib: Option<u64>,
    /// Memory limit of the apps' sandbox, bytes (default: half the sum of working sets).
    pub budget: Option<u64>,
    /// Policies to run, in this order (empty: all).
    pub policies: Vec<Policy>,
    /// Seed of the trace.
    pub seed: Option<u64>,
    /// Number of foreground switches.
    pub switches: Option<usize>,
    /// Foreground work after each switch, milliseconds.
    pub dwell_ms: Option<u64>,
    /// Hash-chain rounds per page built (the CPU cost of a cold start).
    pub rounds: Option<u32>,
    /// Zipf exponent of the trace.
    pub zipf_s: Option<f64>,
    /// Where to write `app-switch.json` and the charts (nothing written if `None`).
    pub out_dir: Option<PathBuf>,
    /// The ebbd binary (default: `$EBBD`, else `ebbd` next to the current executable).
    pub ebbd: Option<PathBuf>,
    /// The kill level given to ebbd for `kill-only` and `ebbd` (default `critical`).
    pub kill_min_level: Option<String>,
    /// Extra ebbd settings for `kill-only` and `ebbd`, `section.key=value` (a TOML
    /// value), e.g. `compaction.min_growth_mib=32`; they appear in the report.
    pub ebbd_set: Vec<String>,
    /// Do not send `mark` over ebbd's socket on band changes: ebbd then learns them only
    /// from `oom_score_adj` at its next scan (by default both are done).
    pub no_marks: bool,
}

/// The resolved configuration of a run (part of the report).
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The profile: `quick` or `default`.
    pub profile: &'static str,
    /// Number of apps.
    pub apps: usize,
    /// Working set per app, MiB.
    pub app_mib: u64,
    /// Anonymous MiB per app.
    pub anon_mib: f64,
    /// Data-file MiB per app.
    pub file_mib: f64,
    /// Hot MiB per app (anonymous + file).
    pub hot_mib: f64,
    /// The sandbox limit, bytes.
    pub budget_bytes: u64,
    /// Sum of working sets ÷ budget.
    pub overcommit: f64,
    /// Foreground switches.
    pub switches: usize,
    /// Foreground work per switch, ms.
    pub dwell_ms: u64,
    /// Hash-chain rounds per page.
    pub rounds: u32,
    /// Zipf exponent.
    pub zipf_s: f64,
    /// Trace seed.
    pub seed: u64,
    /// The trace: app index per switch.
    pub trace: Vec<usize>,
    /// The zram device and algorithm used.
    pub zram: String,
    /// Kill level given to ebbd.
    pub kill_min_level: String,
}

impl Options {
    /// The quick profile.
    pub fn quick() -> Options {
        Options {
            quick: true,
            ..Options::default()
        }
    }

    fn resolve(&self) -> Result<(Config, Vec<Policy>), Error> {
        let q = self.quick;
        let apps = self.apps.unwrap_or(8);
        let app_mib = self.app_mib.unwrap_or(if q { 128 } else { 256 });
        if apps < 2 {
            return Err(Error::Options(format!("need at least 2 apps, got {apps}")));
        }
        if app_mib < 4 {
            return Err(Error::Options(format!(
                "app size {app_mib} MiB is below 4 MiB"
            )));
        }
        let total = apps as u64 * app_mib * MIB;
        let budget = self.budget.unwrap_or(total / 2);
        if budget < 2 * app_mib * MIB {
            return Err(Error::Options(format!(
                "budget {} MiB cannot even hold the foreground and previous apps ({} MiB each)",
                budget / MIB,
                app_mib
            )));
        }
        let switches = self.switches.unwrap_or(if q { 30 } else { 80 });
        let seed = self.seed.unwrap_or(42);
        let zipf_s = self.zipf_s.unwrap_or(1.0);
        let spec = app_spec(app_mib, 0, 0, PathBuf::new());
        let config = Config {
            profile: if q { "quick" } else { "default" },
            apps,
            app_mib,
            anon_mib: spec.anon as f64 / MIB as f64,
            file_mib: spec.file as f64 / MIB as f64,
            hot_mib: (spec.hot + spec.hot / 4) as f64 / MIB as f64,
            budget_bytes: budget,
            overcommit: total as f64 / budget as f64,
            switches,
            dwell_ms: self.dwell_ms.unwrap_or(if q { 800 } else { 2000 }),
            rounds: self.rounds.unwrap_or(3000),
            zipf_s,
            seed,
            trace: zipf_trace(apps, switches, zipf_s, seed),
            zram: String::new(),
            kill_min_level: self
                .kill_min_level
                .clone()
                .unwrap_or_else(|| "critical".into()),
        };
        let policies = if self.policies.is_empty() {
            Policy::ALL.to_vec()
        } else {
            self.policies.clone()
        };
        Ok((config, policies))
    }
}

/// The working-set shape of an app of `mib` MiB.
fn app_spec(mib: u64, seed: u64, rounds: u32, data_file: PathBuf) -> AppSpec {
    let bytes = mib * MIB;
    let file = bytes / 8;
    let anon = bytes - file;
    AppSpec {
        anon,
        file,
        hot: anon / 8,
        seed,
        rounds,
        data_file,
    }
}

/// splitmix64 as a seeded generator of the trace.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `switches` app indices from a Zipf(`s`) distribution over `apps` (app 0 the most
/// popular), never the same app twice in a row. Deterministic in `seed`.
pub fn zipf_trace(apps: usize, switches: usize, s: f64, seed: u64) -> Vec<usize> {
    let weights: Vec<f64> = (1..=apps).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(switches);
    let mut last = usize::MAX;
    while out.len() < switches {
        let mut x = rng.next_f64() * total;
        let mut pick = apps - 1;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                pick = i;
                break;
            }
            x -= w;
        }
        if pick != last {
            out.push(pick);
            last = pick;
        }
    }
    out
}

/// Progress of a run, for a progress bar.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The policy running.
    pub policy: &'static str,
    /// Steps done over all policies (launches and switches).
    pub done: u64,
    /// Steps in all.
    pub total: u64,
    /// What just happened.
    pub message: String,
}

/// A progress callback for terminals: an indicatif bar when stderr is a terminal, plain
/// lines on stderr otherwise. Call with `None` at the end to clear the bar.
pub fn terminal_progress() -> impl FnMut(Option<&Progress>) {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut last_line = Instant::now() - Duration::from_secs(60);
    move |p| {
        let Some(p) = p else {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            return;
        };
        if tty {
            let b = bar.get_or_insert_with(|| {
                let b = indicatif::ProgressBar::new(p.total);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} {prefix:>9} {wide_msg}",
                ) {
                    b.set_style(style.progress_chars("=> "));
                }
                b
            });
            b.set_prefix(p.policy);
            b.set_position(p.done);
            b.set_message(p.message.clone());
        } else if last_line.elapsed() >= Duration::from_secs(2) || p.done == p.total {
            last_line = Instant::now();
            eprintln!("[{}/{}] {}: {}", p.done, p.total, p.policy, p.message);
        }
    }
}

/// The figures of one policy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyReport {
    /// How the policy was configured (daemon command line and settings).
    pub configuration: String,
    /// Switches replayed.
    pub switches: u64,
    /// Switches that found the app alive.
    pub hot: u64,
    /// Switches that had to start the app from scratch.
    pub cold: u64,
    /// Switches that could not bring the app up at all (killed on every try).
    pub failed: u64,
    /// `hot / switches`.
    pub hot_start_ratio: f64,
    /// Hot starts whose hot part was all in RAM (no major fault).
    pub hot_from_ram: u64,
    /// Hot starts that read pages back from swap or disk.
    pub hot_from_swap: u64,
    /// Resume latency percentiles (hot starts), ms.
    pub resume_p50_ms: Option<f64>,
    /// 95th percentile.
    pub resume_p95_ms: Option<f64>,
    /// 99th percentile.
    pub resume_p99_ms: Option<f64>,
    /// Cold-start latency median (launches and cold switches), ms.
    pub cold_start_p50_ms: Option<f64>,
    /// Cold starts measured (launches included).
    pub cold_starts: u64,
    /// Every resume latency, ms (for the charts).
    pub resume_ms: Vec<f64>,
    /// Every cold-start latency, ms.
    pub cold_start_ms: Vec<f64>,
    /// Apps that died while the benchmark ran (seen by their exit status).
    pub kills: u64,
    /// Kills by reason as the killer reports them (`kernel-oom`, ebbd's reasons,
    /// `earlyoom-sigterm`/`earlyoom-sigkill`).
    pub kills_by_reason: BTreeMap<String, u64>,
    /// Apps killed while in the foreground (during their work).
    pub foreground_kills: u64,
    /// Apps killed while being started (then started again).
    pub killed_during_cold_start: u64,
    /// Compactions (ebbd).
    pub compactions: Option<u64>,
    /// Bytes ebbd advised for page-out (ebbd).
    pub compaction_bytes_advised: Option<u64>,
    /// ebbd's own account: RSS its compactions reclaimed, bytes.
    pub ebbd_rss_reclaimed_bytes: Option<u64>,
    /// ebbd's own account: swap its compactions added, bytes.
    pub ebbd_swap_gained_bytes: Option<u64>,
    /// Bytes paged out to swap over the run (pswpout × page size, machine-wide).
    pub bytes_paged_out: u64,
    /// Major faults of the apps' sandbox over the run (`memory.stat` `pgmajfault`):
    /// pages read back from swap or disk by the apps alone.
    pub sandbox_pgmajfault: Option<u64>,
    /// `pswpin` delta (pages, machine-wide).
    pub pswpin: u64,
    /// `pswpout` delta (pages, machine-wide).
    pub pswpout: u64,
    /// Uncompressed bytes in zram at the end of the run (device-wide).
    pub zram_orig_bytes: u64,
    /// RAM the zram device used at the end of the run.
    pub zram_mem_used_bytes: u64,
    /// `zram_orig_bytes / zram_mem_used_bytes`.
    pub zram_ratio: Option<f64>,
    /// The sandbox's peak charge (`max_usage_in_bytes` on v1), bytes.
    pub sandbox_peak_bytes: Option<u64>,
    /// System memory PSI `some` stall time over the run, ms.
    pub psi_some_ms: f64,
    /// System memory PSI `full` stall time over the run, ms.
    pub psi_full_ms: Option<f64>,
    /// CPU the daemon (ebbd, earlyoom) used, % of one core over the run.
    pub daemon_cpu_pct: Option<f64>,
    /// CPU seconds the daemon used (user + kernel).
    pub daemon_cpu_s: Option<f64>,
    /// CPU the daemon used over the switch trace alone (after every app's first launch and
    /// the compaction that follows it), % of one core. `daemon_cpu_pct` (the whole run) is
    /// the figure the target is judged on.
    pub daemon_cpu_pct_trace: Option<f64>,
    /// The kernel-mode part of `daemon_cpu_pct`: for ebbd mostly the page-out work that
    /// process_madvise(MADV_PAGEOUT) does in the caller's context.
    pub daemon_system_cpu_pct: Option<f64>,
    /// ebbd's own account of the CPU its compactions took (its worker thread), seconds:
    /// the compression of what it paged out, which the kernel policy does in the apps.
    pub ebbd_compaction_cpu_s: Option<f64>,
    /// `daemon_cpu_pct` less the compactions' CPU: what running ebbd costs besides the
    /// page-out work itself (scans, socket, pressure monitor, kills), % of one core.
    pub daemon_cpu_pct_besides_compaction: Option<f64>,
    /// Foreground work: MiB of hot data processed per second of foreground time.
    pub foreground_mib_per_s: f64,
    /// Pages found corrupt on resume (must be 0).
    pub corrupt_pages: u64,
    /// Wall time of the run, s.
    pub wall_s: f64,
    /// Anything worth knowing about this run.
    pub notes: Vec<String>,
}

/// Side-by-side ratios against the issue's targets.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Targets {
    /// ebbd hot-start ratio ÷ kill-only's (target ≥ 2).
    pub ebbd_vs_kill_only_hot_ratio: Option<f64>,
    /// ebbd resume p95 ÷ ebbd cold-start p50 (target ≤ 1/3).
    pub ebbd_resume_p95_over_cold_p50: Option<f64>,
    /// ebbd CPU, % of one core (target ≤ 2).
    pub ebbd_cpu_pct: Option<f64>,
    /// Whether each target was met (`None`: not measured).
    pub met: BTreeMap<String, Option<bool>>,
}

/// The benchmark's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What ran.
    pub config: Config,
    /// Per policy, by name.
    pub policies: BTreeMap<String, PolicyReport>,
    /// Policies not run, with the reason.
    pub skipped: BTreeMap<String, String>,
    /// The issue's targets.
    pub targets: Targets,
    /// Chart files written.
    pub charts: Vec<PathBuf>,
    /// Why charts are missing, if they are.
    pub chart_error: Option<String>,
    /// Total wall time, s.
    pub elapsed_s: f64,
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------
// Daemons

/// A running policy daemon; stopped (and its PID namespace with it) on drop.
struct Daemon {
    child: Child,
    /// The pid whose CPU counts (earlyoom inside its namespace: not the `unshare`).
    cpu_pid: u32,
    /// The ns init to `nsenter` (earlyoom), if any.
    ns_init: Option<u32>,
    socket: Option<PathBuf>,
    log: Arc<Mutex<Vec<String>>>,
    started: Instant,
}

impl Daemon {
    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SIGTERM first (ebbd exits cleanly), then SIGKILL.
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_child(&self.child),
                rustix::process::Signal::TERM,
            );
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(3) {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    fn log_lines(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn capture_output(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let readers: Vec<Box<dyn std::io::Read + Send>> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for r in readers {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if let Ok(mut l) = log.lock() {
                    if l.len() < 20_000 {
                        l.push(line);
                    }
                }
            }
        });
    }
    log
}

/// (`utime`, `stime`) of `pid` in seconds.
fn cpu_split(pid: u32) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may contain spaces) start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let hz = rustix::param::clock_ticks_per_second() as f64;
    Some((utime as f64 / hz, stime as f64 / hz))
}

/// The ebbd program: `opts.ebbd`, `$EBBD`, or `ebbd` next to the current executable.
pub fn ebbd_program(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    crate::proto::locate("EBBD", "ebbd").map_err(|searched| {
        format!(
            "ebbd binary not found (looked at {searched:?}); build it with `cargo build --release -p ebbd` or set EBBD"
        )
    })
}

/// The ebbd configuration for a policy: the benchmark's settings, then `extra`
/// (`section.key=value`, value a TOML literal) replacing or adding keys.
fn ebbd_config(
    cgroup: &Path,
    socket: &Path,
    compaction: bool,
    min_level: &str,
    extra: &[String],
) -> Result<String, String> {
    let cg = format!("{:?}", cgroup.display().to_string());
    let mut sections: Vec<(String, Vec<(String, String)>)> = vec![
        ("scope".into(), vec![("cgroup".into(), cg.clone())]),
        (
            "ranks".into(),
            vec![("scan_interval_ms".into(), "200".into())],
        ),
        (
            "compaction".into(),
            if compaction {
                // The apps share one budget: compact when it runs short, oldest cached first,
                // rather than every app as it is cached (`on_cached`, ebbd's default and
                // Android's way), which compresses about twice the bytes here.
                vec![
                    ("enabled".into(), "true".into()),
                    ("trigger".into(), "\"headroom\"".into()),
                ]
            } else {
                vec![("enabled".into(), "false".into())]
            },
        ),
        (
            "kill".into(),
            vec![
                ("enabled".into(), "true".into()),
                ("cgroup".into(), cg),
                ("min_level".into(), format!("{min_level:?}")),
            ],
        ),
        (
            "socket".into(),
            vec![("path".into(), format!("{:?}", socket.display().to_string()))],
        ),
    ];
    for e in extra {
        let (path, value) = e
            .split_once('=')
            .ok_or_else(|| format!("ebbd setting {e:?} is not section.key=value"))?;
        let (section, key) = path
            .trim()
            .split_once('.')
            .ok_or_else(|| format!("ebbd setting {e:?} is not section.key=value"))?;
        let i = match sections.iter().position(|(s, _)| s == section) {
            Some(i) => i,
            None => {
                sections.push((section.to_string(), Vec::new()));
                sections.len() - 1
            }
        };
        let keys = &mut sections[i].1;
        match keys.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value.trim().to_string(),
            None => keys.push((key.to_string(), value.trim().to_string())),
        }
    }
    let mut out = String::new();
    for (section, keys) in sections {
        let _ = writeln!(out, "[{section}]");
        for (k, v) in keys {
            let _ = writeln!(out, "{k} = {v}");
        }
        out.push('\n');
    }
    Ok(out)
}

fn start_ebbd(
    program: &Path,
    dir: &Path,
    cgroup: &Path,
    compaction: bool,
    min_level: &str,
    extra: &[String],
) -> Result<(Daemon, String), String> {
    let socket = dir.join("ebbd.sock");
    let config = ebbd_config(cgroup, &socket, compaction, min_level, extra)?;
    let config_path = dir.join("ebbd.toml");
    std::fs::write(&config_path, &config)
        .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
    let mut child = die_with_parent(Command::new(program))
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let log = capture_output(&mut child);
    let pid = child.id();
    let mut daemon = Daemon {
        child,
        cpu_pid: pid,
        ns_init: None,
        socket: Some(socket.clone()),
        log,
        started: Instant::now(),
    };
    let t = Instant::now();
    loop {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            return Err(format!(
                "ebbd exited at start ({status}): {}",
                daemon.log_lines().join(" | ")
            ));
        }
        if socket.exists() && ebbd_request(&socket, &serde_json::json!({"cmd": "status"})).is_ok() {
            break;
        }
        if t.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "ebbd did not answer on {} within 10 s: {}",
                socket.display(),
                daemon.log_lines().join(" | ")
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let how = format!(
        "{} --config ebbd.toml with: {}",
        program.display(),
        config.replace('\n', " ").replace("  ", " ")
    );
    Ok((daemon, how))
}

/// One request on ebbd's socket (the contract: one JSON object per line each way).
fn ebbd_request(socket: &Path, req: &serde_json::Value) -> Result<serde_json::Value, String> {
    let mut s =
        UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    writeln!(s, "{req}").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}"))?;
    if v.get("ok") == Some(&serde_json::Value::Bool(true)) {
        Ok(v)
    } else {
        Err(format!("ebbd answered {}", line.trim()))
    }
}

/// Start earlyoom as the init of its own PID namespace, acting once `MemAvailable`
/// drops `budget` below `available` (KiB).
fn start_earlyoom(available_kib: u64, budget: u64) -> Result<(Daemon, String), String> {
    let earlyoom = [
        "/usr/bin/earlyoom",
        "/usr/sbin/earlyoom",
        "/usr/local/bin/earlyoom",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .ok_or("earlyoom is not installed (Debian: `apt-get install -y earlyoom`)")?;
    for tool in ["unshare", "nsenter"] {
        if !["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(tool).is_file())
        {
            return Err(format!(
                "{tool} (util-linux) is missing: needed to confine earlyoom to the apps"
            ));
        }
    }
    let budget_kib = budget / 1024;
    // Leave room for the foreground and previous apps before acting: earlyoom sends
    // SIGTERM at `term`, SIGKILL at `kill` (an eighth of the budget further down).
    let term = available_kib.checked_sub(budget_kib).filter(|t| *t > budget_kib / 8).ok_or_else(|| {
        format!("MemAvailable {available_kib} KiB is below the budget {budget_kib} KiB: earlyoom cannot be given a threshold")
    })?;
    let kill = term - budget_kib / 8;
    // Everything that is not exactly `ebb-app` (POSIX ERE, no look-ahead): avoided. In
    // the namespace nothing else is visible anyway; this is belt and braces.
    let not_app = "^([^e].*|e|e[^b].*|eb|eb[^b].*|ebb|ebb[^-].*|ebb-|ebb-[^a].*|ebb-a|ebb-a[^p].*|ebb-ap|ebb-ap[^p].*|ebb-app.+)$";
    let args: Vec<String> = vec![
        "-M".into(),
        format!("{term},{kill}"),
        "-s".into(),
        "100,100".into(),
        "-r".into(),
        "0".into(),
        "--prefer".into(),
        "^ebb-app$".into(),
        "--avoid".into(),
        not_app.into(),
    ];
    let mut child = die_with_parent(Command::new("unshare"))
        .args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
        .arg(&earlyoom)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    let log = capture_output(&mut child);
    let upid = child.id();
    let mut daemon = Daemon {
        child,
        cpu_pid: upid,
        ns_init: None,
        socket: None,
        log,
        started: Instant::now(),
    };
    let t = Instant::now();
    let init = loop {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            return Err(format!(
                "unshare/earlyoom exited at start ({status}): {}",
                daemon.log_lines().join(" | ")
            ));
        }
        if let Some(pid) = children_of(upid).first().copied() {
            // Wait until the forked child has exec'd earlyoom.
            if std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "earlyoom")
            {
                break pid;
            }
        }
        if t.elapsed() > Duration::from_secs(5) {
            return Err(format!(
                "earlyoom did not start: {}",
                daemon.log_lines().join(" | ")
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    daemon.cpu_pid = init;
    daemon.ns_init = Some(init);
    let how = format!(
        "unshare --pid --fork --mount-proc --kill-child -- {} {} (MemAvailable at start {} MiB, budget {} MiB: \
         SIGTERM below {} MiB available, SIGKILL below {} MiB; swap condition always true; apps joined \
         into earlyoom's PID namespace with nsenter, so it sees and can kill only them; apps' sandbox without \
         a binding limit)",
        earlyoom.display(),
        args.iter()
            .map(|a| if a.contains(['|', '(', '^']) {
                format!("'{a}'")
            } else {
                a.clone()
            })
            .collect::<Vec<_>>()
            .join(" "),
        available_kib / 1024,
        budget / MIB,
        term / 1024,
        kill / 1024
    );
    Ok((daemon, how))
}

/// Have the kernel send SIGTERM to the daemon if the benchmark dies without cleaning
/// up (`PR_SET_PDEATHSIG`): no daemon outlives its run. (`unshare --kill-child` then
/// takes earlyoom, and its PID namespace, down with it.)
fn die_with_parent(mut cmd: Command) -> Command {
    use std::os::unix::process::CommandExt;
    let hook = || -> std::io::Result<()> {
        // SAFETY: prctl(2) with PR_SET_PDEATHSIG takes two integers and touches no memory;
        // it is a plain syscall, safe between fork and exec.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook makes one async-signal-safe syscall and allocates nothing, as
    // `pre_exec` requires of code running in the forked child.
    unsafe { cmd.pre_exec(hook) };
    cmd
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------------------
// One policy run

/// An app slot: the process (if running) and the pid whose adj we set.
struct Slot {
    app: Option<App>,
    pid: u32,
    spec: AppSpec,
}

struct Run<'a> {
    sandbox: &'a Sandbox,
    program: PathBuf,
    daemon: Option<Daemon>,
    /// Send ebbd `mark`s as well as writing `oom_score_adj`.
    marks: bool,
    slots: Vec<Slot>,
    r: PolicyReport,
    fg_bytes: u64,
    fg_time: Duration,
}

const ADJ_FOREGROUND: i16 = 0;
const ADJ_PREVIOUS: i16 = 700;
const ADJ_CACHED: i16 = 950;

impl Run<'_> {
    fn spawn_app(&self, spec: &AppSpec) -> Result<(App, u32), app::Error> {
        match self.daemon.as_ref().and_then(|d| d.ns_init) {
            None => {
                let a = App::spawn(&self.program, Some(self.sandbox))?;
                let pid = a.pid();
                Ok((a, pid))
            }
            Some(init) => {
                let mut cmd = Command::new("nsenter");
                cmd.args(["-t", &init.to_string(), "-p", "--"])
                    .arg(&self.program);
                let a = App::spawn_command(cmd, Some(self.sandbox))?;
                let t = Instant::now();
                let pid = loop {
                    if let Some(&p) = children_of(a.pid()).first() {
                        break p;
                    }
                    if t.elapsed() > Duration::from_secs(2) {
                        return Err(app::Error::Io(std::io::Error::other(
                            "nsenter did not start ebb-app",
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                };
                let _ = spec;
                Ok((a, pid))
            }
        }
    }

    fn set_band(&self, i: usize, adj: i16) {
        let pid = self.slots[i].pid;
        if self.slots[i].app.is_none() {
            return;
        }
        let _ = ebb::procfs::oom::write_oom_score_adj(pid, adj);
        if let Some(sock) = self
            .daemon
            .as_ref()
            .and_then(|d| d.socket.as_ref())
            .filter(|_| self.marks)
        {
            let band = match adj {
                ADJ_FOREGROUND => "foreground",
                ADJ_CACHED => "cached",
                _ => "normal",
            };
            let _ = ebbd_request(
                sock,
                &serde_json::json!({"cmd": "mark", "pid": pid, "band": band}),
            );
        }
    }

    /// Reap apps that died; count them.
    fn reap(&mut self) {
        for s in &mut self.slots {
            if let Some(a) = s.app.as_mut() {
                if let Ok(Some(status)) = a.try_wait() {
                    let _ = status;
                    self.r.kills += 1;
                    s.app = None;
                }
            }
        }
    }

    /// Start app `i` from scratch; the latency from `t0`. Up to 3 tries.
    fn cold_start(&mut self, i: usize, adj: i16, t0: Instant) -> Option<f64> {
        for _ in 0..3 {
            let spec = self.slots[i].spec.clone();
            let (mut a, pid) = match self.spawn_app(&spec) {
                Ok(x) => x,
                Err(e) => {
                    self.r.notes.push(format!("spawning app {i}: {e}"));
                    return None;
                }
            };
            let _ = ebb::procfs::oom::write_oom_score_adj(pid, adj);
            match a.build(&spec) {
                Ok(_) => {
                    let lat = ms(t0.elapsed());
                    self.slots[i].app = Some(a);
                    self.slots[i].pid = pid;
                    self.r.cold_start_ms.push(lat);
                    return Some(lat);
                }
                Err(app::Error::Died { .. }) => {
                    // Killed while starting (the budget is too tight for it now).
                    self.r.kills += 1;
                    self.r.killed_during_cold_start += 1;
                }
                Err(e) => {
                    self.r.notes.push(format!("app {i} failed to build: {e}"));
                    return None;
                }
            }
        }
        None
    }
}

fn run_policy(
    config: &Config,
    policy: Policy,
    opts: &Options,
    program: &Path,
    progress: &mut dyn FnMut(u64, String),
) -> Result<Result<PolicyReport, String>, Error> {
    let started = Instant::now();
    let dir = tempdir(policy.name())?;
    let total_ws = config.apps as u64 * config.app_mib * MIB;
    let limit = match policy {
        // earlyoom must be the one to act: a limit that never binds (a safety cap).
        Policy::Earlyoom => total_ws + total_ws / 2,
        _ => config.budget_bytes,
    };
    let sandbox = Sandbox::new(SandboxConfig {
        name_hint: format!("appswitch_{}", policy.name().replace('-', "_")),
        memory_limit: Some(limit),
        swap_limit: None,
    })?;
    let avail0_kib = meminfo_available_kib()?;
    let (daemon, configuration) = match policy {
        Policy::Kernel => (
            None,
            format!(
                "no daemon: sandbox limit {} MiB with zram swap; the kernel's memcg OOM killer is the only killer",
                config.budget_bytes / MIB
            ),
        ),
        Policy::KillOnly | Policy::Ebbd => {
            let prog = match ebbd_program(opts.ebbd.as_deref()) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            match start_ebbd(
                &prog,
                dir.path(),
                sandbox.path(),
                policy == Policy::Ebbd,
                &config.kill_min_level,
                &opts.ebbd_set,
            ) {
                Ok((d, how)) => (Some(d), how),
                Err(e) => return Ok(Err(e)),
            }
        }
        Policy::Earlyoom => match start_earlyoom(avail0_kib, config.budget_bytes) {
            Ok((d, how)) => (Some(d), how),
            Err(e) => return Ok(Err(e)),
        },
    };
    let mut run = Run {
        sandbox: &sandbox,
        program: program.to_path_buf(),
        daemon,
        marks: !opts.no_marks,
        slots: (0..config.apps)
            .map(|i| Slot {
                app: None,
                pid: 0,
                spec: app_spec(
                    config.app_mib,
                    0xA99 + i as u64,
                    config.rounds,
                    dir.path().join(format!("app-{i}.dat")),
                ),
            })
            .collect(),
        r: PolicyReport {
            configuration,
            ..PolicyReport::default()
        },
        fg_bytes: 0,
        fg_time: Duration::ZERO,
    };
    let vm0 = ebb::procfs::vmstat::read()?;
    let psi0 = ebb::procfs::pressure::read_memory().ok();
    let oom0 = sandbox.cgroup().oom_kills().unwrap_or(0);
    let majflt0 = sandbox
        .stat()
        .ok()
        .and_then(|st| st.get("total_pgmajfault").or_else(|| st.get("pgmajfault")))
        .unwrap_or(0);
    let t_run = Instant::now();

    // Launch: every app starts cold, in order; the last two launched are foreground and
    // previous, the rest cached.
    for i in 0..config.apps {
        if i >= 2 {
            run.set_band(i - 2, ADJ_CACHED);
        }
        if i >= 1 {
            run.set_band(i - 1, ADJ_PREVIOUS);
        }
        run.reap();
        let t0 = Instant::now();
        if run.cold_start(i, ADJ_FOREGROUND, t0).is_none() {
            run.r.notes.push(format!("app {i} could not be launched"));
        }
        run.r.cold_starts += 1;
        progress(1, format!("launched app {i}"));
    }
    std::thread::sleep(Duration::from_millis(config.dwell_ms));
    // The daemon's CPU from here on covers the switch trace alone, without the one-off
    // compaction of every app after its first launch (reported beside the whole run).
    let trace_start = (
        Instant::now(),
        run.daemon.as_ref().and_then(|d| cpu_split(d.cpu_pid)),
    );

    let mut fg = config.apps - 1;
    let mut prev = config.apps.checked_sub(2);
    for (n, &target) in config.trace.iter().enumerate() {
        run.reap();
        // Bands: target foreground, the old foreground previous, the old previous cached.
        if let Some(p) = prev {
            if p != target {
                run.set_band(p, ADJ_CACHED);
            }
        }
        run.set_band(fg, ADJ_PREVIOUS);
        prev = Some(fg);
        fg = target;
        let t0 = Instant::now();
        run.r.switches += 1;
        let mut hot = false;
        let target_pid = run.slots[target].pid;
        if let Some(a) = run.slots[target].app.as_mut() {
            let _ = ebb::procfs::oom::write_oom_score_adj(target_pid, ADJ_FOREGROUND);
            match a.resume() {
                Ok(res) => {
                    hot = true;
                    run.r.hot += 1;
                    run.r.resume_ms.push(ms(t0.elapsed()));
                    if res.majflt > 0 {
                        run.r.hot_from_swap += 1;
                    } else {
                        run.r.hot_from_ram += 1;
                    }
                }
                Err(app::Error::Died { .. }) => {
                    run.r.kills += 1;
                    run.slots[target].app = None;
                }
                Err(app::Error::Corrupt { page, .. }) => {
                    run.r.corrupt_pages += 1;
                    run.r.notes.push(format!(
                        "switch {n}: app {target} found page {page} corrupt"
                    ));
                    run.slots[target].app = None;
                }
                Err(e) => {
                    run.r.notes.push(format!("switch {n}: app {target}: {e}"));
                    run.slots[target].app = None;
                }
            }
        }
        if !hot {
            run.r.cold += 1;
            run.r.cold_starts += 1;
            if run.cold_start(target, ADJ_FOREGROUND, t0).is_none() {
                run.r.failed += 1;
            }
        }
        run.set_band(target, ADJ_FOREGROUND);
        // Foreground work.
        if let Some(a) = run.slots[target].app.as_mut() {
            let t = Instant::now();
            match a.work(config.dwell_ms) {
                Ok(bytes) => {
                    run.fg_bytes += bytes;
                    run.fg_time += t.elapsed();
                }
                Err(app::Error::Died { .. }) => {
                    run.r.kills += 1;
                    run.r.foreground_kills += 1;
                    run.slots[target].app = None;
                    run.fg_time += t.elapsed();
                }
                Err(e) => {
                    run.r
                        .notes
                        .push(format!("switch {n}: work of app {target}: {e}"));
                    run.fg_time += t.elapsed();
                }
            }
        }
        progress(
            1,
            format!(
                "switch {}/{}: app {target} {}",
                n + 1,
                config.trace.len(),
                if hot { "hot" } else { "cold" }
            ),
        );
    }
    run.reap();
    let wall = t_run.elapsed();

    // Figures before anything is torn down.
    let vm1 = ebb::procfs::vmstat::read()?;
    let psi1 = ebb::procfs::pressure::read_memory().ok();
    let r = &mut run.r;
    r.pswpin = vm1.pswpin.saturating_sub(vm0.pswpin);
    r.pswpout = vm1.pswpout.saturating_sub(vm0.pswpout);
    r.bytes_paged_out = r.pswpout * ebb::sys::page_size() as u64;
    if let (Some(a), Some(b)) = (psi0, psi1) {
        r.psi_some_ms = b.some.total_us.saturating_sub(a.some.total_us) as f64 / 1000.0;
        r.psi_full_ms = match (a.full, b.full) {
            (Some(x), Some(y)) => Some(y.total_us.saturating_sub(x.total_us) as f64 / 1000.0),
            _ => None,
        };
    }
    r.sandbox_peak_bytes =
        std::fs::read_to_string(sandbox.path().join("memory.max_usage_in_bytes"))
            .or_else(|_| std::fs::read_to_string(sandbox.path().join("memory.peak")))
            .ok()
            .and_then(|t| t.trim().parse().ok());
    r.sandbox_pgmajfault = sandbox
        .stat()
        .ok()
        .and_then(|st| st.get("total_pgmajfault").or_else(|| st.get("pgmajfault")))
        .map(|v| v.saturating_sub(majflt0));
    if policy == Policy::Earlyoom {
        // earlyoom's threshold is absolute: other users' memory moves it.
        if let (Ok(avail), Ok(usage)) = (meminfo_available_kib(), sandbox.usage()) {
            let drift = (avail + usage / 1024) as f64 / 1024.0 - avail0_kib as f64 / 1024.0;
            r.notes.push(format!(
                "MemAvailable + apps' charge moved by {drift:+.0} MiB during the run (other users of the machine): \
                 earlyoom's effective budget was off by that much"
            ));
        }
    }
    r.foreground_mib_per_s = if run.fg_time.is_zero() {
        0.0
    } else {
        run.fg_bytes as f64 / MIB as f64 / run.fg_time.as_secs_f64()
    };
    match policy {
        Policy::Kernel => {
            let oom = sandbox
                .cgroup()
                .oom_kills()
                .unwrap_or(oom0)
                .saturating_sub(oom0);
            r.kills_by_reason.insert("kernel-oom".into(), oom);
        }
        Policy::KillOnly | Policy::Ebbd => {
            if let Some(sock) = run.daemon.as_ref().and_then(|d| d.socket.clone()) {
                match ebbd_request(&sock, &serde_json::json!({"cmd": "status"})) {
                    Ok(st) => {
                        if let Some(by) = st.pointer("/kills/by_reason").and_then(|v| v.as_object())
                        {
                            for (k, v) in by {
                                r.kills_by_reason
                                    .insert(format!("ebbd:{k}"), v.as_u64().unwrap_or(0));
                            }
                        }
                        r.compactions = st.get("compactions").and_then(|v| v.as_u64());
                        r.compaction_bytes_advised =
                            st.get("compaction_bytes_advised").and_then(|v| v.as_u64());
                        r.ebbd_rss_reclaimed_bytes =
                            st.get("rss_reclaimed_bytes").and_then(|v| v.as_u64());
                        r.ebbd_swap_gained_bytes =
                            st.get("swap_gained_bytes").and_then(|v| v.as_u64());
                        r.ebbd_compaction_cpu_s =
                            st.get("compaction_cpu_seconds").and_then(|v| v.as_f64());
                    }
                    Err(e) => r.notes.push(format!("ebbd status: {e}")),
                }
            }
            let oom = sandbox
                .cgroup()
                .oom_kills()
                .unwrap_or(oom0)
                .saturating_sub(oom0);
            if oom > 0 {
                r.kills_by_reason.insert("kernel-oom".into(), oom);
            }
        }
        Policy::Earlyoom => {
            let lines = run
                .daemon
                .as_ref()
                .map(Daemon::log_lines)
                .unwrap_or_default();
            for l in &lines {
                if l.contains("sending") || l.contains("rror") || l.contains("kill") {
                    r.notes.push(format!("earlyoom: {l}"));
                }
                if l.contains("sending SIGTERM") {
                    *r.kills_by_reason
                        .entry("earlyoom-sigterm".into())
                        .or_default() += 1;
                } else if l.contains("sending SIGKILL") {
                    *r.kills_by_reason
                        .entry("earlyoom-sigkill".into())
                        .or_default() += 1;
                }
            }
            let oom = sandbox
                .cgroup()
                .oom_kills()
                .unwrap_or(oom0)
                .saturating_sub(oom0);
            if oom > 0 {
                r.kills_by_reason.insert("kernel-oom".into(), oom);
            }
        }
    }
    // Zram: device-wide (the device is shared), read while the apps still hold their swap.
    if let Ok(z) = ZramSwap::shared(0, "lz4").and_then(|z| z.status()) {
        r.zram_orig_bytes = z.orig_data_size;
        r.zram_mem_used_bytes = z.mem_used_total;
        // An almost empty device's ratio is its fixed overhead, not compression.
        r.zram_ratio = z
            .compression_ratio()
            .filter(|_| z.orig_data_size >= 16 * MIB);
    }
    if let Some(d) = run.daemon.as_ref() {
        // From the daemon's start (its own start-up included) to now.
        if let Some((u, s)) = cpu_split(d.cpu_pid) {
            let wall_d = d.started.elapsed().as_secs_f64().max(wall.as_secs_f64());
            r.daemon_cpu_pct = Some(100.0 * (u + s) / wall_d);
            r.daemon_cpu_s = Some(u + s);
            r.daemon_system_cpu_pct = Some(100.0 * s / wall_d);
            if let Some(c) = r.ebbd_compaction_cpu_s {
                r.daemon_cpu_pct_besides_compaction = Some(100.0 * ((u + s) - c).max(0.0) / wall_d);
            }
            if let (t0, Some((u0, s0))) = trace_start {
                let wall_t = t0.elapsed().as_secs_f64().max(1e-3);
                r.daemon_cpu_pct_trace = Some(100.0 * ((u + s) - (u0 + s0)).max(0.0) / wall_t);
            }
        }
    }
    r.wall_s = started.elapsed().as_secs_f64();
    // Tear down: apps, then the daemon, then the sandbox (drop order below).
    for s in &mut run.slots {
        s.app = None;
    }
    if let Some(mut d) = run.daemon.take() {
        d.stop();
        // What the daemon decided, for whoever wants to know why the figures are what they are.
        if let Some(out) = &opts.out_dir {
            let path = out.join(format!("{}-daemon.log", policy.name()));
            let mut text = d.log_lines().join("\n");
            text.push('\n');
            if let Err(e) = std::fs::create_dir_all(out).and_then(|()| std::fs::write(&path, text))
            {
                run.r
                    .notes
                    .push(format!("daemon log not written to {}: {e}", path.display()));
            }
        }
    }
    let mut r = std::mem::take(&mut run.r);
    r.resume_ms.sort_by(f64::total_cmp);
    r.cold_start_ms.sort_by(f64::total_cmp);
    r.hot_start_ratio = if r.switches > 0 {
        r.hot as f64 / r.switches as f64
    } else {
        0.0
    };
    r.resume_p50_ms = percentile(&r.resume_ms, 50.0);
    r.resume_p95_ms = percentile(&r.resume_ms, 95.0);
    r.resume_p99_ms = percentile(&r.resume_ms, 99.0);
    r.cold_start_p50_ms = percentile(&r.cold_start_ms, 50.0);
    r.cold_starts = r.cold_start_ms.len() as u64;
    r.kills_by_reason.retain(|_, v| *v > 0);
    drop(run);
    drop(sandbox);
    Ok(Ok(r))
}

fn meminfo_available_kib() -> Result<u64, Error> {
    Ok(ebb::procfs::meminfo::read()?
        .get("MemAvailable")
        .unwrap_or(0)
        / 1024)
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(tag: &str) -> Result<TempDir, Error> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    // Not /dev/shm: the data files must be real files, whose pages the kernel can drop.
    let base = std::env::var_os("EBB_BENCH_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let p = base.join(format!(
        "ebb-appswitch-{}-{}-{}",
        tag,
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&p).map_err(io_err(format!("creating {}", p.display())))?;
    Ok(TempDir(p))
}

/// Run the benchmark: every policy in turn on the same trace. `progress` is called after
/// every launch and switch (and with `None` at the end); see [`terminal_progress`].
pub fn run(opts: &Options, mut progress: impl FnMut(Option<&Progress>)) -> Result<Report, Error> {
    let started = Instant::now();
    let (mut config, policies) = opts.resolve()?;
    let program = App::program()?;
    // Shared zram big enough for every app's anonymous memory.
    let zram_size = (config.apps as u64 * config.app_mib * MIB).max(1 << 30);
    let zram = ZramSwap::shared(zram_size, "lz4")?;
    let z = zram.status()?;
    config.zram = format!(
        "{} ({}, {} MiB, shared)",
        z.device.display(),
        z.algorithm.as_deref().unwrap_or("?"),
        z.disksize / MIB
    );
    // Other swap devices take part of the traffic (by priority): say so beside the figures.
    let others: Vec<String> = crate::zram::active_swaps()?
        .into_iter()
        .filter(|d| *d != z.device)
        .map(|d| d.display().to_string())
        .collect();
    if !others.is_empty() {
        config.zram.push_str(&format!(
            "; other swap active: {} (the apps may swap there too; zram figures cover {} only)",
            others.join(", "),
            z.device.display()
        ));
    }
    let total = policies.len() as u64 * (config.apps + config.switches) as u64;
    let mut done = 0u64;
    let mut policies_out = BTreeMap::new();
    let mut skipped = BTreeMap::new();
    for policy in policies {
        let mut cb = |step: u64, message: String| {
            done += step;
            progress(Some(&Progress {
                policy: policy.name(),
                done,
                total,
                message,
            }));
        };
        match run_policy(&config, policy, opts, &program, &mut cb)? {
            Ok(r) => {
                policies_out.insert(policy.name().to_string(), r);
            }
            Err(reason) => {
                done += (config.apps + config.switches) as u64;
                skipped.insert(policy.name().to_string(), reason);
            }
        }
    }
    progress(None);
    drop(zram);
    let targets = targets(&policies_out);
    let mut report = Report {
        config,
        policies: policies_out,
        skipped,
        targets,
        charts: Vec::new(),
        chart_error: None,
        elapsed_s: 0.0,
    };
    if let Some(dir) = &opts.out_dir {
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        match chart::write_charts(&report, dir) {
            Ok(files) => report.charts = files,
            Err(e) => report.chart_error = Some(e),
        }
        report.elapsed_s = started.elapsed().as_secs_f64();
        let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Io {
            what: "serialising the report".into(),
            source: std::io::Error::other(e),
        })?;
        let path = dir.join("app-switch.json");
        std::fs::write(&path, json).map_err(io_err(format!("writing {}", path.display())))?;
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

fn targets(p: &BTreeMap<String, PolicyReport>) -> Targets {
    let mut t = Targets::default();
    if let (Some(e), Some(k)) = (p.get("ebbd"), p.get("kill-only")) {
        t.ebbd_vs_kill_only_hot_ratio = if k.hot_start_ratio > 0.0 {
            Some(e.hot_start_ratio / k.hot_start_ratio)
        } else if e.hot_start_ratio > 0.0 {
            Some(f64::INFINITY)
        } else {
            None
        };
    }
    if let Some(e) = p.get("ebbd") {
        if let (Some(r), Some(c)) = (e.resume_p95_ms, e.cold_start_p50_ms) {
            t.ebbd_resume_p95_over_cold_p50 = Some(r / c);
        }
        t.ebbd_cpu_pct = e.daemon_cpu_pct;
    }
    t.met.insert(
        "ebbd_hot_start_ratio_at_least_2x_kill_only".into(),
        t.ebbd_vs_kill_only_hot_ratio.map(|r| r >= 2.0),
    );
    t.met.insert(
        "ebbd_resume_p95_at_most_third_of_cold_p50".into(),
        t.ebbd_resume_p95_over_cold_p50.map(|r| r <= 1.0 / 3.0),
    );
    t.met.insert(
        "ebbd_cpu_at_most_2pct".into(),
        t.ebbd_cpu_pct.map(|c| c <= 2.0),
    );
    t
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}"))
}

impl Report {
    /// The human table.
    pub fn render(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "app-switch ({} profile): {} apps x {} MiB ({:.0} anon + {:.0} file, {:.0} hot), budget {} MiB ({:.1}x overcommitted), {} switches (Zipf s={}, seed {}), {} ms foreground work each, zram {}",
            c.profile,
            c.apps,
            c.app_mib,
            c.anon_mib,
            c.file_mib,
            c.hot_mib,
            c.budget_bytes / MIB,
            c.overcommit,
            c.switches,
            c.zipf_s,
            c.seed,
            c.dwell_ms,
            c.zram
        );
        let names: Vec<&String> = self.policies.keys().collect();
        let order: Vec<&String> = Policy::ALL
            .iter()
            .filter_map(|p| names.iter().find(|n| n.as_str() == p.name()).copied())
            .collect();
        let mut rows: Vec<(&str, Vec<String>)> = Vec::new();
        let col = |f: &dyn Fn(&PolicyReport) -> String| -> Vec<String> {
            order.iter().map(|n| f(&self.policies[*n])).collect()
        };
        rows.push((
            "hot-start ratio",
            col(&|r| format!("{:.2}", r.hot_start_ratio)),
        ));
        rows.push((
            "hot / cold / failed",
            col(&|r| format!("{}/{}/{}", r.hot, r.cold, r.failed)),
        ));
        rows.push((
            "hot from RAM / swap",
            col(&|r| format!("{}/{}", r.hot_from_ram, r.hot_from_swap)),
        ));
        rows.push(("resume p50 ms", col(&|r| fmt_opt(r.resume_p50_ms, 1))));
        rows.push(("resume p95 ms", col(&|r| fmt_opt(r.resume_p95_ms, 1))));
        rows.push(("resume p99 ms", col(&|r| fmt_opt(r.resume_p99_ms, 1))));
        rows.push((
            "cold start p50 ms",
            col(&|r| fmt_opt(r.cold_start_p50_ms, 0)),
        ));
        rows.push(("kills", col(&|r| r.kills.to_string())));
        rows.push((
            "kills by reason",
            col(&|r| {
                if r.kills_by_reason.is_empty() {
                    "-".into()
                } else {
                    r.kills_by_reason
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                }
            }),
        ));
        rows.push((
            "compactions",
            col(&|r| r.compactions.map_or("-".into(), |c| c.to_string())),
        ));
        rows.push((
            "paged out MiB (machine)",
            col(&|r| format!("{:.0}", r.bytes_paged_out as f64 / MIB as f64)),
        ));
        rows.push((
            "daemon CPU s per GiB reclaimed",
            col(&|r| match (r.daemon_cpu_s, r.ebbd_rss_reclaimed_bytes) {
                (Some(c), Some(b)) if b >= 64 * MIB => {
                    format!("{:.2}", c / (b as f64 / (1u64 << 30) as f64))
                }
                _ => "-".into(),
            }),
        ));
        rows.push((
            "ebbd RSS reclaimed MiB",
            col(&|r| {
                r.ebbd_rss_reclaimed_bytes
                    .map_or("-".into(), |b| format!("{:.0}", b as f64 / MIB as f64))
            }),
        ));
        rows.push((
            "apps' major faults",
            col(&|r| r.sandbox_pgmajfault.map_or("-".into(), |v| v.to_string())),
        ));
        rows.push((
            "pswpin / pswpout (machine)",
            col(&|r| format!("{}/{}", r.pswpin, r.pswpout)),
        ));
        rows.push((
            "zram ratio (RAM used MiB)",
            col(&|r| {
                format!(
                    "{} ({:.0})",
                    fmt_opt(r.zram_ratio, 2),
                    r.zram_mem_used_bytes as f64 / MIB as f64
                )
            }),
        ));
        rows.push((
            "sandbox peak MiB",
            col(&|r| {
                r.sandbox_peak_bytes
                    .map_or("-".into(), |b| format!("{:.0}", b as f64 / MIB as f64))
            }),
        ));
        rows.push((
            "PSI some / full ms",
            col(&|r| format!("{:.0}/{}", r.psi_some_ms, fmt_opt(r.psi_full_ms, 0))),
        ));
        rows.push((
            "daemon CPU % over the switches",
            col(&|r| fmt_opt(r.daemon_cpu_pct_trace, 2)),
        ));
        rows.push((
            "daemon CPU % (of it kernel)",
            col(&|r| {
                format!(
                    "{} ({})",
                    fmt_opt(r.daemon_cpu_pct, 2),
                    fmt_opt(r.daemon_system_cpu_pct, 2)
                )
            }),
        ));
        rows.push((
            "daemon CPU % besides page-out",
            col(&|r| fmt_opt(r.daemon_cpu_pct_besides_compaction, 2)),
        ));
        rows.push((
            "foreground MiB/s",
            col(&|r| format!("{:.0}", r.foreground_mib_per_s)),
        ));
        rows.push(("corrupt pages", col(&|r| r.corrupt_pages.to_string())));
        rows.push(("wall s", col(&|r| format!("{:.0}", r.wall_s))));
        let w0 = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let widths: Vec<usize> = (0..order.len())
            .map(|i| {
                rows.iter()
                    .map(|(_, v)| v[i].len())
                    .chain([order[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let _ = write!(s, "{:w0$}", "");
        for (i, n) in order.iter().enumerate() {
            let _ = write!(s, "  {:>w$}", n, w = widths[i]);
        }
        s.push('\n');
        for (k, v) in &rows {
            let _ = write!(s, "{k:w0$}");
            for (i, x) in v.iter().enumerate() {
                let _ = write!(s, "  {:>w$}", x, w = widths[i]);
            }
            s.push('\n');
        }
        for (n, why) in &self.skipped {
            let _ = writeln!(s, "skipped {n}: {why}");
        }
        let t = &self.targets;
        let mark = |m: Option<bool>| match m {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        let _ = writeln!(
            s,
            "targets: ebbd/kill-only hot-start {} (>= 2: {}); ebbd resume p95 / cold p50 {} (<= 0.33: {}); ebbd CPU {}% (<= 2: {})",
            fmt_opt(t.ebbd_vs_kill_only_hot_ratio, 2),
            mark(
                t.met
                    .get("ebbd_hot_start_ratio_at_least_2x_kill_only")
                    .copied()
                    .flatten()
            ),
            fmt_opt(t.ebbd_resume_p95_over_cold_p50, 3),
            mark(
                t.met
                    .get("ebbd_resume_p95_at_most_third_of_cold_p50")
                    .copied()
                    .flatten()
            ),
            fmt_opt(t.ebbd_cpu_pct, 2),
            mark(t.met.get("ebbd_cpu_at_most_2pct").copied().flatten()),
        );
        for n in &order {
            let r = &self.policies[*n];
            let _ = writeln!(s, "{n}: {}", r.configuration);
            for note in r.notes.iter().take(8) {
                let _ = writeln!(s, "  note: {note}");
            }
        }
        if !self.charts.is_empty() {
            let _ = writeln!(
                s,
                "charts: {}",
                self.charts
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(e) = &self.chart_error {
            let _ = writeln!(s, "charts not written: {e}");
        }
        let _ = writeln!(s, "elapsed {:.0} s", self.elapsed_s);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_is_seeded_zipf_without_repeats() {
        let a = zipf_trace(8, 2000, 1.0, 7);
        assert_eq!(a, zipf_trace(8, 2000, 1.0, 7));
        assert_ne!(a, zipf_trace(8, 2000, 1.0, 8));
        assert!(a.windows(2).all(|w| w[0] != w[1]));
        let mut counts = [0usize; 8];
        a.iter().for_each(|&i| counts[i] += 1);
        // The most popular app is chosen more often than the least popular one.
        assert!(counts[0] > 2 * counts[7], "{counts:?}");
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    }

    #[test]
    fn sizes_policies_percentiles() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("768M"), Ok(768 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("x").is_err());
        assert_eq!(
            parse_policies("kernel,ebbd"),
            Ok(vec![Policy::Kernel, Policy::Ebbd])
        );
        assert!(parse_policies("kernel,foo").is_err());
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn ebbd_config_is_the_contract() {
        let c = ebbd_config(
            Path::new("/sys/fs/cgroup/memory/ebb-x-1-0"),
            Path::new("/tmp/s.sock"),
            false,
            "critical",
            &[
                "compaction.min_growth_mib=32".into(),
                "kill.min_level=\"medium\"".into(),
            ],
        )
        .unwrap();
        assert!(c.contains("[compaction]\nenabled = false\nmin_growth_mib = 32\n"));
        assert!(c.contains("min_level = \"medium\"\n"));
        assert!(!c.contains("critical"));
        assert!(
            ebbd_config(
                Path::new("/x"),
                Path::new("/s"),
                true,
                "low",
                &["nodot=1".into()]
            )
            .is_err()
        );
        assert!(c.contains("[scope]\ncgroup = \"/sys/fs/cgroup/memory/ebb-x-1-0\""));
        assert!(c.contains("[kill]\nenabled = true\ncgroup = \"/sys/fs/cgroup/memory/ebb-x-1-0\""));
        assert!(c.contains("[socket]\npath = \"/tmp/s.sock\""));
        // The ebbd policy compacts for headroom; an override can ask for Android's way.
        let on = |extra: &[String]| {
            ebbd_config(Path::new("/x"), Path::new("/s"), true, "critical", extra).unwrap()
        };
        assert!(on(&[]).contains("[compaction]\nenabled = true\ntrigger = \"headroom\"\n"));
        assert!(
            on(&["compaction.trigger=\"on_cached\"".into()]).contains("trigger = \"on_cached\"\n")
        );
    }
}
