//! Bands: where a process stands, from its oom_score_adj, a `mark`, or its cgroup.
//!
//! Android's ActivityManager writes each app's rank into `oom_score_adj`; ebbd reads it back
//! into the bands of the contract. A `mark` over the socket overrides the adj-derived band
//! until the process is marked `normal`; membership of a cached (or frozen) cgroup makes a
//! process cached.

use crate::config::Ranks;

/// Where a process stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Band {
    /// adj <= `ranks.foreground`: the app in front.
    Foreground,
    /// adj <= `ranks.visible`.
    Visible,
    /// adj <= `ranks.perceptible`.
    Perceptible,
    /// Between perceptible and previous (services, home, …).
    Other,
    /// `ranks.previous` <= adj < `ranks.cached`: the app used last.
    Previous,
    /// adj >= `ranks.cached`: kept only for a fast restart; compacted.
    Cached,
}

impl Band {
    /// Every band, in the order of the status counters.
    pub const ALL: [Band; 6] = [
        Band::Foreground,
        Band::Visible,
        Band::Perceptible,
        Band::Previous,
        Band::Cached,
        Band::Other,
    ];

    /// The band of `adj` under `ranks`.
    pub fn from_adj(adj: i16, ranks: &Ranks) -> Band {
        if adj <= ranks.foreground {
            Band::Foreground
        } else if adj <= ranks.visible {
            Band::Visible
        } else if adj <= ranks.perceptible {
            Band::Perceptible
        } else if adj >= ranks.cached {
            Band::Cached
        } else if adj >= ranks.previous {
            Band::Previous
        } else {
            Band::Other
        }
    }

    /// The name used in the socket protocol and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Band::Foreground => "foreground",
            Band::Visible => "visible",
            Band::Perceptible => "perceptible",
            Band::Other => "other",
            Band::Previous => "previous",
            Band::Cached => "cached",
        }
    }
}

impl std::fmt::Display for Band {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `mark` may set: a band, or `normal` (back to the adj-derived band).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mark {
    /// Foreground.
    Foreground,
    /// Visible.
    Visible,
    /// Perceptible.
    Perceptible,
    /// Cached: compacted like adj >= cached.
    Cached,
    /// Remove the mark.
    Normal,
}

impl Mark {
    /// The band this mark forces, `None` for `normal`.
    pub fn band(self) -> Option<Band> {
        match self {
            Mark::Foreground => Some(Band::Foreground),
            Mark::Visible => Some(Band::Visible),
            Mark::Perceptible => Some(Band::Perceptible),
            Mark::Cached => Some(Band::Cached),
            Mark::Normal => None,
        }
    }

    /// The protocol name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Foreground => "foreground",
            Mark::Visible => "visible",
            Mark::Perceptible => "perceptible",
            Mark::Cached => "cached",
            Mark::Normal => "normal",
        }
    }
}

impl std::str::FromStr for Mark {
    type Err = String;
    fn from_str(s: &str) -> Result<Mark, String> {
        match s {
            "foreground" => Ok(Mark::Foreground),
            "visible" => Ok(Mark::Visible),
            "perceptible" => Ok(Mark::Perceptible),
            "cached" => Ok(Mark::Cached),
            "normal" => Ok(Mark::Normal),
            _ => Err(format!(
                "unknown band {s:?}: expected foreground, visible, perceptible, cached or normal"
            )),
        }
    }
}

/// The adj the killer ranks a process by: its own, or for a marked one the adj of its
/// band's threshold (a process marked foreground is as safe as adj 0).
pub fn kill_adj(adj: i16, mark: Option<Band>, ranks: &Ranks) -> i16 {
    match mark {
        None => adj,
        Some(Band::Foreground) => ranks.foreground,
        Some(Band::Visible) => ranks.visible,
        Some(Band::Perceptible) => ranks.perceptible,
        Some(Band::Previous) => ranks.previous,
        Some(Band::Cached) => adj.max(ranks.cached),
        Some(Band::Other) => adj,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn android_bands() {
        let r = Ranks::default();
        assert_eq!(Band::from_adj(-1000, &r), Band::Foreground);
        assert_eq!(Band::from_adj(0, &r), Band::Foreground);
        assert_eq!(Band::from_adj(1, &r), Band::Visible);
        assert_eq!(Band::from_adj(100, &r), Band::Visible);
        assert_eq!(Band::from_adj(200, &r), Band::Perceptible);
        assert_eq!(Band::from_adj(300, &r), Band::Other);
        assert_eq!(Band::from_adj(700, &r), Band::Previous);
        assert_eq!(Band::from_adj(899, &r), Band::Previous);
        assert_eq!(Band::from_adj(900, &r), Band::Cached);
        assert_eq!(Band::from_adj(1000, &r), Band::Cached);
    }

    #[test]
    fn marks_parse_and_rank() {
        assert_eq!("cached".parse::<Mark>().unwrap(), Mark::Cached);
        assert!("bogus".parse::<Mark>().is_err());
        let r = Ranks::default();
        assert_eq!(kill_adj(950, Some(Band::Foreground), &r), 0);
        assert_eq!(kill_adj(0, Some(Band::Cached), &r), 900);
        assert_eq!(kill_adj(950, None, &r), 950);
    }
}
