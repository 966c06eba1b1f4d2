//! An app for the app-switch benchmark: see `ebb_lab::app` for the protocol.
fn main() {
    if let Err(e) = ebb_lab::app::run_child(std::env::args().skip(1)) {
        eprintln!("ebb-app: {e}");
        std::process::exit(1);
    }
}
