//! The raw kernel interface: mmap, madvise, mincore, process_madvise, pidfds.
//!
//! This is one of the few modules of ebb that uses `unsafe`. The contract it keeps, once:
//! every function here either takes raw addresses the caller vouches for (and is then an
//! `unsafe fn` with a `# Safety` section), or passes addresses to the kernel that the kernel
//! validates itself and that this process never dereferences (remote iovecs, hint-only
//! advice), and is then safe. Errors are returned as [`std::io::Error`] carrying the errno;
//! the modules above add the context a person needs.
//!
//! # References
//! - mmap(2), munmap(2), madvise(2), mincore(2), prctl(2) `PR_SET_VMA_ANON_NAME`
//! - process_madvise(2), pidfd_open(2), pidfd_send_signal(2), process_mrelease(2)
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::OnceLock;

use crate::advice::Advice;

/// The size of a base page, from the auxiliary vector (4 KiB on x86_64).
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// The size of a PMD-mapped transparent huge page: `hpage_pmd_size` from sysfs, or 2 MiB
/// where sysfs does not say.
pub fn huge_page_size() -> usize {
    static SIZE: OnceLock<usize> = OnceLock::new();
    *SIZE.get_or_init(|| {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|s| s.is_power_of_two() && *s >= page_size())
            .unwrap_or(2 << 20)
    })
}

/// The most iovecs one process_madvise(2) call takes (`UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// A fresh private anonymous read-write mapping of `total` bytes, reserved lazily
/// (`MAP_NORESERVE`), at an address of the kernel's choosing.
fn mmap_fresh(total: usize) -> io::Result<*mut libc::c_void> {
    // SAFETY: a new anonymous private mapping at a kernel-chosen address (NULL hint, no
    // MAP_FIXED) cannot alias any memory Rust knows about.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(raw)
    }
}

