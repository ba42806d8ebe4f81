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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_api::serving::v1::Service;
use gantry_testkit::git::free_port;
use gantry_testkit::{install_crds, wait_for, with_namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

const REVISION: &str = "hello-00001";
const PORT: u16 = 8080;

struct Gantry {
    child: Child,
    serving: SocketAddr,
    metrics: String,
    _storage: tempfile::TempDir,
}

impl Drop for Gantry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gantry(namespace: &str) -> Gantry {
    let storage = tempfile::tempdir().unwrap();
    let serving: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics_port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "run",
            "--watch-namespace",
            namespace,
            "--leader-elect=false",
        ])
        .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
        .arg(format!("--health-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--receiver-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--serving-addr={serving}"))
        .args(["--uptime-addr=127.0.0.1:0", "--storage-addr=127.0.0.1:0"])
        .arg("--serving-domain=example.com")
        .args(["--serving-loopback-only=true", "--stable-window=4s"])
        .args(["--scale-to-zero-grace-period=2s", "--autoscaler-tick=200ms"])
        .arg("--storage-path")
        .arg(storage.path())
        .env("KUBECONFIG", gantry_testkit::kubeconfig_path())
        .env("GANTRY_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("starting gantry run");
    Gantry {
        child,
        serving,
        metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
        _storage: storage,
    }
}

/// What the stand-ins saw: request id → times served.
type Served = Arc<Mutex<HashMap<String, u32>>>;

/// Plays the kubelet: a stand-in server on every pod IP of the namespace, stopped with its pod.
fn kubelet(client: Client, ns: &str, served: Served) -> tokio::task::JoinHandle<()> {
    let pods: Api<Pod> = Api::namespaced(client, ns);
    tokio::spawn(async move {
        let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            let list = pods
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            let live: Vec<(String, String)> = list
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| Some((p.name_any(), p.status.as_ref()?.pod_ip.clone()?)))
                .collect();
            for (name, ip) in &live {
                if running.contains_key(name) {
                    continue;
                }
                let ip: std::net::IpAddr = ip.parse().unwrap();
                assert!(
                    ip.is_loopback(),
                    "kwok gave pod {name} the address {ip}, off the machine"
                );
                let listener = tokio::net::TcpListener::bind((ip, PORT)).await.unwrap();
                let served = served.clone();
                let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
                    let served = served.clone();
                    async move {
                        if let Some(id) = headers.get("x-id").and_then(|v| v.to_str().ok()) {
                            *served.lock().unwrap().entry(id.to_string()).or_default() += 1;
                        }
                        format!("hello from {ip}")
                    }
                });
                running.insert(
                    name.clone(),
                    tokio::spawn(async move {
                        let _ = axum::serve(listener, app).await;
                    }),
                );
            }
            running.retain(|name, task| {
                let keep = live.iter().any(|(n, _)| n == name);
                if !keep {
                    task.abort();
                }
                keep
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// A ksvc at zero (`initial-scale: "0"`) as a user writes it; the serving controllers in the
/// same `gantry run` make its Revision `hello-00001`, the Revision's Deployment at zero and the
/// status that routes 100 % to it. Returns the ksvc's host once its status says so.
async fn knative_service(client: &Client, ns: &str) -> String {
    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": { "name": "hello", "namespace": ns },
        "spec": { "template": {
            "metadata": { "annotations": { "autoscaling.knative.dev/initial-scale": "0" } },
            "spec": {
                "timeoutSeconds": 60,
                "containers": [{
                    "image": "example.invalid/hello:1",
                    "ports": [{ "containerPort": PORT }],
                }],
            },
        }},
    }))
    .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let host = format!("hello.{ns}.example.com");
    let url = format!("http://{host}");
    wait_for(
        &services,
        "hello",
        Duration::from_secs(60),
        |svc: Option<&Service>| {
            let Some(status) = svc.and_then(|s| s.status.as_ref()) else {
                return false;
            };
            status.url.as_deref() == Some(url.as_str())
                && status
                    .traffic
                    .iter()
                    .any(|t| t.revision_name.as_deref() == Some(REVISION))
        },
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for(
        &deployments,
        &format!("{REVISION}-deployment"),
        Duration::from_secs(60),
        |d: Option<&Deployment>| d.and_then(|d| d.spec.as_ref()?.replicas) == Some(0),
    )
    .await;
    host
}

async fn get(http: &reqwest::Client, gantry: &Gantry, host: &str, id: &str) -> (u16, String) {
    let resp = http
        .get(format!("http://{}/", gantry.serving))
        .header("host", host)
        .header("x-id", id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("request {id}: {e}"));
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

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

async fn metric(gantry: &Gantry, name: &str) -> f64 {
    let text = reqwest::get(&gantry.metrics)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the router has the route (its watch has seen the ksvc).
async fn routed(http: &reqwest::Client, gantry: &Gantry, host: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = http
            .get(format!("http://{}/", gantry.serving))
            .header("host", "nobody.invalid")
            .send()
            .await;
        if resp.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the router never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An unknown host is 404; ours is routed once the watches have caught up. Nothing is sent
    // to the Revision here: a routed request would wake it, which the caller does on purpose.
    let _ = host;
    tokio::time::sleep(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn requests_at_zero_wake_the_revision_through_gantry_run_and_it_sleeps_when_idle() {
    with_namespace("serving", |client, ns| async move {
        install_crds(&client).await;
        let served: Served = Arc::default();
        let kubelet = kubelet(client.clone(), &ns, served.clone());
        let gantry = start_gantry(&ns);
        let host = knative_service(&client, &ns).await;
        let http = reqwest::Client::new();
        routed(&http, &gantry, &host).await;

        // 1 request at zero, 20 runs, each back at zero before the next.
        for i in 0..20 {
            assert_eq!(replicas(&client, &ns).await, 0);
            let (status, body) = get(&http, &gantry, &host, &format!("cold-{i}")).await;
            assert_eq!(status, 200, "run {i}: {body}");
            assert!(body.starts_with("hello from 127.244."), "{body}");
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
            Duration::from_secs(4 + 2 + 5),
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
        routed(&http, &gantry, &host).await;
        assert_eq!(
            replicas(&client, &ns).await,
            0,
            "a restart leaves a sleeping revision asleep"
        );
        let (status, body) = get(&http, &gantry, &host, "after-restart").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            metric(&gantry, "gantry_serving_dial_refused_total").await,
            0.0
        );
        kubelet.abort();
    })
    .await;
}
