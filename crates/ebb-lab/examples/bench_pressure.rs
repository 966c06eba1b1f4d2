//! Runs `ebb bench pressure` logic: `cargo run --release -p ebb-lab --example bench_pressure -- [--quick] [--json]`.
use ebb_lab::bench::pressure::{Options, run};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = Options {
        quick: args.iter().any(|a| a == "--quick"),
        ..Options::default()
    };
    match run(&opts) {
        Ok(report) if args.iter().any(|a| a == "--json") => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("a report serializes")
            );
        }
        Ok(report) => print!("{}", report.render()),
        Err(e) => {
            eprintln!("bench pressure: {e}");
            std::process::exit(1);
        }
    }
}