/// Maps `len` bytes of private anonymous read-write memory whose start is a multiple of
/// `align` (a power of two, at least the page size). `len` must be a non-zero multiple of
/// the page size.
///
/// Alignment is obtained by mapping `len + align` bytes and unmapping the excess at both
/// ends, as jemalloc's `pages_map` does.
pub fn map_anonymous(len: usize, align: usize) -> io::Result<NonNull<u8>> {
    let page = page_size();
    debug_assert!(len > 0 && len % page == 0);
    debug_assert!(align.is_power_of_two() && align >= page);
    let extra = align - page;
    let total = len
        .checked_add(extra)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
    let raw = mmap_fresh(total)?;
    let base = raw as usize;
    let start = (base + align - 1) & !(align - 1);
    let head = start - base;
    let tail = total - head - len;
    if head > 0 {
        // SAFETY: [base, base+head) is the unused front of the mapping made above; nothing
        // refers to it.
        unsafe { libc::munmap(raw, head) };
    }
    if tail > 0 {
        // SAFETY: [start+len, start+len+tail) is the unused back of the same mapping.
        unsafe { libc::munmap((start + len) as *mut libc::c_void, tail) };
    }
    NonNull::new(start as *mut u8).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// Maps like [`map_anonymous`], with a `PROT_NONE` guard page on each side, so that the
/// kernel never merges the mapping with a neighbouring anonymous VMA (mm/vma.c merges
/// adjacent anonymous mappings with equal flags). Its /proc/PID/smaps entries then describe
/// it alone, which is what per-region accounting needs. Free it with [`unmap_isolated`].
pub fn map_isolated(len: usize, align: usize) -> io::Result<NonNull<u8>> {
    let page = page_size();
    debug_assert!(len > 0 && len % page == 0);
    debug_assert!(align.is_power_of_two() && align >= page);
    let total = len
        .checked_add(align)
        .and_then(|t| t.checked_add(page))
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
    let raw = mmap_fresh(total)?;
    let base = raw as usize;
    let start = (base + page + align - 1) & !(align - 1);
    let guard_lo = start - page;
    let guard_hi = start + len;
    let end = base + total;
    // SAFETY: every range below lies in the mapping made above, which nothing refers to yet;
    // the excess is unmapped and the guards made inaccessible.
    unsafe {
        if guard_lo > base {
            libc::munmap(raw, guard_lo - base);
        }
        if end > guard_hi + page {
            libc::munmap(
                (guard_hi + page) as *mut libc::c_void,
                end - guard_hi - page,
            );
        }
        if libc::mprotect(guard_lo as *mut libc::c_void, page, libc::PROT_NONE) != 0
            || libc::mprotect(guard_hi as *mut libc::c_void, page, libc::PROT_NONE) != 0
        {
            let err = io::Error::last_os_error();
            libc::munmap(guard_lo as *mut libc::c_void, len + 2 * page);
            return Err(err);
        }
    }
    NonNull::new(start as *mut u8).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// Unmaps a mapping made by [`map_isolated`], guard pages included.
///
/// # Safety
/// `ptr` and `len` must be exactly what [`map_isolated`] returned and was given, and no
/// reference into the mapping may be alive.
pub unsafe fn unmap_isolated(ptr: NonNull<u8>, len: usize) -> io::Result<()> {
    let page = page_size();
    let lo = ptr.as_ptr() as usize - page;
    // SAFETY: the caller guarantees this is a map_isolated mapping with its guards around
    // it, owned by the caller and unreferenced.
    let rc = unsafe { libc::munmap(lo as *mut libc::c_void, len + 2 * page) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Unmaps `[ptr, ptr+len)`.
///
/// # Safety
/// The range must be a mapping (or part of one) owned by the caller, with no live references
/// into it; after the call any access to it faults.
pub unsafe fn unmap(ptr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: the caller owns the range and guarantees nothing refers to it.
    let rc = unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Applies `advice` to `[addr, addr+len)` of this process with madvise(2).
///
/// # Safety
/// For destructive advice ([`Advice::is_destructive`]: FREE, DONTNEED) the caller must own
/// the range and hold no reference through which Rust assumes its contents stay unchanged:
/// the pages may read as zero afterwards. Non-destructive advice has no requirement beyond
/// what [`madvise_hint`] checks.
pub unsafe fn madvise(addr: *mut u8, len: usize, advice: Advice) -> io::Result<()> {
    // SAFETY: madvise only changes memory contents for destructive advice, whose
    // preconditions the caller upholds; for other advice the kernel validates the range.
    let rc = unsafe { libc::madvise(addr.cast(), len, advice.as_raw()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Applies non-destructive `advice` (COLD, PAGEOUT, WILLNEED, POPULATE_*, [NO]HUGEPAGE,
/// COLLAPSE) to `[addr, addr+len)` of this process. Destructive advice is refused with
/// `EPERM`, since it needs [`madvise`] and its safety contract.
pub fn madvise_hint(addr: usize, len: usize, advice: Advice) -> io::Result<()> {
    if advice.is_destructive() {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    // SAFETY: non-destructive advice never changes what memory reads as; the kernel checks
    // that the range is mapped (ENOMEM otherwise).
    unsafe { madvise(addr as *mut u8, len, advice) }
}

/// Fills `out` with mincore(2)'s residency bytes for `[addr, addr+len)`: bit 0 of each byte
/// says whether that page is resident (in RAM or the swap cache). `out` needs one byte per
/// page of the range.
pub fn mincore(addr: usize, len: usize, out: &mut [u8]) -> io::Result<()> {
    let pages = len.div_ceil(page_size());
    if out.len() < pages {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: the kernel writes exactly `pages` bytes into `out`, which has room for them;
    // it validates `addr` itself (ENOMEM if unmapped) and does not touch the pages.
    let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len, out.as_mut_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Names the anonymous range `[addr, addr+len)` with `prctl(PR_SET_VMA,
/// PR_SET_VMA_ANON_NAME)`, so that /proc/PID/maps shows `[anon:NAME]`. Kernels built without
/// `CONFIG_ANON_VMA_NAME` answer `EINVAL`.
pub fn name_anonymous(addr: usize, len: usize, name: &str) -> io::Result<()> {
    let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: prctl reads the NUL-terminated name (copied by the kernel) and only changes the
    // VMA's name, never the memory; the kernel validates the range.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_VMA,
            libc::PR_SET_VMA_ANON_NAME as libc::c_ulong,
            addr as libc::c_ulong,
            len as libc::c_ulong,
            name.as_ptr() as libc::c_ulong,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens a pidfd for `pid` with pidfd_open(2) (Linux 5.3). `ESRCH` means no such process.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes plain integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Gives `advice` for the ranges `iov` (addresses in the target's address space) of the
/// process behind `pidfd` with process_madvise(2) (Linux 5.10). Returns the bytes advised,
/// which is less than the total when the kernel stopped early (an unmapped range, or the
/// target exiting). At most [`IOV_MAX`] ranges per call.
pub fn process_madvise(
    pidfd: BorrowedFd<'_>,
    iov: &[(usize, usize)],
    advice: Advice,
) -> io::Result<usize> {
    if iov.len() > IOV_MAX {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let vecs: Vec<libc::iovec> = iov
        .iter()
        .map(|&(start, len)| libc::iovec {
            iov_base: start as *mut libc::c_void,
            iov_len: len,
        })
        .collect();
    // SAFETY: the kernel reads `vecs.len()` iovecs from our buffer, which is valid for that
    // long; the addresses inside belong to the target's address space and are never
    // dereferenced by this process.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_process_madvise,
            pidfd.as_raw_fd(),
            vecs.as_ptr(),
            vecs.len(),
            advice.as_raw(),
            0u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Sends `signal` to the process behind `pidfd` with pidfd_send_signal(2) (Linux 5.1):
/// unlike kill(2), a reused pid cannot redirect it.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: plain integers and a NULL siginfo, as the man page allows.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reaps the memory of a dying process (one already sent SIGKILL) with process_mrelease(2)
/// (Linux 5.15), without waiting for its exit path. `EINVAL` if it is not dying.
pub fn process_mrelease(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain integers.
    let rc = unsafe { libc::syscall(libc::SYS_process_mrelease, pidfd.as_raw_fd(), 0u32) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits up to `timeout` for the process behind `pidfd` to exit (the pidfd polls readable).
/// Returns whether it exited.
pub fn pidfd_wait_exit(pidfd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: one valid pollfd on our stack.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_mapping_is_aligned_and_usable() {
        let huge = huge_page_size();
        let len = 3 * page_size();
        let p = map_anonymous(len, huge).unwrap();
        assert_eq!(p.as_ptr() as usize % huge, 0);
        // SAFETY: the mapping is ours and `len` long.
        unsafe {
            p.as_ptr().write_bytes(7, len);
            assert_eq!(*p.as_ptr().add(len - 1), 7);
            unmap(p, len).unwrap();
        }
    }

    #[test]
    fn isolated_mapping_has_guards() {
        let page = page_size();
        let len = 4 * page;
        let p = map_isolated(len, huge_page_size()).unwrap();
        let a = p.as_ptr() as usize;
        assert_eq!(a % huge_page_size(), 0);
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let exact = format!("{:x}-{:x} rw-p", a, a + len);
        let guard = format!("{:x}-{:x} ---p", a - page, a);
        assert!(maps.contains(&exact), "{exact} not in maps");
        assert!(maps.contains(&guard), "{guard} not in maps");
        // SAFETY: the mapping is ours.
        unsafe { unmap_isolated(p, len).unwrap() };
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(!maps.contains(&exact));
    }

    #[test]
    fn destructive_hint_is_refused() {
        let err = madvise_hint(0, 4096, Advice::DontNeed).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn pidfd_of_missing_process_is_esrch() {
        // pid_max is at most 2^22, so this pid cannot exist.
        let err = pidfd_open(0x7fff_fff0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }
}
