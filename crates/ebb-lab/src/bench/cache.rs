//! `ebb bench cache` (in progress).
