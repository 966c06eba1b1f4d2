//! A child workload for the memory lab: see `ebb_lab::hog` for the protocol.
fn main() {
    if let Err(e) = ebb_lab::hog::run_child(std::env::args().skip(1)) {
        eprintln!("ebb-hog: {e}");
        std::process::exit(1);
    }
}
