//! Helpers shared by the hand-timed bench binaries (`lr`, `onehot`).

/// CPU seconds of this process so far (user + system, from /proc/self/stat).
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |(_, s)| s);
    let f: Vec<f64> = after.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
    // Fields 14 and 15 (utime, stime) are 11 and 12 after the command name, in clock ticks.
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}
