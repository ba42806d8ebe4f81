//! The pieces every serving test needs: a real `gantry run` with every listener on loopback and
//! short autoscaling windows, a stand-in kubelet (kwok runs no containers, so the test starts an
//! HTTP server on each pod's 127.244.x.y address as a kubelet would start the container), a
//! ksvc at zero, and reads of the router's metrics.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_api::serving::v1::Service;
use gantry_testkit::git::free_port;
use gantry_testkit::wait_for;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};

/// `--stable-window` and `--scale-to-zero-grace-period` of every `gantry run` started here.
pub const WINDOW: Duration = Duration::from_secs(4);
pub const GRACE: Duration = Duration::from_secs(2);

pub struct Gantry {
    pub child: Child,
    pub identity: String,
    pub serving: SocketAddr,
    pub metrics: String,
    _storage: tempfile::TempDir,
}

impl Drop for Gantry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `gantry run` watching `namespace`, alone (no leader election).
pub fn start_gantry(namespace: &str) -> Gantry {
    spawn(namespace, None)
}

/// A `gantry run` replica named `identity` taking part in leader election through a Lease in
/// `namespace`; it advertises its serving address (no `POD_IP` here).
pub fn replica(namespace: &str, identity: &str) -> Gantry {
    spawn(namespace, Some(identity))
}

fn spawn(namespace: &str, identity: Option<&str>) -> Gantry {
    let storage = tempfile::tempdir().unwrap();
    let serving: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics_port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_gantry"));
    command.args(["run", "--watch-namespace", namespace]);
    match identity {
        Some(identity) => command
            .arg("--leader-elect=true")
            .arg(format!("--leader-election-namespace={namespace}"))
            .env("POD_NAME", identity),
        None => command.arg("--leader-elect=false"),
    };
    let child = command
        .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
        .arg(format!("--health-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--receiver-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--serving-addr={serving}"))
        .args(["--uptime-addr=127.0.0.1:0", "--storage-addr=127.0.0.1:0"])
        .arg("--serving-domain=example.com")
        .arg("--serving-loopback-only=true")
        .arg(format!("--stable-window={}s", WINDOW.as_secs()))
        .arg(format!("--scale-to-zero-grace-period={}s", GRACE.as_secs()))
        .arg("--autoscaler-tick=200ms")
        .arg("--storage-path")
        .arg(storage.path())
        .env("KUBECONFIG", gantry_testkit::kubeconfig_path())
        .env_remove("POD_IP")
        .env(
            "GANTRY_LOG",
            std::env::var("GANTRY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .spawn()
        .expect("starting gantry run");
    Gantry {
        child,
        identity: identity.unwrap_or_default().into(),
        serving,
        metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
        _storage: storage,
    }
}

/// What the stand-ins saw: request id (`x-id`) → times served.
pub type Served = Arc<Mutex<HashMap<String, u32>>>;

/// Plays the kubelet: a stand-in server on every pod IP of the namespace, on `port`, once `open`
/// is set (until then pods exist but never become ready), stopped with its pod. It answers
/// `<image> from <pod IP>`, so a response says which Revision served it, counts requests by their
/// `x-id` in `served`, and answers a request with `x-sleep-ms` that much later.
pub fn kubelet(
    client: Client,
    ns: &str,
    port: u16,
    served: Served,
    open: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let pods: Api<Pod> = Api::namespaced(client, ns);
    tokio::spawn(async move {
        let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            let list = pods
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            let live: Vec<(String, String, String)> = list
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| {
                    let image = p.spec.as_ref()?.containers.first()?.image.clone()?;
                    Some((p.name_any(), p.status.as_ref()?.pod_ip.clone()?, image))
                })
                .collect();
            for (name, ip, image) in &live {
                if running.contains_key(name) || !open.load(Ordering::SeqCst) {
                    continue;
                }
                let ip: IpAddr = ip.parse().unwrap();
                assert!(
                    ip.is_loopback(),
                    "kwok gave pod {name} the address {ip}, off the machine"
                );
                let listener = tokio::net::TcpListener::bind((ip, port))
                    .await
                    .unwrap_or_else(|e| {
                        panic!("binding the stand-in of {name} to {ip}:{port}: {e}")
                    });
                let served = served.clone();
                let answer = format!("{image} from {ip}");
                let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
                    let (served, answer) = (served.clone(), answer.clone());
                    async move {
                        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
                        if let Some(id) = header("x-id") {
                            *served.lock().unwrap().entry(id.to_string()).or_default() += 1;
                        }
                        if let Some(ms) = header("x-sleep-ms").and_then(|v| v.parse().ok()) {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        answer
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
                let keep = live.iter().any(|(n, _, _)| n == name);
                if !keep {
                    task.abort();
                }
                keep
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// The image of the ksvc `knative_service` creates; stand-ins answer `IMAGE from <pod IP>`.
pub const IMAGE: &str = "example.invalid/hello:1";

/// A ksvc `hello` at zero (`initial-scale: "0"`) as a user writes it, its container on `port`;
/// the serving controllers make its Revision `hello-00001`, the Revision's Deployment at zero and
/// the status that routes 100 % to it. Returns the ksvc's host once its status says so.
pub async fn knative_service(client: &Client, ns: &str, port: u16, timeout_seconds: u32) -> String {
    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": { "name": "hello", "namespace": ns },
        "spec": { "template": {
            "metadata": { "annotations": { "autoscaling.knative.dev/initial-scale": "0" } },
            "spec": {
                "timeoutSeconds": timeout_seconds,
                "containers": [{ "image": IMAGE, "ports": [{ "containerPort": port }] }],
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
    wait_for(&services, "hello", Duration::from_secs(60), |svc| {
        let Some(status) = svc.and_then(|s| s.status.as_ref()) else {
            return false;
        };
        status.url.as_deref() == Some(url.as_str())
            && status
                .traffic
                .iter()
                .any(|t| t.revision_name.as_deref() == Some("hello-00001"))
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for(
        &deployments,
        "hello-00001-deployment",
        Duration::from_secs(60),
        |d| d.and_then(|d| d.spec.as_ref()?.replicas) == Some(0),
    )
    .await;
    host
}

/// GET `/` through the router with `host` (and `x-id` when given): status and body.
pub async fn get(
    http: &reqwest::Client,
    gantry: &Gantry,
    host: &str,
    id: Option<&str>,
) -> (u16, String) {
    let mut request = http
        .get(format!("http://{}/", gantry.serving))
        .header("host", host);
    if let Some(id) = id {
        request = request.header("x-id", id);
    }
    let resp = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("request to {host} ({id:?}): {e}"));
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

/// Waits until the router answers (an unknown host is 404) and its watches have caught up.
/// Nothing is sent to a Revision: a routed request would wake it.
pub async fn routed(http: &reqwest::Client, gantry: &Gantry) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while http
        .get(format!("http://{}/", gantry.serving))
        .header("host", "nobody.invalid")
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the router never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// The sum of every series of the metric family `name` on `gantry`'s metrics endpoint.
pub async fn metric(gantry: &Gantry, name: &str) -> f64 {
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
