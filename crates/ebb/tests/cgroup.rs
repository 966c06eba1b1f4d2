//! Memory cgroups against the real kernel: this machine has cgroup v1 memory
//! (see LAB.md); the v2 paths are covered by the `fake_v2_*` unit tests.
use ebb::cgroup::{self, CgroupVersion, MemoryCgroup};
use std::path::PathBuf;

/// Removes the group on drop, also when the test panics.
struct Guard(PathBuf);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn v1_root() -> Option<PathBuf> {
    match cgroup::memory_root().unwrap() {
        Some((CgroupVersion::V1, root)) if rustix::process::geteuid().is_root() => Some(root),
        other => {
            eprintln!("SKIP: needs root and a cgroup v1 memory controller, found {other:?}");
            None
        }
    }
}

#[test]
fn own_group_is_found() {
    let Some(root) = v1_root() else { return };
    let cg = cgroup::own_memory_cgroup(std::process::id())
        .unwrap()
        .expect("this process is in a memory cgroup");
    assert!(cg.path().starts_with(&root));
    assert_eq!(cg.version(), CgroupVersion::V1);
    assert!(cg.usage().unwrap() > 0);
    assert!(cg.procs().unwrap().contains(&std::process::id()));
    assert!(cg.events().unwrap().is_none());
}

#[test]
fn v1_limits_and_swap_ordering() {
    let Some(root) = v1_root() else { return };
    let path = root.join(format!("ebb-cgtest-{}-0", std::process::id()));
    std::fs::create_dir(&path).unwrap();
    let _guard = Guard(path.clone());
    let cg = MemoryCgroup::open(&path).unwrap();
    assert_eq!(cg.limit().unwrap(), None);
    assert_eq!(cg.swap_limit().unwrap(), None);
    assert_eq!(cg.procs().unwrap(), Vec::<u32>::new());

    // v1 refuses a swap limit without a memory limit: it limits memory+swap.
    assert!(matches!(
        cg.set_swap_limit(Some(1 << 20)),
        Err(cgroup::Error::Unsupported { .. })
    ));
    cg.set_limit(Some(64 << 20)).unwrap();
    cg.set_swap_limit(Some(32 << 20)).unwrap();
    assert_eq!(cg.limit().unwrap(), Some(64 << 20));
    assert_eq!(cg.swap_limit().unwrap(), Some(32 << 20));
    // Raising past the old memsw needs memsw first; lowering below it needs memory first.
    cg.set_limit(Some(256 << 20)).unwrap();
    assert_eq!(cg.swap_limit().unwrap(), Some(32 << 20));
    cg.set_limit(Some(16 << 20)).unwrap();
    assert_eq!(cg.limit().unwrap(), Some(16 << 20));
    assert_eq!(cg.swap_limit().unwrap(), Some(32 << 20));
    cg.set_swap_limit(None).unwrap();
    assert_eq!(cg.swap_limit().unwrap(), None);
    cg.set_limit(None).unwrap();
    assert_eq!(cg.limit().unwrap(), None);
    assert_eq!(cg.failcnt().unwrap(), 0);
    assert_eq!(cg.oom_kills().unwrap(), 0);
    let stat = cg.stat().unwrap();
    assert_eq!(stat.swap, Some(0));
    assert_eq!(cg.swap_usage().unwrap(), 0);
}

#[test]
fn open_rejects_non_memory_dirs() {
    assert!(matches!(
        MemoryCgroup::open("/proc"),
        Err(cgroup::Error::NotMemoryCgroup { .. })
    ));
}

#[test]
fn v1_room_is_bound_by_a_limited_parent() {
    let Some(root) = v1_root() else { return };
    let parent = root.join(format!("ebb-cgtest-{}-room", std::process::id()));
    std::fs::create_dir(&parent).unwrap();
    let _parent_guard = Guard(parent.clone());
    let child = parent.join("inner");
    std::fs::create_dir(&child).unwrap();
    // Declared after the parent's guard, so dropped (removed) first.
    let _child_guard = Guard(child.clone());
    let (p, c) = (
        MemoryCgroup::open(&parent).unwrap(),
        MemoryCgroup::open(&child).unwrap(),
    );
    // No limit on either (the root has none): no room to report.
    assert_eq!(c.room().unwrap(), None);
    // The parent's limit binds the child (use_hierarchy = 1 on this machine).
    p.set_limit(Some(64 << 20)).unwrap();
    let r = c.room().unwrap().unwrap();
    assert_eq!((r.limit, r.group.as_path()), (64 << 20, parent.as_path()));
    assert_eq!(r.free(), (64 << 20) - p.usage().unwrap());
    assert!(r.available() >= r.free());
    // A tighter own limit wins.
    c.set_limit(Some(16 << 20)).unwrap();
    let r = c.room().unwrap().unwrap();
    assert_eq!((r.limit, r.group.as_path()), (16 << 20, child.as_path()));
}
