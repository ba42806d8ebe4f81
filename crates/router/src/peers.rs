//! Replicas report their exact counts to the leader, which decides from the sum.
//!
//! Every `gantry run` replica serves the data path and sees only its share of the requests;
//! only the leader scales. So that it never scales to zero (or down) a Revision busy on another
//! replica:
//!
//! - **Membership** ([`run_membership`]): each replica keeps a `coordination.k8s.io` Lease
//!   `gantry-serving-replica-<identity>` in Gantry's namespace (label [`REPLICA_LABEL`]), as
//!   kube-apiservers keep their identity Leases: holder = the leader-election identity, renewed
//!   every [`RENEW_EVERY`] for [`LEASE_DURATION`], annotated with the replica's serving address
//!   and a secret made at start. Replicas watch these Leases; one not renewed within its duration
//!   (as this process observed it, so clocks need not agree) is no member. The leader deletes
//!   Leases long expired; a replica deletes its own when it stops.
//! - **Reports** ([`Router::peer_report`]): a request to the serving listener with Host
//!   [`REPORT_HOST`] and the replica's secret as bearer token answers its exact counters per
//!   Revision ([`Counters`]): in flight now, the cumulative in-flight area and requests started,
//!   and how long ago the latest request started or finished. No route has a host without a
//!   dot, so the name never shadows a Knative Service.
//! - **Scrapes** ([`Router::scrape_peers`]): every autoscaler tick the leader asks each member at
//!   its advertised address only, through the router's dial guard (loopback-only in tests), and
//!   adds the answers into its decisions ([`ReplicaView`]). A member that stops answering is
//!   dropped after [`STALENESS`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use gantry_core::serving::autoscale::{Counters, PeerState, PeerTick, ReplicaView};
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::Router;
use crate::dial::{DialGuard, GuardedConnector};
use crate::table::RevisionKey;

/// The Host of report requests. No Knative route is a single label.
pub const REPORT_HOST: &str = "gantry-replica-report";
/// Label of the replicas' Leases.
pub const REPLICA_LABEL: &str = "serving.gantry.dev/replica";
/// Annotation of a replica's Lease: its serving address (`ip:port`).
pub const ADDRESS_ANNOTATION: &str = "serving.gantry.dev/address";
/// Annotation of a replica's Lease: the bearer token its reports require.
pub const TOKEN_ANNOTATION: &str = "serving.gantry.dev/report-token";
/// Field manager of the replica Leases.
pub const FIELD_MANAGER: &str = "gantry-serving";
/// A replica Lease is live this long after this process saw it renewed.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often a replica renews its Lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// A member whose last report is older than this is left out of the sums. As long as the Lease:
/// a replica that renews but cannot answer is dropped no later than one that died.
pub const STALENESS: Duration = LEASE_DURATION;
/// One scrape may take this long; the leader asks all members at once.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);

/// A replica as its Lease advertises it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub address: SocketAddr,
    pub token: String,
    /// When the Lease stops counting (this process's clock).
    pub expires: Instant,
}

/// The report a replica serves (JSON).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub identity: String,
    pub revisions: Vec<RevisionReport>,
    /// The replicas this one hears from (set on the leader), for people and tests.
    #[serde(default)]
    pub peers: Vec<PeerStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionReport {
    pub namespace: String,
    pub name: String,
    pub in_flight: u64,
    pub area_us: u64,
    pub started: u64,
    /// Microseconds since the latest start or finish; absent if none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_for_us: Option<u64>,
    pub mark: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    pub identity: String,
    pub address: String,
    /// `waiting`, `stale`, or `reported` with `reportedSecondsAgo`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_seconds_ago: Option<f64>,
}

