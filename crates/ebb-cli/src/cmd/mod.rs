//! One module per subcommand.

pub mod advise;
pub mod lab;
pub mod ps;
pub mod status;
