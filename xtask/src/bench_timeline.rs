//! Where a `bench gitops` run's wall time goes: watches of the run's Deployments and
//! Kustomizations record, per Kustomization, when its Deployment appeared (the controller
//! applied it), when the Deployment became Current (kube-controller-manager wrote its status:
//! kstatus as Flux computes it) and when the Kustomization said Ready=True. Times are when the
//! bench's own watches saw the change, from the start of the run.
//!
//! Read together: `applied` is queueing + source + build + dry-run + apply; `current - applied`
//! is the control plane making the Deployment ready (nothing a GitOps controller controls);
//! `ready - current` is the controller noticing that and writing its status. The mean number of
//! Kustomizations between "applied" and "ready" is how many of the controller's workers the
//! health waits hold.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use gantry_api::kustomize::v1::Kustomization;
use gantry_core::kustomize::kstatus::{self, Status};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

#[derive(Default, Clone, Copy)]
struct Marks {
    applied: Option<Duration>,
    current: Option<Duration>,
    ready: Option<Duration>,
}

/// The watches of one run; stop with [`Timeline::finish`].
pub struct Timeline {
    marks: Arc<Mutex<HashMap<String, Marks>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn lock(
    marks: &Mutex<HashMap<String, Marks>>,
) -> std::sync::MutexGuard<'_, HashMap<String, Marks>> {
    marks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Timeline {
    /// Starts watching `ns`; times count from `started`.
    pub fn start(client: &kube::Client, ns: &str, started: Instant) -> Self {
        let marks: Arc<Mutex<HashMap<String, Marks>>> = Arc::default();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
        let seen = marks.clone();
        let watch_deployments = tokio::spawn(async move {
            let mut events = watcher(deployments, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(event) = events.next().await {
                let Ok(deployment) = event else { continue };
                let at = started.elapsed();
                // `k{i}-app` belongs to the Kustomization `k{i}`.
                let Some(name) = deployment.metadata.name.as_deref() else {
                    continue;
                };
                let owner = name.trim_end_matches("-app").to_string();
                let value = serde_json::to_value(&deployment).unwrap_or_default();
                let current = kstatus::compute_flux(&value).status == Status::Current;
                let mut marks = lock(&seen);
                let entry = marks.entry(owner).or_default();
                entry.applied.get_or_insert(at);
                if current {
                    entry.current.get_or_insert(at);
                }
            }
        });
        let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), ns);
        let seen = marks.clone();
        let watch_kustomizations = tokio::spawn(async move {
            let mut events = watcher(kustomizations, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(event) = events.next().await {
                let Ok(ks) = event else { continue };
                let at = started.elapsed();
                let ready = ks.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                });
                if ready && let Some(name) = ks.metadata.name {
                    lock(&seen).entry(name).or_default().ready.get_or_insert(at);
                }
            }
        });
        Timeline {
            marks,
            tasks: vec![watch_deployments, watch_kustomizations],
        }
    }

    /// How many Kustomizations the watch has seen Ready, and when it saw the last of them.
    pub fn ready(&self) -> (usize, Duration) {
        let marks = lock(&self.marks);
        marks
            .values()
            .filter_map(|m| m.ready)
            .fold((0, Duration::ZERO), |(n, last), at| (n + 1, last.max(at)))
    }

    /// Stops the watches and summarises what they saw (`wall`: the run's wall time).
    pub fn finish(self, wall: Duration) -> Vec<String> {
        for task in &self.tasks {
            task.abort();
        }
        let marks: Vec<Marks> = lock(&self.marks).values().copied().collect();
        let secs = |d: Duration| d.as_secs_f64();
        let applied: Vec<f64> = marks.iter().filter_map(|m| m.applied.map(secs)).collect();
        let control_plane: Vec<f64> = marks
            .iter()
            .filter_map(|m| Some(secs(m.current?) - secs(m.applied?)))
            .collect();
        let notice: Vec<f64> = marks
            .iter()
            .filter_map(|m| Some(secs(m.ready?) - secs(m.current?)))
            .collect();
        let held: f64 = marks
            .iter()
            .filter_map(|m| Some(secs(m.ready?) - secs(m.applied?)))
            .sum();
        let ready: Vec<f64> = marks.iter().filter_map(|m| m.ready.map(secs)).collect();
        vec![
            format!("applied (s since start): {}", spread(applied)),
            format!(
                "Deployment Current after applied (kube-controller-manager): {}",
                spread(control_plane)
            ),
            format!(
                "Ready after Deployment Current (controller): {}",
                spread(notice)
            ),
            format!("Ready (s since start): {}", spread(ready)),
            format!(
                "Kustomizations between applied and Ready, on average: {:.1}",
                // abs: a floor has no Ready, and an empty f64 sum is -0.0.
                (held / secs(wall).max(0.001)).abs()
            ),
        ]
    }
}

/// `n, median, p90, max` of `values` in seconds.
fn spread(mut values: Vec<f64>) -> String {
    if values.is_empty() {
        return "none seen".into();
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    format!(
        "n={}, median {:.2}, p90 {:.2}, max {:.2}",
        values.len(),
        at(0.5),
        at(0.9),
        at(1.0)
    )
}