/// The router's side of replica reporting: its own secret and identity, the members, and the
/// leader's view of their counts.
pub struct Peers {
    token: String,
    identity: OnceLock<String>,
    /// When membership began, and whether the Lease watch has listed every member since.
    joined: OnceLock<Instant>,
    synced: std::sync::atomic::AtomicBool,
    members: Mutex<BTreeMap<String, Member>>,
    view: Mutex<ReplicaView<RevisionKey>>,
    client: HttpClient<GuardedConnector, Empty<Bytes>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("identity", &self.identity.get())
            .finish_non_exhaustive()
    }
}

impl Peers {
    pub(crate) fn new(guard: std::sync::Arc<DialGuard>) -> Self {
        let client = HttpClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(2)
            .build(GuardedConnector::new(guard));
        Peers {
            token: new_token(),
            identity: OnceLock::new(),
            joined: OnceLock::new(),
            synced: std::sync::atomic::AtomicBool::new(false),
            members: Mutex::default(),
            view: Mutex::new(ReplicaView::new(STALENESS)),
            client,
        }
    }

    /// The secret this replica's reports require (published in its Lease).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// This replica's identity (the leader-election identity); set once.
    pub fn set_identity(&self, identity: &str) {
        let _ = self.identity.set(identity.to_owned());
    }

    pub fn identity(&self) -> &str {
        self.identity.get().map_or("", String::as_str)
    }

    /// Replaces the members (by identity), as the Lease watch sees them.
    pub fn set_members(&self, members: BTreeMap<String, Member>) {
        *self.members.lock().unwrap_or_else(PoisonError::into_inner) = members;
        self.synced.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Membership began but the members are not known yet: a leader that started a moment ago
    /// must not decide alone. Bounded by [`STALENESS`], so a watch that never lists cannot hold
    /// scale-downs for ever.
    fn unknown(&self) -> bool {
        !self.synced.load(std::sync::atomic::Ordering::SeqCst)
            && self.joined.get().is_some_and(|t| t.elapsed() < STALENESS)
    }

    /// The other replicas whose Lease is live now.
    pub fn live(&self) -> Vec<(String, Member)> {
        let now = Instant::now();
        let me = self.identity();
        self.members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(id, m)| id.as_str() != me && m.expires > now)
            .map(|(id, m)| (id.clone(), m.clone()))
            .collect()
    }
}

/// 128 random bits, hex.
fn new_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // Not expected on Linux; the reports then carry only counts, so say it and go on.
        tracing::warn!("no system randomness: replica reports use a weak token");
        let seed = std::collections::hash_map::RandomState::new();
        let v = std::hash::BuildHasher::hash_one(&seed, std::process::id());
        bytes[..8].copy_from_slice(&v.to_le_bytes());
    }
    hex::encode(bytes)
}

