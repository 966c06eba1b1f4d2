//! Which parts of this process's memory are mapped by a PMD (a 2 MiB transparent huge
//! page), asked with the `PAGEMAP_SCAN` ioctl on `/proc/self/pagemap` (Linux 6.7).
//!
//! Safety contract: the ioctl reads one `pm_scan_arg` from us and writes at most `vec_len`
//! `page_region` records into a buffer we own; it never touches the scanned memory. The fork
//! mark is one private page this module maps, never unmaps and only accesses atomically.
//!
//! # References
//! - Documentation/admin-guide/mm/pagemap.rst, "PAGEMAP_SCAN IOCTL"
//! - fs/proc/task_mmu.c `pagemap_scan_thp_entry` (sets `PAGE_IS_HUGE` for a PMD mapping)
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// The open pagemap of this process. A child made by fork(2) inherits the descriptor, which
/// still describes the parent's memory, so a child must reopen it: [`ForkMark`] tells.
static PAGEMAP: Mutex<Option<(ForkMark, File)>> = Mutex::new(None);

/// Tells whether this process is the one that made it, without a system call per question:
/// one page marked `MADV_WIPEONFORK` (Linux 4.14) holding a non-zero word, which reads zero
/// in any child (the kernel gives the child a fresh zeroed page, whatever way it forked).
/// Where `MADV_WIPEONFORK` is refused, it keeps the pid and compares it (a getpid(2) each
/// time).
struct ForkMark {
    pid: u32,
    /// The marked word, or null without `MADV_WIPEONFORK`.
    word: *const AtomicU64,
}

// SAFETY: `word` points into a private page that lives for the rest of the process (never
// unmapped) and is only read atomically after being set up.
unsafe impl Send for ForkMark {}

impl ForkMark {
    fn new() -> ForkMark {
        let pid = std::process::id();
        let page = crate::sys::page_size();
        let word = match crate::sys::map_anonymous(page, page) {
            Ok(p) => {
                let w = p.as_ptr().cast::<AtomicU64>();
                // SAFETY: a fresh page of our own, aligned; nothing else refers to it.
                let ok = unsafe { libc::madvise(p.as_ptr().cast(), page, libc::MADV_WIPEONFORK) };
                if ok == 0 {
                    // SAFETY: as above.
                    unsafe { (*w).store(1, Ordering::Relaxed) };
                    w.cast_const()
                } else {
                    // SAFETY: the page was just mapped by us and is not referred to.
                    let _ = unsafe { crate::sys::unmap(p, page) };
                    std::ptr::null()
                }
            }
            Err(_) => std::ptr::null(),
        };
        ForkMark { pid, word }
    }

    /// Whether this is still the process that made the mark.
    fn is_current(&self) -> bool {
        if self.word.is_null() {
            return self.pid == std::process::id();
        }
        // SAFETY: see `Send`: the page lives for the rest of the process.
        unsafe { (*self.word).load(Ordering::Relaxed) != 0 }
    }
}

/// Runs the scan `arg` (its `vec`/`vec_len` set by the caller) over `[start, end)` from
/// `start`, calling `each` for every record, as often as the kernel stops early.
fn scan(
    start: usize,
    end: usize,
    mut arg: PmScanArg,
    buf: &mut [PageRegion],
    mut each: impl FnMut(&PageRegion),
) -> io::Result<()> {
    let mut guard = PAGEMAP.lock().unwrap_or_else(|e| e.into_inner());
    if guard.as_ref().is_none_or(|(mark, _)| !mark.is_current()) {
        // A fork's child leaks the parent's page (wiped) with the descriptor: one page.
        *guard = Some((ForkMark::new(), File::open("/proc/self/pagemap")?));
    }
    let Some((_, file)) = guard.as_ref() else {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    };
    let mut at = start;
    while at < end {
        arg.start = at as u64;
        arg.end = end as u64;
        arg.walk_end = 0;
        arg.vec = buf.as_mut_ptr() as u64;
        arg.vec_len = buf.len() as u64;
        // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at `buf`, which has room
        // for `vec_len` records; the kernel only reads page tables of the scanned range.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), PAGEMAP_SCAN, &mut arg as *mut PmScanArg) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        for r in &buf[..rc as usize] {
            each(r);
        }
        let walked = arg.walk_end as usize;
        if walked <= at {
            break;
        }
        at = walked;
    }
    Ok(())
}

