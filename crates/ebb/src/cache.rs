//! A purgeable cache (in progress).