/// Equal without an early exit, so the time taken says nothing about the token.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Router {
    pub fn peers(&self) -> &Peers {
        &self.inner.peers
    }

    /// This replica's exact counts per Revision, for the leader. Revisions that never saw a
    /// request here, or have been quiet here for twice their idle time, are left out: they
    /// cannot keep anything awake.
    pub fn local_report(&self) -> Report {
        let mut revisions: Vec<RevisionReport> = Vec::new();
        for rev in self.revisions() {
            let mark = rev.last_active_raw();
            if mark == 0 {
                continue;
            }
            let activity = rev.activity();
            let idle_for = activity.last_active.map(|t| rev.now().saturating_sub(t));
            let quiet = rev.config().autoscale.idle_after() * 2;
            if activity.in_flight == 0 && idle_for.is_some_and(|d| d > quiet) {
                continue;
            }
            revisions.push(RevisionReport {
                namespace: rev.key.namespace.clone(),
                name: rev.key.name.clone(),
                in_flight: activity.in_flight,
                area_us: rev.area_us(),
                started: rev.started.load(std::sync::atomic::Ordering::Relaxed),
                idle_for_us: idle_for.map(|d| d.as_micros() as u64),
                mark,
            });
        }
        revisions.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let peers = &self.inner.peers;
        let members = peers.live();
        let now = self.inner.base.elapsed();
        let states = peers
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .states(now);
        let peers = states
            .into_iter()
            .map(|(identity, state)| {
                let address = members
                    .iter()
                    .find(|(id, _)| *id == identity)
                    .map(|(_, m)| m.address.to_string())
                    .unwrap_or_default();
                let (state, ago) = match state {
                    PeerState::Waiting => ("waiting", None),
                    PeerState::Stale => ("stale", None),
                    PeerState::Reported(d) => ("reported", Some(d.as_secs_f64())),
                };
                PeerStatus {
                    identity,
                    address,
                    state: state.into(),
                    reported_seconds_ago: ago,
                }
            })
            .collect();
        Report {
            identity: self.inner.peers.identity().to_owned(),
            revisions,
            peers,
        }
    }

    /// Answers a report request: the bearer token must be this replica's secret.
    pub(crate) fn peer_report(&self, headers: &HeaderMap) -> (StatusCode, String) {
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !same_secret(presented.as_bytes(), self.inner.peers.token.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                "a replica report needs its token".into(),
            );
        }
        match serde_json::to_string(&self.local_report()) {
            Ok(json) => (StatusCode::OK, json),
            Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
        }
    }

    /// Asks one replica for its report, at its advertised address only.
    async fn fetch_report(&self, member: &Member) -> Result<Report, String> {
        let uri = format!("http://{}/", member.address);
        let token = HeaderValue::from_str(&format!("Bearer {}", member.token))
            .map_err(|e| e.to_string())?;
        let req = Request::get(uri)
            .header(HOST, REPORT_HOST)
            .header(AUTHORIZATION, token)
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = self
            .inner
            .peers
            .client
            .request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }

    /// The leader's step before each decision: asks every live member for its counts (all at
    /// once, each bounded by [`SCRAPE_TIMEOUT`]) and returns the others' load per Revision.
    pub async fn scrape_peers(&self) -> PeerTick<RevisionKey> {
        let members = self.inner.peers.live();
        let instances: Vec<(String, String)> = members
            .iter()
            .map(|(id, m)| (id.clone(), format!("{} {}", m.address, m.token)))
            .collect();
        self.inner
            .peers
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_members(
                self.inner.base.elapsed(),
                instances.iter().map(|(a, b)| (a.as_str(), b.as_str())),
            );
        let answers: Vec<(String, Result<Report, String>)> =
            futures::stream::iter(members.into_iter().map(|(id, m)| async move {
                let got = tokio::time::timeout(SCRAPE_TIMEOUT, self.fetch_report(&m))
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()));
                (id, got)
            }))
            .buffer_unordered(16)
            .collect()
            .await;
        let now = self.inner.base.elapsed();
        let mut view = self
            .inner
            .peers
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (id, answer) in answers {
            match answer {
                Ok(report) => view.record(&id, now, report.revisions.into_iter().map(counters)),
                Err(err) => tracing::debug!(replica = %id, %err, "no report from a replica"),
            }
        }
        let mut tick = view.tick(now);
        tick.unsure |= self.inner.peers.unknown();
        tick
    }
}

fn counters(r: RevisionReport) -> (RevisionKey, Counters) {
    (
        RevisionKey::new(r.namespace, r.name),
        Counters {
            in_flight: r.in_flight,
            area_us: r.area_us,
            started: r.started,
            idle_for: r.idle_for_us.map(Duration::from_micros),
            mark: r.mark,
        },
    )
}

/// Where and as whom this replica takes part.
#[derive(Clone)]
pub struct Membership {
    pub client: Client,
    /// Gantry's namespace (that of the leader-election Lease).
    pub namespace: String,
    /// The leader-election identity.
    pub identity: String,
    /// The serving address other replicas reach this one at.
    pub address: SocketAddr,
}