fn arg(category_inverted: u64, max_pages: u64) -> PmScanArg {
    PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        flags: 0,
        start: 0,
        end: 0,
        walk_end: 0,
        vec: 0,
        vec_len: 0,
        max_pages,
        category_inverted,
        category_mask: PAGE_IS_HUGE,
        category_anyof_mask: 0,
        return_mask: PAGE_IS_HUGE,
    }
}

/// Appends to `out` the ranges of `[start, end)` that are mapped by PMDs, merged, in
/// address order.
pub(crate) fn huge_ranges(
    start: usize,
    end: usize,
    out: &mut Vec<(usize, usize)>,
) -> io::Result<()> {
    let mut buf = [PageRegion::default(); 64];
    scan(start, end, arg(0, 0), &mut buf, |r| {
        let (s, e) = (r.start as usize, r.end as usize);
        match out.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => out.push((s, e)),
        }
    })
}

/// Whether all of `[start, end)` is mapped by PMDs: the same walk as [`huge_ranges`], asked
/// the inverse question (`category_inverted`: pages *not* `PAGE_IS_HUGE`, which includes
/// holes) and told to stop at the first such page (`max_pages` 1), so that the kernel
/// gathers and copies out nothing when the answer is yes.
pub(crate) fn all_huge(start: usize, end: usize) -> io::Result<bool> {
    let mut buf = [PageRegion::default(); 1];
    let mut found = false;
    scan(start, end, arg(PAGE_IS_HUGE, 1), &mut buf, |_| found = true)?;
    Ok(!found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_huge_agrees_with_huge_ranges() {
        let h = crate::sys::huge_page_size();
        let page = crate::sys::page_size();
        let p = crate::sys::map_anonymous(4 * h, h).unwrap();
        let base = p.as_ptr() as usize;
        let _ = crate::sys::madvise_hint(base, 4 * h, crate::Advice::HugePage);
        // SAFETY: the mapping is ours and nothing else refers to it.
        unsafe { std::ptr::write_bytes(p.as_ptr(), 1, 4 * h) };
        let mut r = Vec::new();
        huge_ranges(base, base + 4 * h, &mut r).unwrap();
        assert_eq!(
            r,
            vec![(base, base + 4 * h)],
            "this machine backs MADV_HUGEPAGE with THPs"
        );
        assert!(all_huge(base, base + 4 * h).unwrap());
        // Split the third unit (a partial DONTNEED), and leave the fourth a hole.
        // SAFETY: as above.
        unsafe {
            crate::sys::madvise(p.as_ptr().add(2 * h), page, crate::Advice::DontNeed).unwrap();
            crate::sys::madvise(p.as_ptr().add(3 * h), h, crate::Advice::DontNeed).unwrap();
        }
        assert!(all_huge(base, base + 2 * h).unwrap());
        assert!(!all_huge(base, base + 3 * h).unwrap());
        assert!(!all_huge(base + 3 * h, base + 4 * h).unwrap());
        r.clear();
        huge_ranges(base, base + 4 * h, &mut r).unwrap();
        assert_eq!(r, vec![(base, base + 2 * h)]);
        // SAFETY: the mapping is ours and unreferenced.
        unsafe { crate::sys::unmap(p, 4 * h).unwrap() };
    }

    #[test]
    fn a_forked_child_sees_a_fresh_mark() {
        let mark = ForkMark::new();
        assert!(!mark.word.is_null(), "MADV_WIPEONFORK works on this kernel");
        assert!(mark.is_current());
        // SAFETY: the child only reads memory and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = if mark.is_current() { 1 } else { 0 };
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just made.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status}"
        );
        assert!(mark.is_current());
    }
}
