//! Runs `ebb bench cache`: `cargo build --release -p ebb-lab --bins && cargo run --release -p ebb-lab --example bench_cache -- [--quick] [--json]`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = ebb_lab::bench::cache::Options {
        quick: args.iter().any(|a| a == "--quick"),
    };
    match ebb_lab::bench::cache::run(&opts) {
        Ok(report) if args.iter().any(|a| a == "--json") => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("report serialises")
            );
        }
        Ok(report) => print!("{}", report.render()),
        Err(e) => {
            eprintln!("bench cache: {e}");
            std::process::exit(1);
        }
    }
}