/// The Lease name of a replica: `gantry-serving-replica-<identity>`, made a valid name.
pub fn lease_name(identity: &str) -> String {
    let mut name: String = format!("gantry-serving-replica-{identity}")
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(253);
    name.trim_end_matches(['-', '.']).to_owned()
}

fn replica_lease(m: &Membership, token: &str) -> Lease {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    Lease {
        metadata: ObjectMeta {
            name: Some(lease_name(&m.identity)),
            namespace: Some(m.namespace.clone()),
            labels: Some(BTreeMap::from([(REPLICA_LABEL.into(), "true".into())])),
            annotations: Some(BTreeMap::from([
                (ADDRESS_ANNOTATION.into(), m.address.to_string()),
                (TOKEN_ANNOTATION.into(), token.into()),
            ])),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(m.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            renew_time: Some(now),
            ..Default::default()
        }),
    }
}

/// Keeps this replica's Lease renewed and the router's members current until `shutdown`; then
/// deletes the Lease, so the leader stops asking at once. The leader (`is_leader`) also deletes
/// Leases that expired long ago (replicas that were killed).
pub async fn run_membership(
    m: Membership,
    router: Router,
    is_leader: impl Fn() -> bool + Send + 'static,
    shutdown: impl std::future::Future<Output = ()>,
) {
    router.peers().set_identity(&m.identity);
    let _ = router.peers().joined.set(Instant::now());
    let api: Api<Lease> = Api::namespaced(m.client.clone(), &m.namespace);
    let name = lease_name(&m.identity);
    let publish = {
        let (api, lease) = (api.clone(), replica_lease(&m, router.peers().token()));
        let name = name.clone();
        async move {
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let mut lease = lease;
            loop {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
                }
                let wait = match api.patch(&name, &params, &Patch::Apply(&lease)).await {
                    Ok(_) => RENEW_EVERY,
                    Err(err) => {
                        tracing::warn!(lease = %name, %err, "renewing the replica Lease");
                        Duration::from_secs(1)
                    }
                };
                tokio::time::sleep(wait).await;
            }
        }
    };
    let watch = watch_members(api.clone(), router.clone(), is_leader);
    tokio::select! {
        _ = publish => {}
        () = watch => {}
        () = shutdown => {}
    }
    let deleted = tokio::time::timeout(
        Duration::from_secs(2),
        api.delete(&name, &DeleteParams::default()),
    )
    .await;
    if let Ok(Err(err)) = deleted {
        tracing::debug!(lease = %name, %err, "deleting the replica Lease");
    }
}

/// One replica Lease as this process observed it.
struct Seen {
    identity: String,
    member: Option<(SocketAddr, String)>,
    version: Option<String>,
    duration: Duration,
    /// When its latest change (a renewal) was seen.
    renewed: Instant,
}

fn seen(lease: &Lease, before: Option<&Seen>) -> Seen {
    let spec = lease.spec.clone().unwrap_or_default();
    let ann = lease.annotations();
    let member = ann
        .get(ADDRESS_ANNOTATION)
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .zip(ann.get(TOKEN_ANNOTATION).cloned());
    let version = lease.resource_version();
    let renewed = match before {
        Some(b) if b.version == version => b.renewed,
        _ => Instant::now(),
    };
    Seen {
        identity: spec.holder_identity.unwrap_or_default(),
        member,
        version,
        duration: spec
            .lease_duration_seconds
            .map_or(LEASE_DURATION, |s| Duration::from_secs(s.max(0) as u64)),
        renewed,
    }
}

