//! zram swap for the memory lab: set up, share between parallel tests, tear down.
//!
//! A zram device is a compressed RAM block device; made into swap, it lets the kernel
//! push anonymous memory out without a disk. Setting one up (see
//! `Documentation/admin-guide/blockdev/zram.rst`):
//!
//! 1. pick a device: `/dev/zram0` if it is unconfigured (`disksize` 0) and not swap,
//!    else `cat /sys/class/zram-control/hot_add` creates a new one;
//! 2. `comp_algorithm` (only accepted *before* `disksize`), then `disksize` — the kernel
//!    refuses `disksize` on an initialised device with EBUSY, which makes it the claim:
//!    if someone else got there first we fall back to a hot-added device;
//! 3. `mkswap /dev/zramN`, `swapon(2)`.
//!
//! Teardown is `swapoff(2)`, `echo 1 > reset` and, for hot-added devices,
//! `echo N > /sys/class/zram-control/hot_remove`.
//!
//! Swap is machine-wide state, and tests run in parallel processes. Every setup and
//! teardown holds an exclusive `flock(2)` on [`STATE_DIR`]`/zram.lock`, and every device
//! ebb sets up gets a record `zramN.state` in [`STATE_DIR`]: who owns it (one process,
//! the shared pool with its user pids, or the persistent [`Lab`]) and whether ebb
//! hot-added it. Only devices with a record are ever torn down; records whose owners
//! are all dead are torn down by the next setup (crash safety).
//!
//! # Safety contract
//! The only `unsafe` here calls `swapon(2)`/`swapoff(2)` with a NUL-terminated path.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where ebb records the machine state it changed.
pub const STATE_DIR: &str = "/run/ebb-lab";
const ZRAM_CONTROL: &str = "/sys/class/zram-control";

/// An error setting up, inspecting or tearing down zram swap.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The zram module is not loaded (no `/sys/class/zram-control`, no `/dev/zram0`).
    #[error("zram is not available: load it with `modprobe zram`")]
    NoZram,
    /// The compression algorithm is not offered by the kernel.
    #[error("zram compression algorithm {wanted:?} not available; the kernel offers {available:?}")]
    Algorithm {
        /// What was asked for.
        wanted: String,
        /// What `comp_algorithm` lists.
        available: Vec<String>,
    },
    /// `mkswap` failed or is missing.
    #[error("mkswap {device}: {reason} (mkswap is part of util-linux)")]
    Mkswap {
        /// The device.
        device: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A kernel file did not parse.
    #[error("{path}: cannot parse {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// [`Lab::up`] was called while a lab device is already up.
    #[error("the lab is already up on {device} (run `ebb lab down` first)")]
    AlreadyUp {
        /// The device.
        device: PathBuf,
    },
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(io_err(path))
}

fn write(path: &Path, value: &str) -> Result<(), Error> {
    fs::write(path, value).map_err(io_err(path))
}

fn device_path(id: u32) -> PathBuf {
    PathBuf::from(format!("/dev/zram{id}"))
}

fn sysfs(id: u32, file: &str) -> PathBuf {
    PathBuf::from(format!("/sys/block/zram{id}/{file}"))
}

/// The device paths listed in `/proc/swaps` text.
pub fn parse_proc_swaps(text: &str) -> Vec<PathBuf> {
    ebb::procfs::swaps::parse(text)
        .into_iter()
        .map(|s| PathBuf::from(s.device))
        .collect()
}

/// The devices currently used as swap (`/proc/swaps`).
pub fn active_swaps() -> Result<Vec<PathBuf>, Error> {
    Ok(parse_proc_swaps(&read(Path::new("/proc/swaps"))?))
}

/// The algorithms in a `comp_algorithm` file (`lzo-rle [lz4] zstd`) and the selected one.
pub fn parse_comp_algorithm(text: &str) -> (Vec<String>, Option<String>) {
    let mut selected = None;
    let all = text
        .split_whitespace()
        .map(|w| {
            if let Some(inner) = w.strip_prefix('[').and_then(|w| w.strip_suffix(']')) {
                selected = Some(inner.to_string());
                inner.to_string()
            } else {
                w.to_string()
            }
        })
        .collect();
    (all, selected)
}

