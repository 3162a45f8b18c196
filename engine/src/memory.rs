//! The machine's memory, for the budgets jobs size themselves by.

/// Physical memory in bytes (`MemTotal` of /proc/meminfo), None where it cannot be read.
pub fn total_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    })
}

/// Bytes a SecureBoost job with the `ot` backend, or an LR job on one-hot groups (the
/// scorecard's), may keep as expanded one-hot leaves
/// ([`consort_protocols::mpc::secureboost::SbConfig::kept_leaves_bytes`],
/// [`consort_protocols::mpc::lr::LrConfig::kept_leaves_bytes`]): a quarter of the
/// machine's memory (2 GiB if it cannot be read), so two nodes on one machine and their other
/// state fit beside each other.
pub fn kept_leaves_budget() -> u64 {
    total_bytes().map_or(2 << 30, |b| b / 4)
}
