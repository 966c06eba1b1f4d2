//! Runs `ebb bench heap`: `cargo run --release -p ebb-lab --example bench_heap -- [--quick]
//! [--json] [--only reuse|thp|pressure]`.

use ebb_lab::bench::heap::{Options, run};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = Options {
        quick: args.iter().any(|a| a == "--quick"),
        ..Options::default()
    };
    if let Some(i) = args.iter().position(|a| a == "--only") {
        let only = args.get(i + 1).map(String::as_str).unwrap_or("");
        opts.reuse = only == "reuse";
        opts.thp = only == "thp";
        opts.pressure = only == "pressure";
    }
    match run(&opts) {
        Ok(report) => {
            if args.iter().any(|a| a == "--json") {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("serializable")
                );
            } else {
                print!("{}", report.render());
            }
        }
        Err(e) => {
            eprintln!("bench heap: {e}");
            std::process::exit(1);
        }
    }
}
