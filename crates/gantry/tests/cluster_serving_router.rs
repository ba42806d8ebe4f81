//! The serving data path through a real `gantry run` and the local control plane: a Knative
//! Service's Revision at zero is woken by a request (the router patches the Deployment's
//! `/scale`, the ReplicaSet controller makes a pod, kwok gives it a 127.244.x.y address), the
//! request is held and answered by a stand-in server bound to the pod's IP, and the Revision goes
//! back to zero when idle.
//!
//! Only the ksvc is written here: the serving controllers in the same `gantry run` make its
//! Revision, the Revision's Deployment at zero and the status the router routes by.
//! kwok runs no containers: a watcher in the test starts a stand-in HTTP server on each pod's
//! IP and port, as a kubelet would start the container. Every address is loopback; the router
//! runs with `--serving-loopback-only=true` and the test asserts it refused nothing.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::serving::{
    GRACE, IMAGE, Served, WINDOW, get, knative_service, kubelet, metric, routed, start_gantry,
};
use gantry_testkit::{install_crds, wait_for, with_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};

const REVISION: &str = "hello-00001";
const PORT: u16 = 8080;

async fn replicas(client: &Client, ns: &str) -> i32 {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(&format!("{REVISION}-deployment"))
        .await
        .unwrap();
    d.spec.and_then(|s| s.replicas).unwrap_or(-1)
}

async fn scale_to_zero(client: &Client, ns: &str) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({ "spec": { "replicas": 0 } });
    api.patch_scale(
        &format!("{REVISION}-deployment"),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "pods stayed after scaling to zero"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn requests_at_zero_wake_the_revision_through_gantry_run_and_it_sleeps_when_idle() {
    with_namespace("serving", |client, ns| async move {
        install_crds(&client).await;
        let served: Served = Arc::default();
        let kubelet = kubelet(
            client.clone(),
            &ns,
            PORT,
            served.clone(),
            Arc::new(true.into()),
        );
        let gantry = start_gantry(&ns);
        let host = knative_service(&client, &ns, PORT, 60).await;
        let http = reqwest::Client::new();
        routed(&http, &gantry).await;

        // 1 request at zero, 20 runs, each back at zero before the next.
        for i in 0..20 {
            assert_eq!(replicas(&client, &ns).await, 0);
            let (status, body) = get(&http, &gantry, &host, Some(&format!("cold-{i}"))).await;
            assert_eq!(status, 200, "run {i}: {body}");
            assert!(
                body.starts_with(&format!("{IMAGE} from 127.244.")),
                "{body}"
            );
            scale_to_zero(&client, &ns).await;
            // The router sees the Deployment at zero before the next run.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }

        // 100 concurrent requests at zero: none lost, each served exactly once.
        let mut tasks = Vec::new();
        for i in 0..100 {
            let (http, host) = (http.clone(), host.clone());
            let serving = gantry.serving;
            tasks.push(tokio::spawn(async move {
                let resp = http
                    .get(format!("http://{serving}/"))
                    .header("host", host)
                    .header("x-id", format!("burst-{i}"))
                    .send()
                    .await
                    .unwrap();
                resp.status().as_u16()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200);
        }
        {
            let served = served.lock().unwrap();
            for i in 0..20 {
                assert_eq!(served.get(&format!("cold-{i}")), Some(&1), "cold-{i}");
            }
            for i in 0..100 {
                assert_eq!(served.get(&format!("burst-{i}")), Some(&1), "burst-{i}");
            }
        }

        // Idle: back to zero within stable window (4 s) + grace (2 s) + 5 s, by the autoscaler.
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
            idle_since.elapsed() >= Duration::from_secs(5),
            "slept before the idle deadline"
        );

        assert!(metric(&gantry, "gantry_serving_wakes_total").await >= 21.0);
        assert!(metric(&gantry, "gantry_serving_sleeps_total").await >= 1.0);
        assert_eq!(
            metric(&gantry, "gantry_serving_dial_refused_total").await,
            0.0
        );
        assert!(metric(&gantry, "gantry_serving_cold_start_seconds_count").await > 0.0);

        // Restarted while asleep: the next request still wakes it.
        drop(gantry);
        let gantry = start_gantry(&ns);
        routed(&http, &gantry).await;
        assert_eq!(
            replicas(&client, &ns).await,
            0,
            "a restart leaves a sleeping revision asleep"
        );
        let (status, body) = get(&http, &gantry, &host, Some("after-restart")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            metric(&gantry, "gantry_serving_dial_refused_total").await,
            0.0
        );
        kubelet.abort();
    })
    .await;
}