async fn watch_members(api: Api<Lease>, router: Router, is_leader: impl Fn() -> bool) {
    let config = watcher::Config::default().labels(&format!("{REPLICA_LABEL}=true"));
    let mut events = watcher::watcher(api.clone(), config)
        .default_backoff()
        .boxed();
    let mut leases: HashMap<String, Seen> = HashMap::new();
    let mut fresh: Option<HashMap<String, Seen>> = None;
    let mut gc = tokio::time::interval(RENEW_EVERY);
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { return };
                match event {
                    Ok(Event::Apply(l)) => {
                        let s = seen(&l, leases.get(&l.name_any()));
                        leases.insert(l.name_any(), s);
                    }
                    Ok(Event::Delete(l)) => {
                        leases.remove(&l.name_any());
                    }
                    Ok(Event::Init) => fresh = Some(HashMap::new()),
                    Ok(Event::InitApply(l)) => {
                        let s = seen(&l, leases.get(&l.name_any()));
                        if let Some(f) = fresh.as_mut() {
                            f.insert(l.name_any(), s);
                        }
                    }
                    Ok(Event::InitDone) => leases = fresh.take().unwrap_or_default(),
                    Err(err) => tracing::warn!(%err, "watching replica Leases"),
                }
            }
            _ = gc.tick() => {
                if is_leader() {
                    collect_garbage(&api, &leases).await;
                }
            }
        }
        if fresh.is_none() {
            let members = leases
                .values()
                .filter_map(|s| {
                    let (address, token) = s.member.clone()?;
                    let expires = s.renewed + s.duration;
                    Some((
                        s.identity.clone(),
                        Member {
                            address,
                            token,
                            expires,
                        },
                    ))
                })
                .collect();
            router.peers().set_members(members);
        }
    }
}

