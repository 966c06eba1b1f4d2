//! Which parts of this process's memory are mapped by a PMD (a 2 MiB transparent huge
//! page), asked with the `PAGEMAP_SCAN` ioctl on `/proc/self/pagemap` (Linux 6.7).
//!
//! Safety contract: the ioctl reads one `pm_scan_arg` from us and writes at most `vec_len`
//! `page_region` records into a buffer we own; it never touches the scanned memory.
//!
//! # References
//! - Documentation/admin-guide/mm/pagemap.rst, "PAGEMAP_SCAN IOCTL"
//! - fs/proc/task_mmu.c `pagemap_scan_thp_entry` (sets `PAGE_IS_HUGE` for a PMD mapping)
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

/// `PAGE_IS_HUGE`: the page is mapped by a PMD (or is hugetlb).
const PAGE_IS_HUGE: u64 = 1 << 6;
/// `_IOWR('f', 16, struct pm_scan_arg)` with `sizeof(struct pm_scan_arg) == 96`.
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610;

#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// The open pagemap of this process, with the pid that opened it: a child made by fork(2)
/// inherits the descriptor, which still describes the parent's memory, so it reopens.
static PAGEMAP: Mutex<Option<(u32, File)>> = Mutex::new(None);

/// Appends to `out` the ranges of `[start, end)` that are mapped by PMDs, merged, in
/// address order.
pub(crate) fn huge_ranges(
    start: usize,
    end: usize,
    out: &mut Vec<(usize, usize)>,
) -> io::Result<()> {
    let mut guard = PAGEMAP.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if guard.as_ref().is_none_or(|(p, _)| *p != pid) {
        *guard = Some((pid, File::open("/proc/self/pagemap")?));
    }
    let Some((_, file)) = guard.as_ref() else {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    };
    let mut buf = [PageRegion::default(); 64];
    let mut at = start;
    while at < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: 0,
            start: at as u64,
            end: end as u64,
            walk_end: 0,
            vec: buf.as_mut_ptr() as u64,
            vec_len: buf.len() as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: PAGE_IS_HUGE,
            category_anyof_mask: 0,
            return_mask: PAGE_IS_HUGE,
        };
        // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at `buf`, which has room
        // for `vec_len` records; the kernel only reads page tables of the scanned range.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), PAGEMAP_SCAN, &mut arg as *mut PmScanArg) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        for r in &buf[..rc as usize] {
            let (s, e) = (r.start as usize, r.end as usize);
            match out.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => out.push((s, e)),
            }
        }
        let walked = arg.walk_end as usize;
        if walked <= at {
            break;
        }
        at = walked;
    }
    Ok(())
}
