//! `ebb hog` (hidden) speaks the lab's hog protocol, so the CLI can be the workload.
use std::process::Command;

#[test]
fn ebb_acts_as_hog() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ebb"));
    cmd.arg("hog");
    let mut hog = ebb_lab::Hog::spawn_command(cmd, None).unwrap();
    hog.alloc(4 << 20).unwrap();
    assert!(hog.verify().unwrap());
    assert!(hog.rss().unwrap() >= 4 << 20);
    assert!(hog.exit().unwrap().success());
}
