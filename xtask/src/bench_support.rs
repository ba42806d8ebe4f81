//! What the benchmarks share: the binary they measure and how they read a process's cost from
//! `/proc`. Each benchmark file uses this module, none imports another.

use std::collections::BTreeMap;
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

/// RssAnon: the anonymous part of the resident set now (heap and stacks; not the binary's own
/// code and data pages, which are file-backed, shared and reclaimable), MiB.
pub fn anon_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "RssAnon:")
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

/// The API server's `apiserver_request_total`, summed by `(verb, resource[/subresource],
/// dry_run)`. Counters of all clients: the API server has no per-client label.
pub async fn api_requests(client: &kube::Client) -> Result<BTreeMap<RequestKey, f64>> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    Ok(parse_request_totals(&text))
}

/// One row of [`api_requests`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestKey {
    pub verb: String,
    /// `resource` or `resource/subresource`.
    pub resource: String,
    pub dry_run: bool,
}

impl std::fmt::Display for RequestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if self.dry_run {
            f.write_str(" (dry-run)")?;
        }
        Ok(())
    }
}

fn parse_request_totals(text: &str) -> BTreeMap<RequestKey, f64> {
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default()
                .to_string()
        };
        let subresource = label("subresource");
        let mut resource = label("resource");
        if !subresource.is_empty() {
            resource = format!("{resource}/{subresource}");
        }
        let key = RequestKey {
            verb: label("verb"),
            resource,
            dry_run: !label("dry_run").is_empty(),
        };
        *counts.entry(key).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    counts
}

/// `after - before`, rows that did not change left out.
pub fn request_delta(
    before: &BTreeMap<RequestKey, f64>,
    after: &BTreeMap<RequestKey, f64>,
) -> BTreeMap<RequestKey, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// The pid of the local control plane's kube-apiserver, read from the `cluster.json` beside
/// the kubeconfig (`None` for another cluster).
pub fn apiserver_pid(kubeconfig: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(kubeconfig.parent()?.join("cluster.json")).ok()?;
    let state: serde_json::Value = serde_json::from_str(&text).ok()?;
    state["components"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "kube-apiserver")?["pid"]
        .as_u64()
        .and_then(|pid| u32::try_from(pid).ok())
}

/// The 1-minute load average of the machine.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_totals_are_summed_by_verb_resource_and_dry_run() {
        let text = "# HELP apiserver_request_total x\n\
            apiserver_request_total{code=\"200\",component=\"apiserver\",dry_run=\"\",group=\"apps\",resource=\"deployments\",scope=\"resource\",subresource=\"\",verb=\"APPLY\",version=\"v1\"} 3\n\
            apiserver_request_total{code=\"201\",component=\"apiserver\",dry_run=\"\",group=\"apps\",resource=\"deployments\",scope=\"resource\",subresource=\"\",verb=\"APPLY\",version=\"v1\"} 2\n\
            apiserver_request_total{code=\"200\",component=\"apiserver\",dry_run=\"All\",group=\"apps\",resource=\"deployments\",scope=\"resource\",subresource=\"\",verb=\"APPLY\",version=\"v1\"} 4\n\
            apiserver_request_total{code=\"200\",component=\"apiserver\",dry_run=\"\",group=\"kustomize.toolkit.fluxcd.io\",resource=\"kustomizations\",scope=\"resource\",subresource=\"status\",verb=\"APPLY\",version=\"v1\"} 7\n";
        let counts = super::parse_request_totals(text);
        let get = |verb: &str, resource: &str, dry_run: bool| {
            counts[&super::RequestKey {
                verb: verb.into(),
                resource: resource.into(),
                dry_run,
            }]
        };
        assert_eq!(get("APPLY", "deployments", false), 5.0);
        assert_eq!(get("APPLY", "deployments", true), 4.0);
        assert_eq!(get("APPLY", "kustomizations/status", false), 7.0);
        let before = counts.clone();
        let mut after = counts.clone();
        *after.values_mut().next().unwrap() += 2.0;
        let delta = super::request_delta(&before, &after);
        assert_eq!(delta.len(), 1);
        assert_eq!(delta.values().next(), Some(&2.0));
    }

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
        let anon = anon_rss_mib(pid);
        assert!(anon > 0.0 && anon <= status_mib(pid, "VmRSS:"), "{anon}");
    }
}
