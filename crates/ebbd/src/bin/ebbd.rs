//! `ebbd`: the daemon. See the crate docs and the README section "Running ebbd".
//!
//! Exit codes: 0 clean exit (SIGTERM/SIGINT) or valid config, 1 failure, 2 usage error.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};

use ebbd::config::Config;
use ebbd::daemon::{Daemon, Options};

/// ebbd: proactive reclaim of cached processes, and a last-resort killer.
#[derive(Parser)]
#[command(name = "ebbd", version, about, long_about = None)]
struct Cli {
    /// The TOML config file (every key has a default; no file is needed).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Decide and log, but act on nothing (no advice, no kill).
    #[arg(long)]
    dry_run: bool,
    /// The socket path (overrides `socket.path`).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check a config file: exit 0 if valid, else print the error with line and column, exit 1.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EBBD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// capability(7) bit numbers.
const CAP_KILL: u32 = 5;
const CAP_SYS_NICE: u32 = 23;

/// Capabilities from /proc/self/status `CapEff`.
fn missing_capabilities() -> Vec<&'static str> {
    let caps = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| ebb::caps::parse_cap_eff(&s))
        .unwrap_or(0);
    let mut missing = Vec::new();
    if caps & (1u64 << CAP_SYS_NICE) == 0 {
        missing.push("CAP_SYS_NICE (process_madvise on other processes)");
    }
    if caps & (1u64 << CAP_KILL) == 0 {
        missing.push("CAP_KILL (killing other users' processes)");
    }
    missing
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread (and so in every thread spawned after),
/// and returns the set for `sigwait`.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t; the signal numbers are valid; passing a
    // null old-set pointer to pthread_sigmask is allowed.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is an initialised sigset_t and `sig` a valid out-pointer; the signals in
    // the set are blocked in every thread, so sigwait is their only receiver.
    let rc = unsafe { libc::sigwait(set, &mut sig) };
    if rc == 0 { sig } else { 0 }
}

fn run(cli: Cli) -> Result<()> {
    let config = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if !cli.dry_run {
        let missing = missing_capabilities();
        if !missing.is_empty() {
            anyhow::bail!(
                "missing capabilities: {}; run as root or grant them (AmbientCapabilities= in the systemd unit), or use --dry-run",
                missing.join(", ")
            );
        }
    }
    let set = block_signals();
    let mut daemon = Daemon::start(Options {
        config,
        config_path: cli.config.clone(),
        dry_run: cli.dry_run,
        socket: cli.socket.clone(),
    })
    .context("starting ebbd")?;
    let control = daemon.control();
    std::thread::Builder::new()
        .name("ebbd-signals".into())
        .spawn(move || {
            loop {
                match wait_signal(&set) {
                    libc::SIGHUP => {
                        tracing::info!("SIGHUP: reloading the config");
                        control.reload();
                    }
                    libc::SIGTERM | libc::SIGINT => {
                        tracing::info!("signal: exiting");
                        control.stop();
                        break;
                    }
                    _ => {}
                }
            }
        })
        .context("spawning the signal thread")?;
    daemon.run();
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Some(Command::CheckConfig { file }) = &cli.command {
        match Config::load(file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                return;
            }
            Err(e) => {
                eprintln!("ebbd: {e}");
                std::process::exit(1);
            }
        }
    }
    init_logs(cli.log_format);
    if let Err(e) = run(cli) {
        eprintln!("ebbd: error: {e:#}");
        std::process::exit(1);
    }
}