/// A zram device's size and compression figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZramStatus {
    /// `/dev/zramN`.
    pub device: PathBuf,
    /// The selected compression algorithm.
    pub algorithm: Option<String>,
    /// The device's size (`disksize`): how much uncompressed data it can hold.
    pub disksize: u64,
    /// Uncompressed bytes stored (`mm_stat` field 1).
    pub orig_data_size: u64,
    /// Compressed bytes stored (`mm_stat` field 2).
    pub compr_data_size: u64,
    /// RAM used by the device, including allocator overhead (`mm_stat` field 3).
    pub mem_used_total: u64,
}

impl ZramStatus {
    /// `orig_data_size / mem_used_total`: how many bytes of data each byte of RAM holds.
    /// `None` while the device is empty.
    pub fn compression_ratio(&self) -> Option<f64> {
        (self.mem_used_total > 0).then(|| self.orig_data_size as f64 / self.mem_used_total as f64)
    }

    /// Read the status of `/dev/zram<id>`.
    pub fn read(id: u32) -> Result<ZramStatus, Error> {
        let disksize_path = sysfs(id, "disksize");
        let disksize = read(&disksize_path)?
            .trim()
            .parse()
            .map_err(|_| Error::Parse {
                path: disksize_path,
                what: "disksize".into(),
            })?;
        let mm_path = sysfs(id, "mm_stat");
        let fields = parse_mm_stat(&read(&mm_path)?).ok_or_else(|| Error::Parse {
            path: mm_path,
            what: "mm_stat".into(),
        })?;
        let (_, algorithm) = parse_comp_algorithm(&read(&sysfs(id, "comp_algorithm"))?);
        Ok(ZramStatus {
            device: device_path(id),
            algorithm,
            disksize,
            orig_data_size: fields[0],
            compr_data_size: fields[1],
            mem_used_total: fields[2],
        })
    }
}

/// The first three fields of `mm_stat`: orig_data_size, compr_data_size, mem_used_total.
pub fn parse_mm_stat(text: &str) -> Option<[u64; 3]> {
    let mut it = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// Who owns a device ebb set up.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    /// One [`ZramSwap::setup`] in this process.
    Exclusive(u32),
    /// The [`ZramSwap::shared`] pool; one pid per live handle (a pid may repeat).
    Shared(Vec<u32>),
    /// The persistent [`Lab`], until `Lab::down`.
    Lab,
}

/// The record of one device ebb set up: `STATE_DIR/zramN.state`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    id: u32,
    hot_added: bool,
    owner: Owner,
}

impl Record {
    fn path(id: u32) -> PathBuf {
        Path::new(STATE_DIR).join(format!("zram{id}.state"))
    }

    fn to_text(&self) -> String {
        let owner = match &self.owner {
            Owner::Exclusive(pid) => format!("exclusive {pid}"),
            Owner::Shared(pids) => {
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                format!("shared {}", pids.join(" "))
            }
            Owner::Lab => "lab".to_string(),
        };
        format!(
            "device {}\nhot_added {}\nowner {}\n",
            self.id,
            u8::from(self.hot_added),
            owner.trim_end()
        )
    }

