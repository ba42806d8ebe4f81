//! What the benchmarks share: the binary they measure and how they read a process's cost from
//! `/proc`. Each benchmark file uses this module, none imports another.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

/// The release `gantry` that ships in the image (one build for the image, its tests and the
/// benchmarks), so the figures are the shipped binary's.
pub fn build_release(workspace: &Path) -> Result<PathBuf> {
    crate::image::build_gantry(workspace)
}

// Linux reports CPU times in clock ticks of 1/100 s (USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

/// Fields of `/proc/<pid>/stat` after the command name (which may contain spaces).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1.to_owned();
    Some(
        rest.split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .collect(),
    )
}

// A `/proc/<pid>/status` line in kB, as MiB.
fn status_mib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds `pid` used so far, its own and its reaped children's (kustomize builds).
pub fn cpu_seconds(pid: u32) -> f64 {
    // utime, stime, cutime, cstime.
    stat_fields(pid).map_or(0, |f| f.iter().skip(11).take(4).sum::<u64>()) as f64 / TICKS_PER_SECOND
}

/// VmHWM: the process's peak resident set size so far, MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// RSS (MiB) at the end and CPU use (% of one core, the process's own) of `pid` over `period`.
pub async fn idle_usage(pid: u32, period: Duration) -> (f64, f64) {
    let own = || stat_fields(pid).map_or(0, |f| f.iter().skip(11).take(2).sum::<u64>());
    let before = own();
    tokio::time::sleep(period).await;
    let after = own().max(before);
    let cpu = (after - before) as f64 / TICKS_PER_SECOND / period.as_secs_f64() * 100.0;
    (status_mib(pid, "VmRSS:"), cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        // Burn a little CPU so the counters move.
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_add(i ^ (x >> 3));
        }
        assert!(x != 1);
        assert!(cpu_seconds(pid) > 0.0);
        assert!(peak_rss_mib(pid) > 1.0);
    }
}
