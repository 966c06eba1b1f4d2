//! Typed parsers for the /proc files ebb reads.
