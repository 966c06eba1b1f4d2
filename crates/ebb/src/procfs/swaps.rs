//! `/proc/swaps`: the active swap devices and files.
//!
//! Sizes in the file are KiB; they are reported in bytes. Lines that do not have the five
//! columns, or whose numbers do not parse or overflow, are skipped (the header included).

/// One active swap device or file from /proc/swaps.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SwapDevice {
    /// Path of the device or file.
    pub device: String,
    /// `partition` or `file`.
    pub kind: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Priority.
    pub priority: i32,
}

/// Parses /proc/swaps (sizes there are KiB).
pub fn parse(text: &str) -> Vec<SwapDevice> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 5 {
                return None;
            }
            Some(SwapDevice {
                device: f[0].replace("\\040", " "),
                kind: f[1].to_string(),
                size_bytes: f[2].parse::<u64>().ok()?.checked_mul(1024)?,
                used_bytes: f[3].parse::<u64>().ok()?.checked_mul(1024)?,
                priority: f[4].parse().ok()?,
            })
        })
        .collect()
}

/// Reads the active swap devices from /proc/swaps.
pub fn read() -> Result<Vec<SwapDevice>, super::Error> {
    Ok(parse(&super::read_file("/proc/swaps")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_parse() {
        let text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/zram0                              partition\t2097148\t\t1024\t\t100\n";
        let s = parse(text);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].device, "/dev/zram0");
        assert_eq!(s[0].size_bytes, 2097148 * 1024);
        assert_eq!(s[0].used_bytes, 1024 * 1024);
        assert_eq!(s[0].priority, 100);
        assert!(parse("").is_empty());
        assert!(
            parse("header\ngarbage line\n/dev/x partition 99999999999999999999 0 1\n").is_empty()
        );
    }
}
