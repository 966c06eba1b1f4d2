//! Runs `ebb bench volatile`: `cargo run --release -p ebb-lab --example bench_volatile -- [--quick] [--json]`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = ebb_lab::bench::volatile::Options {
        quick: args.iter().any(|a| a == "--quick"),
        torture: !args.iter().any(|a| a == "--no-torture"),
        ..Default::default()
    };
    match ebb_lab::bench::volatile::run(&opts) {
        Ok(report) if args.iter().any(|a| a == "--json") => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("report serialises")
            );
        }
        Ok(report) => print!("{}", report.render()),
        Err(e) => {
            eprintln!("bench volatile: {e}");
            std::process::exit(1);
        }
    }
}
