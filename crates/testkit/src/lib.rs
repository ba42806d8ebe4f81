//! Test support for tests that need a real Kubernetes API server.
//!
//! The server is the local control plane (`cargo xtask cluster up`, or started by
//! `cargo xtask test`) or any cluster named by `GANTRY_KUBECONFIG`. There is no fallback and no
//! skipping: a cluster test without a cluster fails loudly, saying how to get one.
//!
//! ```no_run
//! # async fn example() {
//! gantry_testkit::with_namespace("smoke", |client, ns| async move {
//!     // create objects in `ns` with `client` ...
//! })
//! .await;
//! # }
//! ```

pub mod flux;
pub mod git;
pub mod http;
pub mod postgres;
pub mod registry;

use std::fmt::Debug;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Resource};

/// Label put on every namespace a test creates, so leftovers can be found.
pub const TEST_LABEL: &str = "gantry.dev/test";

/// The kubeconfig the tests use: `GANTRY_KUBECONFIG`, else the local control plane's.
pub fn kubeconfig_path() -> PathBuf {
    match std::env::var_os("GANTRY_KUBECONFIG") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/gantry-cluster/admin.kubeconfig"),
    }
}

/// A client for the test cluster. Panics, saying what to do, when there is none.
pub async fn client() -> Client {
    connect(&kubeconfig_path()).await
}

/// A client for the cluster in `kubeconfig`, checked to answer. Panics when it cannot be had.
pub async fn connect(kubeconfig: &Path) -> Client {
    if !kubeconfig.exists() {
        panic!(
            "no Kubernetes control plane for the tests: {} does not exist.\n\
             Run the suite with `cargo xtask test` (it starts the local control plane), or start \
             one with `cargo xtask cluster up`, or set GANTRY_KUBECONFIG to an existing cluster.",
            kubeconfig.display()
        );
    }
    let config = async {
        let raw = Kubeconfig::read_from(kubeconfig)?;
        kube::Config::from_custom_kubeconfig(raw, &KubeConfigOptions::default()).await
    };
    let config = config
        .await
        .unwrap_or_else(|err| panic!("the kubeconfig {} is unusable: {err}", kubeconfig.display()));
    let server = config.cluster_url.clone();
    let client = Client::try_from(config)
        .unwrap_or_else(|err| panic!("no client for {server} ({}): {err}", kubeconfig.display()));
    let reachable = tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await;
    match reachable {
        Ok(Ok(_)) => client,
        Ok(Err(err)) => panic!(
            "the Kubernetes API server at {server} (from {}) is not reachable: {err}.\n\
             Is the local control plane running? `cargo xtask cluster status` tells.",
            kubeconfig.display()
        ),
        Err(_) => panic!(
            "the Kubernetes API server at {server} (from {}) did not answer within 10s",
            kubeconfig.display()
        ),
    }
}

/// A fresh, uniquely named namespace: `gt-<prefix>-<suffix>`.
pub async fn create_namespace(client: &Client, prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let unique = nanos ^ (std::process::id() << 8) ^ COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("gt-{prefix}-{:06x}", unique & 0xff_ffff);
    let mut ns = Namespace::default();
    ns.meta_mut().name = Some(name.clone());
    ns.meta_mut().labels = Some([(TEST_LABEL.to_string(), "true".to_string())].into());
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|err| panic!("creating test namespace {name}: {err}"));
    name
}

/// Deletes a namespace (and so everything in it); missing is fine.
///
/// Flux objects carry Gantry's finalizer; the controller that would remove it is usually gone by
/// the time a test cleans up, so the finalizers are dropped first, or the namespace would stay
/// Terminating forever.
pub async fn delete_namespace(client: &Client, name: &str) {
    release_flux_finalizers(client, name).await;
    let result = Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::background())
        .await;
    match result {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(err) => panic!("deleting test namespace {name}: {err}"),
    }
}

// Removes every finalizer from the Flux objects in `namespace` (kinds whose CRD is not
// installed are skipped).
async fn release_flux_finalizers(client: &Client, namespace: &str) {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
    for crd in gantry_api::crds() {
        let spec = &crd.spec;
        let Some(version) = spec.versions.iter().find(|v| v.storage) else {
            continue;
        };
        let gvk = GroupVersionKind::gvk(&spec.group, &version.name, &spec.names.kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, &spec.names.plural);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let Ok(list) = api.list(&ListParams::default()).await else {
            continue;
        };
        for obj in list {
            if obj
                .metadata
                .finalizers
                .as_ref()
                .is_none_or(|f| f.is_empty())
            {
                continue;
            }
            let patch = serde_json::json!({"metadata": {"finalizers": null}});
            let name = obj.metadata.name.clone().unwrap_or_default();
            // Gone already, or the CRD went away: either way nothing is left to release.
            let _ = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
        }
    }
}

/// Runs `body` with a client and a fresh namespace, and deletes the namespace afterwards, also
/// when `body` panics (the panic is then resumed, so the test still fails).
pub async fn with_namespace<F, Fut>(prefix: &str, body: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let client = client().await;
    let ns = create_namespace(&client, prefix).await;
    let outcome = AssertUnwindSafe(body(client.clone(), ns.clone()))
        .catch_unwind()
        .await;
    delete_namespace(&client, &ns).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Installs (server-side applies) every CRD Gantry serves and waits until each is Established.
pub async fn install_crds(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in gantry_api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(
            &name,
            &PatchParams::apply("gantry-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|err| panic!("applying CRD {name}: {err}"));
        wait_for(&crds, &name, Duration::from_secs(30), |crd| {
            crd.and_then(|c| c.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
        })
        .await;
    }
}

/// Polls `name` through `api` until `done` holds, or panics after `timeout` showing the last
/// state seen (`None`: the object did not exist).
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    mut done: impl FnMut(Option<&K>) -> bool,
) -> Option<K>
where
    K: Resource + Clone + Debug + serde::de::DeserializeOwned,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let current = api
            .get_opt(name)
            .await
            .unwrap_or_else(|err| panic!("reading {name}: {err}"));
        if done(current.as_ref()) {
            return current;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "{name} did not reach the expected state within {timeout:?}; last seen: {current:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    #[should_panic(expected = "no Kubernetes control plane for the tests")]
    async fn a_missing_kubeconfig_fails_loudly() {
        connect(Path::new("/nonexistent/gantry/admin.kubeconfig")).await;
    }

    #[tokio::test]
    #[should_panic(expected = "is not reachable")]
    async fn an_unreachable_server_fails_loudly() {
        let dir = std::env::temp_dir().join(format!("gantry-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kubeconfig");
        // Port 1 on loopback: nothing listens there, so the connection is refused at once.
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    \
             server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  \
             user:\n    token: x\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\n\
             current-context: c\n",
        )
        .unwrap();
        connect(&path).await;
    }
}
