//! Memory-pressure signals.

/// How urgently memory is wanted, in rising order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Reclaim has started: cheap give-backs are welcome.
    Low,
    /// Reclaim is costing work (swapping, stalls): give back what can be rebuilt.
    Medium,
    /// Close to OOM: give back everything that can be given.
    Critical,
}
