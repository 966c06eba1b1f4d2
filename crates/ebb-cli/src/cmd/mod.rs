//! One module per subcommand.

pub mod advise;
pub mod bench;
pub mod daemon;
pub mod demo;
pub mod lab;
pub mod mark;
pub mod ps;
pub mod status;
pub mod watch;
