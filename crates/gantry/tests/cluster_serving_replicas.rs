//! Two real `gantry run` replicas on the local control plane serving one Knative Service: every
//! replica serves the data path, and the leader scales from the counts every replica reports.
//!
//! - A long request held through the standby keeps the Revision awake past the stable window
//!   and grace although the leader sees no traffic itself; after it ends the Revision sleeps.
//! - With the Revision at zero and requests sent to both replicas, the leader is SIGKILLed after
//!   the wake patch but before the pod is ready: every request held on the standby is answered
//!   exactly once when the pod is ready, and the standby, leader now, later scales it to zero
//!   and deletes the dead replica's Lease.
//!
//! As in `cluster_serving_router.rs` (helpers in `common/serving.rs`): kwok runs no containers, so
//! a watcher in the test plays the kubelet and starts a stand-in HTTP server on each pod's
//! 127.244.x.y address. Every listener is loopback, both replicas run with
//! `--serving-loopback-only=true`, the replicas' advertised addresses are asserted loopback,
//! and neither refused a connection (the leader reaches the standby through the same guard).

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::serving::{
    GRACE, Gantry, IMAGE, Served, WINDOW, knative_service, kubelet, metric, replica, routed,
};
use gantry_router::peers::{ADDRESS_ANNOTATION, Report, TOKEN_ANNOTATION, lease_name};
use gantry_testkit::{install_crds, wait_for, with_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

const REVISION: &str = "hello-00001";
/// The container port: not 8080, so that this test's stand-ins do not collide with other
/// serving tests' (kwok gives every local control plane on a machine the same 127.244/16 range).
const PORT: u16 = 18_093;
/// The leader-election Lease `gantry run` uses by default.
const LEADER_LEASE: &str = "gantry-leader-election";

/// Waits until `identity` holds the leader-election Lease.
async fn leads(client: &Client, ns: &str, identity: &str, within: Duration) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    wait_for(&leases, LEADER_LEASE, within, |l| {
        l.and_then(|l| l.spec.as_ref()?.holder_identity.as_deref()) == Some(identity)
    })
    .await;
}

/// Waits for the replica Lease of `gantry` and checks it advertises its serving address, a
/// loopback one; returns its report token.
async fn replica_lease(client: &Client, ns: &str, gantry: &Gantry) -> String {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let lease = wait_for(
        &leases,
        &lease_name(&gantry.identity),
        Duration::from_secs(60),
        |l| l.is_some(),
    )
    .await
    .unwrap();
    let ann = lease.annotations();
    let address: SocketAddr = ann[ADDRESS_ANNOTATION].parse().unwrap();
    assert!(address.ip().is_loopback(), "advertised {address}");
    assert_eq!(address, gantry.serving);
    let token = ann[TOKEN_ANNOTATION].clone();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some(gantry.identity.as_str())
    );
    token
}

/// A replica's own report, as the leader collects it.
async fn report(http: &reqwest::Client, gantry: &Gantry, token: &str) -> Report {
    let resp = http
        .get(format!("http://{}/", gantry.serving))
        .header("host", gantry_router::peers::REPORT_HOST)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn replicas(client: &Client, ns: &str) -> i32 {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(&format!("{REVISION}-deployment"))
        .await
        .unwrap();
    d.spec.and_then(|s| s.replicas).unwrap_or(-1)
}

fn send(
    http: &reqwest::Client,
    gantry: &Gantry,
    host: &str,
    id: String,
    sleep_ms: u64,
) -> tokio::task::JoinHandle<Result<(u16, String), String>> {
    let (http, host, serving) = (http.clone(), host.to_string(), gantry.serving);
    tokio::spawn(async move {
        let resp = http
            .get(format!("http://{serving}/"))
            .header("host", host)
            .header("x-id", id)
            .header("x-sleep-ms", sleep_ms.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.unwrap_or_default()))
    })
}

/// Two replicas, `a` leading and `b` standing by, with the ksvc at zero and both routing it.
async fn two_replicas(client: &Client, ns: &str) -> (Gantry, Gantry, String) {
    let a = replica(ns, "gantry-a");
    leads(client, ns, "gantry-a", Duration::from_secs(60)).await;
    let b = replica(ns, "gantry-b");
    let host = knative_service(client, ns, PORT, 120).await;
    let http = reqwest::Client::new();
    routed(&http, &a).await;
    routed(&http, &b).await;
    (a, b, host)
}