    fn parse(text: &str) -> Option<Record> {
        let (mut id, mut hot_added, mut owner) = (None, None, None);
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next()? {
                "device" => id = words.next()?.parse().ok(),
                "hot_added" => hot_added = Some(words.next()? == "1"),
                "owner" => {
                    owner = match words.next()? {
                        "exclusive" => Some(Owner::Exclusive(words.next()?.parse().ok()?)),
                        "shared" => Some(Owner::Shared(
                            words.map(str::parse).collect::<Result<_, _>>().ok()?,
                        )),
                        "lab" => Some(Owner::Lab),
                        _ => None,
                    }
                }
                _ => {}
            }
        }
        Some(Record {
            id: id?,
            hot_added: hot_added?,
            owner: owner?,
        })
    }

    fn save(&self) -> Result<(), Error> {
        let path = Record::path(self.id);
        let tmp = path.with_extension("tmp");
        write(&tmp, &self.to_text())?;
        fs::rename(&tmp, &path).map_err(io_err(path))
    }

    fn load_all() -> Result<Vec<Record>, Error> {
        let mut out = Vec::new();
        for entry in fs::read_dir(STATE_DIR)
            .map_err(io_err(STATE_DIR))?
            .flatten()
        {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("zram") && name.ends_with(".state") {
                if let Some(r) = fs::read_to_string(entry.path())
                    .ok()
                    .and_then(|t| Record::parse(&t))
                {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// Are all the owners gone?
    fn is_orphan(&self) -> bool {
        match &self.owner {
            Owner::Exclusive(pid) => !pid_alive(*pid),
            Owner::Shared(pids) => pids.iter().all(|p| !pid_alive(*p)),
            Owner::Lab => false,
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The machine-wide lock: held while any ebb process changes zram or swap state.
struct StateLock {
    _file: File,
}

impl StateLock {
    fn acquire() -> Result<StateLock, Error> {
        fs::create_dir_all(STATE_DIR).map_err(io_err(STATE_DIR))?;
        let path = Path::new(STATE_DIR).join("zram.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            Error::Io {
                path,
                source: e.into(),
            }
        })?;
        Ok(StateLock { _file: file })
    }

    /// Tear down devices whose owners all died without cleaning up.
    fn sweep(&self) -> Result<(), Error> {
        for record in Record::load_all()? {
            if record.is_orphan() {
                teardown(&record)?;
            } else if let Owner::Shared(pids) = &record.owner {
                let live: Vec<u32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
                if live.len() != pids.len() {
                    Record {
                        owner: Owner::Shared(live),
                        ..record.clone()
                    }
                    .save()?;
                }
            }
        }
        Ok(())
    }
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("device paths have no NUL bytes")
}

/// `swapon(2)` with default priority.
fn swapon(device: &Path) -> Result<(), Error> {
    let c = c_path(device);
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::swapon(c.as_ptr(), 0) } != 0 {
        return Err(io_err(device)(io::Error::last_os_error()));
    }
    Ok(())
}

/// `swapoff(2)`: the kernel first reads every swapped page back into RAM.
fn swapoff(device: &Path) -> Result<(), Error> {
    let c = c_path(device);
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::swapoff(c.as_ptr()) } != 0 {
        return Err(io_err(device)(io::Error::last_os_error()));
    }
    Ok(())
}

fn mkswap(device: &Path) -> Result<(), Error> {
    // devtmpfs creates the node of a hot-added device asynchronously to us.
    let start = Instant::now();
    while !device.exists() && start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = Command::new("mkswap")
        .arg(device)
        .output()
        .map_err(|e| Error::Mkswap {
            device: device.to_path_buf(),
            reason: format!("cannot run: {e}"),
        })?;
    if !out.status.success() {
        return Err(Error::Mkswap {
            device: device.to_path_buf(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Undo what `record` says ebb did, then delete the record. Call with the lock held.
fn teardown(record: &Record) -> Result<(), Error> {
    let device = device_path(record.id);
    if sysfs(record.id, "reset").exists() {
        if active_swaps()?.contains(&device) {
            swapoff(&device)?;
        }
        write(&sysfs(record.id, "reset"), "1")?;
        if record.hot_added {
            write(
                &Path::new(ZRAM_CONTROL).join("hot_remove"),
                &record.id.to_string(),
            )?;
        }
    }
    let path = Record::path(record.id);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// Claim an unconfigured zram device and make it swap. Call with the lock held.
fn setup_device(size_bytes: u64, algorithm: &str, owner: Owner) -> Result<Record, Error> {
    if !Path::new(ZRAM_CONTROL).exists() && !Path::new("/sys/block/zram0").exists() {
        return Err(Error::NoZram);
    }
    let swaps = active_swaps()?;
    let recorded: Vec<u32> = Record::load_all()?.iter().map(|r| r.id).collect();
    let zram0_free = Path::new("/sys/block/zram0/disksize").exists()
        && read(&sysfs(0, "disksize"))?.trim() == "0"
        && !swaps.contains(&device_path(0))
        && !recorded.contains(&0);
    let mut record = None;
    if zram0_free {
        let r = Record {
            id: 0,
            hot_added: false,
            owner: owner.clone(),
        };
        // Record first, so a crash right after `disksize` still leaves a record to sweep.
        r.save()?;
        match configure(0, size_bytes, algorithm) {
            Ok(()) => record = Some(r),
            Err(e) => {
                // Nothing of ours to undo: `disksize`, the only real change, failed.
                let _ = fs::remove_file(Record::path(0));
                match e {
                    // Someone outside ebb configured it between our check and our write.
                    Error::Io { ref source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {}
                    e => return Err(e),
                }
            }
        }
    }
    let record = match record {
        Some(r) => r,
        None => {
            let hot_add = Path::new(ZRAM_CONTROL).join("hot_add");
            let text = read(&hot_add)?;
            let id: u32 = text.trim().parse().map_err(|_| Error::Parse {
                path: hot_add,
                what: format!("device number {text:?}"),
            })?;
            let r = Record {
                id,
                hot_added: true,
                owner,
            };
            // Record first: if configuring fails, teardown removes the device again.
            r.save()?;
            if let Err(e) = configure(id, size_bytes, algorithm) {
                let _ = teardown(&r);
                return Err(e);
            }
            r
        }
    };
    record.save()?;
    let device = device_path(record.id);
    if let Err(e) = mkswap(&device).and_then(|()| swapon(&device)) {
        let _ = teardown(&record);
        return Err(e);
    }
    Ok(record)
}

/// Write `comp_algorithm` then `disksize` (the kernel rejects the algorithm afterwards).
fn configure(id: u32, size_bytes: u64, algorithm: &str) -> Result<(), Error> {
    let algo_path = sysfs(id, "comp_algorithm");
    let (available, _) = parse_comp_algorithm(&read(&algo_path)?);
    if !available.iter().any(|a| a == algorithm) {
        return Err(Error::Algorithm {
            wanted: algorithm.to_string(),
            available,
        });
    }
    write(&algo_path, algorithm)?;
    write(&sysfs(id, "disksize"), &size_bytes.to_string())
}

/// Swap on a zram device that ebb set up; torn down (or released, if shared) on drop.
#[derive(Debug)]
pub struct ZramSwap {
    id: u32,
    shared: bool,
}

impl ZramSwap {
    /// Set up a zram swap device for this handle alone: `size_bytes` of uncompressed
    /// capacity, compressed with `algorithm` (one of `comp_algorithm`, e.g. `lz4`).
    pub fn setup(size_bytes: u64, algorithm: &str) -> Result<ZramSwap, Error> {
        let lock = StateLock::acquire()?;
        lock.sweep()?;
        let r = setup_device(size_bytes, algorithm, Owner::Exclusive(std::process::id()))?;
        Ok(ZramSwap {
            id: r.id,
            shared: false,
        })
    }

    /// Join the machine-wide shared zram swap, setting it up if no one uses it yet.
    ///
    /// The first user sets it up with `size_bytes` and `algorithm`; later users get
    /// the existing device whatever they asked for. The last handle dropped tears it down;
    /// users that died without dropping are pruned at the next call.
    ///
    /// While `ebb lab up` ([`Lab`]) is in force, its device is the shared one (and stays
    /// until `ebb lab down`): a second device would split the swap traffic between the two
    /// by priority, and the figures of either would describe only part of it.
    pub fn shared(size_bytes: u64, algorithm: &str) -> Result<ZramSwap, Error> {
        let lock = StateLock::acquire()?;
        lock.sweep()?;
        let me = std::process::id();
        let records = Record::load_all()?;
        let swaps = active_swaps()?;
        if let Some(lab) = records
            .iter()
            .find(|r| r.owner == Owner::Lab && swaps.contains(&device_path(r.id)))
        {
            // Released as "not ours": the lab's owner is `ebb lab down`.
            return Ok(ZramSwap {
                id: lab.id,
                shared: true,
            });
        }
        let existing = records
            .into_iter()
            .find(|r| matches!(r.owner, Owner::Shared(_)));
        let id = match existing {
            Some(mut r) if swaps.contains(&device_path(r.id)) => {
                if let Owner::Shared(pids) = &mut r.owner {
                    pids.push(me);
                }
                r.save()?;
                r.id
            }
            Some(r) => {
                // Recorded but no longer swap: stale, start over.
                teardown(&r)?;
                setup_device(size_bytes, algorithm, Owner::Shared(vec![me]))?.id
            }
            None => setup_device(size_bytes, algorithm, Owner::Shared(vec![me]))?.id,
        };
        Ok(ZramSwap { id, shared: true })
    }

    /// The block device, `/dev/zramN`.
    pub fn device(&self) -> PathBuf {
        device_path(self.id)
    }

    /// Size and compression figures of the device.
    pub fn status(&self) -> Result<ZramStatus, Error> {
        ZramStatus::read(self.id)
    }

    fn release(&self) -> Result<(), Error> {
        let _lock = StateLock::acquire()?;
        let text = match fs::read_to_string(Record::path(self.id)) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(Record::path(self.id))(e)),
        };
        let Some(mut record) = Record::parse(&text) else {
            return Ok(());
        };
        let me = std::process::id();
        match &mut record.owner {
            Owner::Shared(pids) if self.shared => {
                if let Some(i) = pids.iter().position(|p| *p == me) {
                    pids.remove(i);
                }
                if pids.is_empty() {
                    teardown(&record)
                } else {
                    record.save()
                }
            }
            Owner::Exclusive(pid) if !self.shared && *pid == me => teardown(&record),
            // Not ours (any more): leave it alone.
            _ => Ok(()),
        }
    }
}

impl Drop for ZramSwap {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            eprintln!("ebb-lab: releasing {}: {e}", self.device().display());
        }
    }
}

/// The persistent lab swap behind `ebb lab up` / `ebb lab down`: it outlives the process
/// and is recorded in [`STATE_DIR`] so that `down` undoes exactly what `up` did.
#[derive(Debug, Clone, Copy)]
pub struct Lab;

impl Lab {
    /// Set up a zram swap device that stays until [`Lab::down`].
    pub fn up(size_bytes: u64, algorithm: &str) -> Result<ZramStatus, Error> {
        let lock = StateLock::acquire()?;
        lock.sweep()?;
        if let Some(r) = Record::load_all()?
            .into_iter()
            .find(|r| r.owner == Owner::Lab)
        {
            return Err(Error::AlreadyUp {
                device: device_path(r.id),
            });
        }
        let r = setup_device(size_bytes, algorithm, Owner::Lab)?;
        ZramStatus::read(r.id)
    }

    /// Undo [`Lab::up`]: swapoff, reset, hot_remove if it was hot-added.
    /// Returns the device taken down, `None` if the lab was not up.
    pub fn down() -> Result<Option<PathBuf>, Error> {
        if !Path::new(STATE_DIR).exists() {
            return Ok(None);
        }
        let _lock = StateLock::acquire()?;
        match Record::load_all()?
            .into_iter()
            .find(|r| r.owner == Owner::Lab)
        {
            Some(r) => {
                teardown(&r)?;
                Ok(Some(device_path(r.id)))
            }
            None => Ok(None),
        }
    }

    /// The lab device's status, `None` if the lab is not up.
    pub fn status() -> Result<Option<ZramStatus>, Error> {
        if !Path::new(STATE_DIR).exists() {
            return Ok(None);
        }
        match Record::load_all()?
            .into_iter()
            .find(|r| r.owner == Owner::Lab)
        {
            Some(r) => ZramStatus::read(r.id).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        for owner in [
            Owner::Exclusive(7),
            Owner::Shared(vec![1, 2, 2]),
            Owner::Shared(vec![]),
            Owner::Lab,
        ] {
            let r = Record {
                id: 3,
                hot_added: true,
                owner,
            };
            assert_eq!(Record::parse(&r.to_text()), Some(r));
        }
        assert_eq!(Record::parse("device 1\n"), None);
    }

    #[test]
    fn kernel_files() {
        assert_eq!(
            parse_comp_algorithm("[lzo-rle] lzo lz4 \n"),
            (
                vec!["lzo-rle".into(), "lzo".into(), "lz4".into()],
                Some("lzo-rle".into())
            )
        );
        assert_eq!(
            parse_mm_stat("  4096  100  8192 0 8192 0 0 0 0\n"),
            Some([4096, 100, 8192])
        );
        assert_eq!(parse_mm_stat("1 2"), None);
        assert_eq!(
            parse_proc_swaps(
                "Filename\tType\tSize\tUsed\tPriority\n/dev/zram0 partition 100 0 -2\n"
            ),
            vec![PathBuf::from("/dev/zram0")]
        );
    }
}
