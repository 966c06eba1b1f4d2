//! One module per subcommand.

pub mod advise;
pub mod bench;
pub mod lab;
pub mod ps;
pub mod status;
pub mod watch;
