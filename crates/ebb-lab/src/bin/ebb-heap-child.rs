//! A child process holding one heap, for the heap's pressure tests and benchmark: see
//! `ebb_lab::bench::heap_child` for the protocol.
fn main() {
    if let Err(e) = ebb_lab::bench::heap_child::child_main(std::env::args().skip(1)) {
        eprintln!("ebb-heap-child: {e}");
        std::process::exit(1);
    }
}
