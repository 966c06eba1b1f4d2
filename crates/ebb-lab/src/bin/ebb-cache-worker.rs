//! The child of `ebb bench cache`: one cache under a workload; see `ebb_lab::bench::cache`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = ebb_lab::bench::cache::worker_main(&args) {
        eprintln!("ebb-cache-worker: {e}");
        std::process::exit(2);
    }
}
