//! `gantry run`'s serving data path: the router every replica serves, and the autoscaler the
//! leader runs (crate `gantry-router`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{ArgAction, Args};
use gantry_router::cluster::{Defaults, KubeScaler};
use gantry_router::metrics::RouterMetrics;
use gantry_router::{Router, RouterSettings};
use gantry_runtime::events::Events;
use tokio_util::sync::CancellationToken;

fn duration(s: &str) -> Result<Duration, String> {
    gantry_api::meta::parse_duration(s).map_err(|e| e.to_string())
}

/// Flags of the data path, with Knative's `config-autoscaler` defaults.
#[derive(Debug, Args)]
pub struct ServingRouterArgs {
    /// Where Knative Services are served (requests routed by Host). Empty turns the router off.
    #[arg(long, env = "GANTRY_SERVING_ADDR", default_value = "0.0.0.0:8090")]
    pub serving_addr: String,
    /// Knative's `stable-window`: the autoscaler's averaging window (Revision annotation
    /// `autoscaling.knative.dev/window` overrides it).
    #[arg(long, env = "GANTRY_STABLE_WINDOW", default_value = "60s", value_parser = duration)]
    pub stable_window: Duration,
    /// Knative's `scale-to-zero-grace-period`: idle this much longer than the stable window
    /// before scaling to zero.
    #[arg(long, env = "GANTRY_SCALE_TO_ZERO_GRACE_PERIOD", default_value = "30s", value_parser = duration)]
    pub scale_to_zero_grace_period: Duration,
    /// Knative's `enable-scale-to-zero`.
    #[arg(long, env = "GANTRY_ENABLE_SCALE_TO_ZERO", default_value_t = true, action = ArgAction::Set)]
    pub enable_scale_to_zero: bool,
    /// Requests one Revision may hold while no pod is free; beyond it the router answers 503.
    #[arg(long, env = "GANTRY_SERVING_QUEUE_LIMIT", default_value_t = 10_000)]
    pub serving_queue_limit: u64,
    /// Longest wait for a response to start (cold start included) when a Revision sets no
    /// `timeoutSeconds`; then 504 with `Retry-After`.
    #[arg(long, env = "GANTRY_SERVING_REQUEST_TIMEOUT", default_value = "300s", value_parser = duration)]
    pub serving_request_timeout: Duration,
    /// How often the autoscaler decides.
    #[arg(long, env = "GANTRY_AUTOSCALER_TICK", default_value = "1s", value_parser = duration)]
    pub autoscaler_tick: Duration,
    /// Refuse (and count in `gantry_serving_dial_refused`) backend connections outside
    /// 127.0.0.0/8 and ::1: for tests, the sandbox and benchmarks on one machine.
    #[arg(long, env = "GANTRY_SERVING_LOOPBACK_ONLY", default_value_t = false, action = ArgAction::Set)]
    pub serving_loopback_only: bool,
    /// The address other replicas reach this one's serving listener at, published in its
    /// replica Lease so the leader can collect its counts. Default: `$POD_IP` with the serving
    /// port, else the bound address unless it is unspecified (0.0.0.0).
    #[arg(long, env = "GANTRY_SERVING_ADVERTISE_ADDR")]
    pub serving_advertise_addr: Option<SocketAddr>,
}

/// How this replica takes part in leader election, for its replica Lease.
pub struct Replica {
    /// The leader-election identity.
    pub identity: String,
    /// Gantry's namespace, where the Leases are.
    pub namespace: String,
}

impl ServingRouterArgs {
    pub fn enabled(&self) -> bool {
        !self.serving_addr.is_empty()
    }

    pub fn router(&self, client: &kube::Client, metrics: RouterMetrics) -> Router {
        let (events_tx, _) = tokio::sync::broadcast::channel(64);
        let events = Events::new(client.clone(), "autoscaler", events_tx);
        let settings = RouterSettings {
            queue_limit: self.serving_queue_limit,
            loopback_only: self.serving_loopback_only,
            ..RouterSettings::default()
        };
        Router::new(settings, KubeScaler::new(client.clone(), events), metrics)
    }

    /// Where other replicas reach this one: the flag, else `$POD_IP` on the bound port, else the
    /// bound address if it is a specific one.
    fn advertised(&self, local: SocketAddr) -> Option<SocketAddr> {
        if let Some(addr) = self.serving_advertise_addr {
            return Some(addr);
        }
        if let Some(ip) = std::env::var("POD_IP")
            .ok()
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        {
            return Some(SocketAddr::new(ip, local.port()));
        }
        (!local.ip().is_unspecified()).then_some(local)
    }

    /// Serves the router, fills it from the cluster, runs the autoscaler while `leader` is set
    /// and, with leader election (`replica`), reports this replica's counts to the leader.
    /// Everything stops with `shutdown`; the returned task (the replica's membership) deletes
    /// its Lease as it stops, so the caller awaits it before the process exits.
    pub async fn start(
        &self,
        client: kube::Client,
        router: Router,
        namespace: Option<String>,
        replica: Option<Replica>,
        leader: Arc<AtomicBool>,
        shutdown: CancellationToken,
    ) -> Result<Option<tokio::task::JoinHandle<()>>> {
        let addr: SocketAddr = self.serving_addr.parse().with_context(|| {
            format!("--serving-addr \"{}\" is not an address", self.serving_addr)
        })?;
        let stop = shutdown.clone();
        let (local, _) =
            gantry_router::proxy::bind(router.clone(), addr, async move { stop.cancelled().await })
                .await
                .with_context(|| format!("binding the serving router to {addr}"))?;
        tracing::info!(serving = %local, "serving Knative Services");
        let defaults = Defaults {
            stable_window: self.stable_window,
            scale_to_zero_grace: self.scale_to_zero_grace_period,
            enable_scale_to_zero: self.enable_scale_to_zero,
            request_timeout: self.serving_request_timeout,
        };
        let mut membership_task = None;
        if let Some(replica) = replica {
            match self.advertised(local) {
                Some(address) => {
                    let membership = gantry_router::peers::Membership {
                        client: client.clone(),
                        namespace: replica.namespace,
                        identity: replica.identity,
                        address,
                    };
                    let (stop, leader) = (shutdown.clone(), leader.clone());
                    membership_task = Some(tokio::spawn(gantry_router::peers::run_membership(
                        membership,
                        router.clone(),
                        move || leader.load(Ordering::SeqCst),
                        async move { stop.cancelled().await },
                    )));
                }
                None => tracing::warn!(
                    serving = %local,
                    "no address to advertise to the other replicas (set POD_IP or \
                     --serving-advertise-addr): the leader will not count this replica's requests"
                ),
            }
        }
        let stop = shutdown.clone();
        let cluster = gantry_router::cluster::run(client, router.clone(), namespace, defaults);
        tokio::spawn(async move {
            tokio::select! {
                () = cluster => {}
                () = stop.cancelled() => {}
            }
        });
        let stop = shutdown.clone();
        tokio::spawn(router.run_autoscaler(
            self.autoscaler_tick,
            move || leader.load(Ordering::SeqCst),
            async move { stop.cancelled().await },
        ));
        Ok(membership_task)
    }
}