#[tokio::test]
async fn a_long_request_through_the_standby_keeps_the_revision_awake_for_the_leader() {
    with_namespace("serving-ha", |client, ns| async move {
        install_crds(&client).await;
        let served: Served = Arc::default();
        let kubelet = kubelet(client.clone(), &ns, PORT, served.clone(), Arc::new(true.into()));
        let (a, b, host) = two_replicas(&client, &ns).await;
        let token_a = replica_lease(&client, &ns, &a).await;
        replica_lease(&client, &ns, &b).await;
        let http = reqwest::Client::new();

        // One request through the standby lasting 3 × (window + grace): it wakes the Revision
        // and stays in flight there; the leader sees no request at all.
        let lasting = (WINDOW + GRACE) * 3;
        let started = Instant::now();
        let long = send(&http, &b, &host, "long".into(), lasting.as_millis() as u64);
        let (mut saw_report, mut woke) = (false, false);
        while !long.is_finished() {
            if replicas(&client, &ns).await > 0 {
                woke = true;
                let r = report(&http, &a, &token_a).await;
                assert!(
                    r.revisions.iter().all(|rev| rev.name != REVISION),
                    "the leader itself served nothing: {r:?}"
                );
                saw_report |= r.peers.iter().any(|p| {
                    p.identity == "gantry-b"
                        && p.state == "reported"
                        && p.address == b.serving.to_string()
                });
            } else {
                // Once awake, it stays awake for as long as the request lasts.
                assert!(
                    !woke,
                    "the leader scaled the Revision to zero under a request in flight on the standby"
                );
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the Revision never woke"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (status, body) = long.await.unwrap().unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(started.elapsed() >= lasting);
        assert!(saw_report, "the leader never heard from the standby");
        assert_eq!(served.lock().unwrap().get("long"), Some(&1));

        // Idle now: the leader scales it to zero, within window + grace + 5 s.
        let idle_since = Instant::now();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        wait_for(
            &deployments,
            &format!("{REVISION}-deployment"),
            WINDOW + GRACE + Duration::from_secs(5),
            |d| d.and_then(|d| d.spec.as_ref()?.replicas) == Some(0),
        )
        .await;
        assert!(
            idle_since.elapsed() >= WINDOW,
            "slept before the idle deadline"
        );
        assert_eq!(metric(&a, "gantry_serving_sleeps_total").await, 1.0);
        assert_eq!(metric(&a, "gantry_serving_wakes_total").await, 0.0);
        assert_eq!(metric(&b, "gantry_serving_sleeps_total").await, 0.0);
        for g in [&a, &b] {
            assert_eq!(metric(g, "gantry_serving_dial_refused_total").await, 0.0);
        }

        // A replica that stops (SIGTERM) deletes its Lease: the leader stops asking at once.
        let stopped = Command::new("sh") // the shell's builtin `kill` (procps' need not be installed)
        .args(["-c", &format!("kill -TERM {}", b.child.id())])
            .status()
            .unwrap();
        assert!(stopped.success());
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        wait_for(
            &leases,
            &lease_name("gantry-b"),
            Duration::from_secs(30),
            |l| l.is_none(),
        )
        .await;
        kubelet.abort();
    })
    .await;
}

#[tokio::test]
async fn the_standby_serves_its_held_requests_when_the_leader_dies_mid_wake_then_leads() {
    with_namespace("serving-ha", |client, ns| async move {
        install_crds(&client).await;
        let served: Served = Arc::default();
        let open = Arc::new(AtomicBool::new(false));
        let kubelet = kubelet(client.clone(), &ns, PORT, served.clone(), open.clone());
        let (mut a, b, host) = two_replicas(&client, &ns).await;
        replica_lease(&client, &ns, &b).await;
        let http = reqwest::Client::new();

        // Requests at zero to both replicas; both wake it (one patch wins).
        let on_a: Vec<_> = (0..10)
            .map(|i| send(&http, &a, &host, format!("a-{i}"), 0))
            .collect();
        let on_b: Vec<_> = (0..10)
            .map(|i| send(&http, &b, &host, format!("b-{i}"), 0))
            .collect();
        // The wake patch is in and its pod exists, but no stand-in serves it: not ready.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let with_ip = pods
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .any(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some());
            if replicas(&client, &ns).await >= 1 && with_ip {
                break;
            }
            assert!(Instant::now() < deadline, "the Revision was never woken");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while metric(&b, "gantry_serving_queue_depth").await < 10.0 {
            assert!(
                Instant::now() < deadline,
                "the standby does not hold its requests"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(served.lock().unwrap().is_empty());

        // The leader dies (SIGKILL); then the pod becomes ready.
        a.child.kill().unwrap();
        a.child.wait().unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        open.store(true, Ordering::SeqCst);

        for (i, t) in on_b.into_iter().enumerate() {
            let (status, body) = t.await.unwrap().unwrap_or_else(|e| panic!("b-{i}: {e}"));
            assert_eq!(status, 200, "b-{i}: {body}");
            assert!(
                body.starts_with(&format!("{IMAGE} from 127.244.")),
                "{body}"
            );
        }
        for t in on_a {
            // Their connection died with the leader: never answered, never forwarded.
            assert!(t.await.unwrap().is_err());
        }
        {
            let served = served.lock().unwrap();
            for i in 0..10 {
                assert_eq!(served.get(&format!("b-{i}")), Some(&1), "b-{i}");
                assert_eq!(served.get(&format!("a-{i}")), None, "a-{i}");
            }
        }
        let idle_since = Instant::now();

        // The standby takes the lead when the dead leader's Lease expires, then scales the
        // idle Revision to zero itself (once the dead replica's Lease has lapsed too).
        leads(&client, &ns, "gantry-b", Duration::from_secs(60)).await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        wait_for(
            &deployments,
            &format!("{REVISION}-deployment"),
            Duration::from_secs(60),
            |d| d.and_then(|d| d.spec.as_ref()?.replicas) == Some(0),
        )
        .await;
        assert!(
            idle_since.elapsed() >= WINDOW,
            "slept before the idle deadline"
        );
        assert_eq!(metric(&b, "gantry_serving_sleeps_total").await, 1.0);
        assert_eq!(metric(&b, "gantry_serving_dial_refused_total").await, 0.0);

        // The new leader deletes the killed replica's Lease once it has not been renewed for
        // three Lease durations (45 s).
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        wait_for(
            &leases,
            &lease_name("gantry-a"),
            Duration::from_secs(90),
            |l| l.is_none(),
        )
        .await;
        kubelet.abort();
    })
    .await;
}