/// Deletes replica Leases not renewed for three durations: their process is gone.
async fn collect_garbage(api: &Api<Lease>, leases: &HashMap<String, Seen>) {
    for (name, s) in leases {
        if s.renewed.elapsed() > s.duration * 3 {
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(lease = %name, "deleted the Lease of a replica that is gone")
                }
                Err(err) => {
                    tracing::debug!(lease = %name, %err, "deleting an expired replica Lease")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_valid_object_names() {
        assert_eq!(
            lease_name("gantry-7d9f-x2"),
            "gantry-serving-replica-gantry-7d9f-x2"
        );
        assert_eq!(lease_name("Host_1-42"), "gantry-serving-replica-host-1-42");
        assert!(lease_name(&"a".repeat(400)).len() <= 253);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
        assert_ne!(new_token(), new_token());
        assert_eq!(new_token().len(), 32);
    }

    use crate::metrics::RouterMetrics;
    use crate::table::RevisionConfig;
    use crate::{RouterSettings, ScaleReason, Scaler};
    use futures::future::BoxFuture;
    use gantry_core::serving::autoscale::Settings;

    /// Decisions are only inspected here, never applied.
    struct NoScaler;

    impl Scaler for NoScaler {
        fn scale(
            &self,
            _: &RevisionKey,
            _: u32,
            _: ScaleReason,
        ) -> BoxFuture<'static, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }
    }

    /// A router serving on a loopback port, with one Revision (idle after 100 ms) at one replica.
    async fn replica(identity: &str) -> (Router, SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let settings = RouterSettings {
            loopback_only: true,
            ..RouterSettings::default()
        };
        let router = Router::new(
            settings,
            std::sync::Arc::new(NoScaler),
            RouterMetrics::default(),
        );
        router.peers().set_identity(identity);
        let config = RevisionConfig {
            autoscale: Settings {
                stable_window: Duration::from_millis(50),
                scale_to_zero_grace: Duration::from_millis(50),
                ..Settings::default()
            },
            ..RevisionConfig::default()
        };
        router.set_revision(&key(), config);
        router.set_replicas(&key(), 1);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr, _) = crate::proxy::bind(router.clone(), "127.0.0.1:0".parse().unwrap(), async {
            let _ = rx.await;
        })
        .await
        .unwrap();
        (router, addr, tx)
    }

    fn key() -> RevisionKey {
        RevisionKey::new("team", "hello-00001")
    }

    fn member(address: SocketAddr, token: &str) -> Member {
        Member {
            address,
            token: token.into(),
            expires: Instant::now() + LEASE_DURATION,
        }
    }

    /// Two ticks a scale to zero needs (draining, then sleep), after the idle time has passed.
    async fn sleeps(leader: &Router) -> bool {
        tokio::time::sleep(Duration::from_millis(150)).await;
        for _ in 0..2 {
            let peers = leader.scrape_peers().await;
            if leader
                .autoscale_tick_with(&peers)
                .iter()
                .any(|d| d.reason == ScaleReason::Sleep)
            {
                return true;
            }
        }
        false
    }

    #[tokio::test]
    async fn the_leader_counts_a_request_in_flight_on_another_replica() {
        let (leader, _, _stop_a) = replica("a").await;
        let (standby, standby_addr, _stop_b) = replica("b").await;
        leader.peers().set_members(BTreeMap::from([
            (
                "a".to_string(),
                member("127.0.0.1:1".parse().unwrap(), "unused"),
            ),
            (
                "b".to_string(),
                member(standby_addr, standby.peers().token()),
            ),
        ]));
        // A request in flight on the standby only.
        let held = standby.revision(&key()).start();
        let peers = leader.scrape_peers().await;
        assert!(!peers.unsure);
        assert_eq!(peers.loads[&key()].in_flight, 1);
        assert!(
            !sleeps(&leader).await,
            "scaled to zero under the standby's request"
        );
        // It ends: the leader sees it finish and sleeps after the idle time.
        drop(held);
        assert!(sleeps(&leader).await);
        let report = leader.local_report();
        assert!(
            report.revisions.is_empty(),
            "the leader served nothing itself"
        );
        assert_eq!(report.peers.len(), 1, "itself is no peer: {report:?}");
        assert_eq!(report.peers[0].identity, "b");
        assert_eq!(report.peers[0].state, "reported");
        let g = leader.dial_guard();
        assert!(g.loopback.load(std::sync::atomic::Ordering::SeqCst) > 0);
        assert_eq!(g.refused.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_replica_that_cannot_be_asked_holds_scale_downs_until_dropped() {
        let (leader, _, _stop) = replica("a").await;
        let (_, standby_addr, _stop_b) = replica("b").await;
        // A wrong token is refused; an address off the machine is never dialled.
        leader.peers().set_members(BTreeMap::from([
            ("b".to_string(), member(standby_addr, "wrong")),
            (
                "c".to_string(),
                member("10.0.0.7:8090".parse().unwrap(), "t"),
            ),
        ]));
        let peers = leader.scrape_peers().await;
        assert!(peers.unsure && peers.loads.is_empty());
        assert!(!sleeps(&leader).await, "scaled down with replicas unheard");
        let g = leader.dial_guard();
        assert!(g.refused.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        assert_eq!(g.other.load(std::sync::atomic::Ordering::SeqCst), 0);
        // Their Leases lapse: no longer members, the leader decides alone.
        leader.peers().set_members(BTreeMap::new());
        assert!(sleeps(&leader).await);
    }

    #[tokio::test]
    async fn reports_need_the_token() {
        let (router, _, _stop) = replica("a").await;
        let mut headers = HeaderMap::new();
        assert_eq!(router.peer_report(&headers).0, StatusCode::UNAUTHORIZED);
        let bearer = format!("Bearer {}", router.peers().token());
        headers.insert(AUTHORIZATION, HeaderValue::from_str(&bearer).unwrap());
        let (status, body) = router.peer_report(&headers);
        assert_eq!(status, StatusCode::OK);
        let report: Report = serde_json::from_str(&body).unwrap();
        assert_eq!(report.identity, "a");
    }

    #[tokio::test]
    async fn a_leader_whose_lease_watch_has_not_listed_yet_holds_scale_downs() {
        let (leader, _, _stop) = replica("a").await;
        let _ = leader.peers().joined.set(Instant::now());
        assert!(leader.scrape_peers().await.unsure);
        leader.peers().set_members(BTreeMap::new());
        assert!(!leader.scrape_peers().await.unsure);
    }
}
