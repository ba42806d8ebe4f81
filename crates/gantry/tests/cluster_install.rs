//! `gantry install` against a real API server (needs the test cluster: `cargo xtask test`).
//! Everything it prints must be accepted as is, the Deployment must roll out, and the RBAC it
//! grants is checked by acting as Gantry's ServiceAccount (a real token from the TokenRequest API):
//! what the controllers need is allowed, the rest is really refused (403).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use gantry_api::kustomize::v1::{CrossNamespaceSourceReference, Kustomization, KustomizationSpec};
use gantry_api::source::v1::{GitRepository, GitRepositoryRef, GitRepositorySpec};
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo, free_port};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{AuthInfo, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::{Client, discovery};

const WAIT: Duration = Duration::from_secs(60);

/// What one `gantry install` put into the cluster.
struct Installed {
    namespace: String,
    applied: Vec<(String, String)>,
    /// The cluster-scoped objects carry this suffix, so tests running at once (and a real
    /// install in `gantry-system`) do not overwrite each other's bindings.
    suffix: String,
}

/// Runs `gantry install --namespace <fresh> --image ... <extra>` and applies every document
/// server-side as the admin.
async fn install(client: &Client, prefix: &str, extra: &[&str]) -> Installed {
    let unique = format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            & 0xffff
    );
    let namespace = format!("gt-{prefix}-{unique}");
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "install",
            "--namespace",
            &namespace,
            "--image",
            "registry.invalid/gantry:test",
        ])
        .args(extra)
        .output()
        .expect("running gantry install");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(std::str::from_utf8(&out.stdout).unwrap()).unwrap();

    let mut applied = Vec::new();
    for doc in &docs {
        let mut object: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
        let types = object.types.clone().expect("apiVersion and kind");
        let gvk = GroupVersionKind::try_from(&types).unwrap();
        if gvk.kind == "ClusterRole" || gvk.kind == "ClusterRoleBinding" {
            let name = object.metadata.name.as_mut().unwrap();
            name.push_str(&format!("-{namespace}"));
            if let Some(role) = object.data.pointer_mut("/roleRef/name")
                && role.as_str() == Some("gantry")
            {
                *role = format!("gantry-{namespace}").into();
            }
        }
        let (resource, caps) = discovery::pinned_kind(client, &gvk).await.unwrap();
        let api: Api<DynamicObject> = match object.metadata.namespace.as_deref() {
            Some(ns) if caps.scope == discovery::Scope::Namespaced => {
                Api::namespaced_with(client.clone(), ns, &resource)
            }
            _ => Api::all_with(client.clone(), &resource),
        };
        let name = object.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply("gantry-tests").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|err| panic!("the API server refused {} {name}: {err}", gvk.kind));
        applied.push((gvk.kind, name));
        // The namespace must exist before anything is created in it.
        if applied.last().unwrap().0 == "Namespace" {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Installed {
        suffix: format!("-{namespace}"),
        namespace,
        applied,
    }
}

impl Installed {
    fn has(&self, kind: &str, name: &str) -> bool {
        self.applied.iter().any(|(k, n)| k == kind && n == name)
    }

    /// Deletes the namespace and the cluster-scoped objects; the CRDs stay (other tests share them).
    async fn uninstall(self, client: &Client) {
        let dp = DeleteParams::background();
        for (kind, name) in &self.applied {
            let _ = match kind.as_str() {
                "ClusterRole" => Api::<ClusterRole>::all(client.clone())
                    .delete(name, &dp)
                    .await
                    .map(|_| ()),
                "ClusterRoleBinding" => Api::<ClusterRoleBinding>::all(client.clone())
                    .delete(name, &dp)
                    .await
                    .map(|_| ()),
                _ => Ok(()),
            };
        }
        let _ = Api::<Namespace>::all(client.clone())
            .delete(&self.namespace, &dp)
            .await;
    }
}

/// A kubeconfig (and client) authenticating as ServiceAccount `namespace/name` with a real,
/// short-lived token: exactly what the pod would present.
async fn service_account_kubeconfig(
    admin: &Client,
    namespace: &str,
    name: &str,
    dir: &std::path::Path,
) -> (Client, PathBuf) {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|err| panic!("a token for {namespace}/{name}: {err}"))
        .status
        .and_then(|s| s.token)
        .expect("a token in the TokenRequest status");
    // The admin's kubeconfig (server, CA), with the account's token instead of the admin's
    // client certificate.
    let mut kubeconfig = Kubeconfig::read_from(gantry_testkit::kubeconfig_path()).unwrap();
    for user in &mut kubeconfig.auth_infos {
        user.auth_info = Some(AuthInfo {
            token: Some(token.clone().into()),
            ..Default::default()
        });
    }
    let path = dir.join(format!("{name}.kubeconfig"));
    // JSON is YAML: any kubeconfig reader takes it.
    std::fs::write(&path, serde_json::to_string(&kubeconfig).unwrap()).unwrap();
    let client = gantry_testkit::connect(&path).await;
    (client, path)
}

/// Whether the client's user may do `verb` on `group/resource[/subresource]` (SelfSubjectAccessReview).
async fn allowed(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    ns: Option<&str>,
) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_string())),
        None => (resource, None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                namespace: ns.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .expect("review status")
        .allowed
}

fn forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what} must be refused with 403, got {other:?}"),
    }
}

#[tokio::test]
async fn installs_into_a_real_cluster_and_the_deployment_rolls_out() {
    let client = gantry_testkit::client().await;
    let installed = install(&client, "install", &[]).await;
    let namespace = installed.namespace.clone();
    let kinds: Vec<&str> = installed.applied.iter().map(|(k, _)| k.as_str()).collect();
    for kind in [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
    ] {
        assert!(
            kinds.contains(&kind),
            "gantry install prints a {kind}: {kinds:?}"
        );
    }

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    gantry_testkit::wait_for(&deployments, "gantry", WAIT, |d| {
        d.and_then(|d| d.status.as_ref())
            .is_some_and(|s| s.available_replicas.unwrap_or(0) >= 1)
    })
    .await;
    let deployment = deployments.get("gantry").await.unwrap();
    let container = &deployment.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("registry.invalid/gantry:test")
    );
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    assert!(
        sa.get_opt("gantry").await.unwrap().is_some(),
        "the Deployment's ServiceAccount exists"
    );

    // Flux's default: the reconciler may apply anything, anywhere.
    let dir = tempfile::tempdir().unwrap();
    let (gantry, _) = service_account_kubeconfig(&client, &namespace, "gantry", dir.path()).await;
    assert!(allowed(&gantry, "create", "apps", "deployments", Some("default")).await);
    assert!(
        allowed(
            &gantry,
            "create",
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            None
        )
        .await
    );
    installed.uninstall(&client).await;
}

/// Everything the controllers call (the `Api` uses in crates/), independently of how install.rs
/// spells the rules: (verb, group, resource, in a namespace).
const NEEDED: &[(&str, &str, &str, bool)] = &[
    ("watch", "uptime.gantry.dev", "monitors", false),
    ("patch", "uptime.gantry.dev", "monitors/status", true),
    ("update", "uptime.gantry.dev", "monitors/finalizers", true),
    (
        "watch",
        "source.toolkit.fluxcd.io",
        "ocirepositories",
        false,
    ),
    ("list", "source.toolkit.fluxcd.io", "ocirepositories", false),
    ("get", "source.toolkit.fluxcd.io", "ocirepositories", true),
    ("patch", "source.toolkit.fluxcd.io", "ocirepositories", true),
    (
        "patch",
        "source.toolkit.fluxcd.io",
        "ocirepositories/status",
        true,
    ),
    (
        "update",
        "source.toolkit.fluxcd.io",
        "ocirepositories/finalizers",
        true,
    ),
    (
        "watch",
        "source.toolkit.fluxcd.io",
        "gitrepositories",
        false,
    ),
    ("list", "source.toolkit.fluxcd.io", "gitrepositories", false),
    ("get", "source.toolkit.fluxcd.io", "gitrepositories", true),
    ("patch", "source.toolkit.fluxcd.io", "gitrepositories", true),
    (
        "patch",
        "source.toolkit.fluxcd.io",
        "gitrepositories/status",
        true,
    ),
    (
        "update",
        "source.toolkit.fluxcd.io",
        "gitrepositories/finalizers",
        true,
    ),
    (
        "watch",
        "kustomize.toolkit.fluxcd.io",
        "kustomizations",
        false,
    ),
    ("get", "kustomize.toolkit.fluxcd.io", "kustomizations", true),
    (
        "patch",
        "kustomize.toolkit.fluxcd.io",
        "kustomizations",
        true,
    ),
    (
        "patch",
        "kustomize.toolkit.fluxcd.io",
        "kustomizations/status",
        true,
    ),
    (
        "update",
        "kustomize.toolkit.fluxcd.io",
        "kustomizations/finalizers",
        true,
    ),
    (
        "watch",
        "image.toolkit.fluxcd.io",
        "imagerepositories",
        false,
    ),
    (
        "patch",
        "image.toolkit.fluxcd.io",
        "imagerepositories/status",
        true,
    ),
    ("watch", "image.toolkit.fluxcd.io", "imagepolicies", false),
    ("list", "image.toolkit.fluxcd.io", "imagepolicies", true),
    (
        "patch",
        "image.toolkit.fluxcd.io",
        "imagepolicies/status",
        true,
    ),
    (
        "watch",
        "image.toolkit.fluxcd.io",
        "imageupdateautomations",
        false,
    ),
    (
        "patch",
        "image.toolkit.fluxcd.io",
        "imageupdateautomations/status",
        true,
    ),
    (
        "watch",
        "notification.toolkit.fluxcd.io",
        "receivers",
        false,
    ),
    (
        "patch",
        "notification.toolkit.fluxcd.io",
        "receivers/status",
        true,
    ),
    ("watch", "notification.toolkit.fluxcd.io", "alerts", false),
    (
        "watch",
        "notification.toolkit.fluxcd.io",
        "providers",
        false,
    ),
    // A Receiver annotates the objects it names, served by Gantry or not.
    ("patch", "helm.toolkit.fluxcd.io", "helmreleases", true),
    ("patch", "source.toolkit.fluxcd.io", "ocirepositories", true),
    ("get", "", "secrets", true),
    ("watch", "", "secrets", true),
    ("get", "", "configmaps", true),
    ("get", "", "namespaces", false),
    ("impersonate", "", "serviceaccounts", true),
    ("create", "events.k8s.io", "events", true),
    ("patch", "events.k8s.io", "events", true),
    // Knative Serving.
    ("watch", "serving.knative.dev", "services", false),
    ("patch", "serving.knative.dev", "services/status", true),
    ("watch", "serving.knative.dev", "revisions", false),
    ("create", "serving.knative.dev", "revisions", true),
    ("patch", "serving.knative.dev", "revisions", true),
    ("delete", "serving.knative.dev", "revisions", true),
    ("patch", "serving.knative.dev", "revisions/status", true),
    ("watch", "apps", "deployments", false),
    ("create", "apps", "deployments", true),
    ("patch", "apps", "deployments/scale", true),
    ("watch", "", "pods", false),
    ("watch", "discovery.k8s.io", "endpointslices", false),
    ("patch", "", "services", true),
    ("create", "", "services", true),
];

#[tokio::test]
async fn multi_tenant_install_grants_the_controllers_their_needs_and_refuses_the_rest() {
    let client = gantry_testkit::client().await;
    let installed = install(&client, "lockdown", &["--multi-tenant"]).await;
    let ns = installed.namespace.clone();
    assert!(installed.has("ServiceAccount", "gantry-reconciler"));
    let dir = tempfile::tempdir().unwrap();
    let (gantry, _) = service_account_kubeconfig(&client, &ns, "gantry", dir.path()).await;

    let tenant = gantry_testkit::create_namespace(&client, "tenant").await;
    let mut missing = Vec::new();
    for (verb, group, resource, namespaced) in NEEDED {
        let at = namespaced.then_some(tenant.as_str());
        if !allowed(&gantry, verb, group, resource, at).await {
            missing.push(format!("{verb} {group}/{resource}"));
        }
    }
    // Leader election: Leases in Gantry's own namespace only.
    for verb in ["get", "list", "watch", "create", "patch"] {
        if !allowed(&gantry, verb, "coordination.k8s.io", "leases", Some(&ns)).await {
            missing.push(format!("{verb} leases in {ns}"));
        }
    }
    assert!(missing.is_empty(), "the controllers need {missing:?}");

    let refused = [
        (
            "create",
            "coordination.k8s.io",
            "leases",
            Some(tenant.as_str()),
        ),
        ("list", "", "secrets", None),
        ("create", "", "secrets", Some(tenant.as_str())),
        // Deployments are created for Knative Revisions; other workloads never.
        ("create", "apps", "statefulsets", Some(tenant.as_str())),
        (
            "delete",
            "kustomize.toolkit.fluxcd.io",
            "kustomizations",
            Some(tenant.as_str()),
        ),
        (
            "create",
            "rbac.authorization.k8s.io",
            "rolebindings",
            Some(ns.as_str()),
        ),
        (
            "escalate",
            "rbac.authorization.k8s.io",
            "clusterroles",
            None,
        ),
        ("impersonate", "", "users", None),
        ("impersonate", "", "groups", None),
    ];
    for (verb, group, resource, at) in refused {
        assert!(
            !allowed(&gantry, verb, group, resource, at).await,
            "{verb} {group}/{resource} must not be granted"
        );
    }

    // And really refused, not just reviewed.
    let deployment: StatefulSet = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "intruder"},
        "spec": {
            "serviceName": "intruder",
            "selector": {"matchLabels": {"app": "intruder"}},
            "template": {
                "metadata": {"labels": {"app": "intruder"}},
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/x:1"}]}
            }
        }
    }))
    .unwrap();
    forbidden(
        Api::<StatefulSet>::namespaced(gantry.clone(), &tenant)
            .create(&PostParams::default(), &deployment)
            .await,
        "a StatefulSet in another namespace",
    );
    forbidden(
        Api::<Secret>::namespaced(gantry.clone(), "kube-system")
            .list(&ListParams::default())
            .await,
        "listing Secrets in kube-system",
    );
    let escalation = ClusterRoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("escalate{}", installed.suffix)),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: "cluster-admin".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "gantry".into(),
            namespace: Some(ns.clone()),
            ..Default::default()
        }]),
    };
    forbidden(
        Api::<ClusterRoleBinding>::all(gantry.clone())
            .create(&PostParams::default(), &escalation)
            .await,
        "binding cluster-admin to itself",
    );
    // Secrets are read by name (a Secret it was told about), never listed; watched by name.
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "git-auth"}, "stringData": {"password": "x"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &tenant)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let read = Api::<Secret>::namespaced(gantry.clone(), &tenant)
        .get("git-auth")
        .await
        .unwrap();
    assert!(read.data.is_some_and(|d| d.contains_key("password")));
    forbidden(
        Api::<Secret>::namespaced(gantry.clone(), &tenant)
            .list(&ListParams::default())
            .await,
        "listing Secrets",
    );
    // What the Receiver token cache does: a watch of one Secret by name.
    let by_name = kube::api::WatchParams::default()
        .fields("metadata.name=git-auth")
        .timeout(1);
    let events: Vec<_> = Api::<Secret>::namespaced(gantry.clone(), &tenant)
        .watch(&by_name, "")
        .await
        .expect("a field-selected watch of one Secret is allowed")
        .collect()
        .await;
    assert!(
        matches!(events.first(), Some(Ok(kube::api::WatchEvent::Added(s))) if s.metadata.name.as_deref() == Some("git-auth")),
        "{events:?}"
    );

    gantry_testkit::delete_namespace(&client, &tenant).await;
    installed.uninstall(&client).await;
}

/// A `gantry run` process; killed when dropped.
struct Gantry(Child);

impl Drop for Gantry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kustomization(path: &str, service_account: Option<&str>) -> Kustomization {
    Kustomization::new(
        "unnamed",
        KustomizationSpec {
            interval: "10m".into(),
            path: Some(path.into()),
            prune: true,
            timeout: Some("30s".into()),
            service_account_name: service_account.map(Into::into),
            source_ref: CrossNamespaceSourceReference {
                name: "app".into(),
                ..Default::default()
            },
            ..Default::default()
        },
    )
}

fn ready_condition(
    ks: Option<&Kustomization>,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    ks?.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The whole controller process acting as the `--multi-tenant` ServiceAccount (its real token):
/// it reconciles, and every Kustomization applies only what its ServiceAccount may apply.
#[tokio::test]
async fn least_privileged_gantry_applies_as_each_kustomizations_service_account() {
    let client = gantry_testkit::client().await;
    gantry_testkit::install_crds(&client).await;
    let installed = install(&client, "tenancy", &["--multi-tenant"]).await;
    let ns = installed.namespace.clone();
    let tenant = gantry_testkit::create_namespace(&client, "tenant").await;
    let other = gantry_testkit::create_namespace(&client, "other").await;

    // The tenant's accounts: `deployer` administers the tenant namespace, `viewer` only reads.
    for (account, role) in [("deployer", "admin"), ("viewer", "view")] {
        let sa: ServiceAccount =
            serde_json::from_value(serde_json::json!({"metadata": {"name": account}})).unwrap();
        Api::<ServiceAccount>::namespaced(client.clone(), &tenant)
            .create(&PostParams::default(), &sa)
            .await
            .unwrap();
        let binding = RoleBinding {
            metadata: kube::api::ObjectMeta {
                name: Some(account.into()),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: role.into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: account.into(),
                namespace: Some(tenant.clone()),
                ..Default::default()
            }]),
        };
        Api::<RoleBinding>::namespaced(client.clone(), &tenant)
            .create(&PostParams::default(), &binding)
            .await
            .unwrap();
    }

    let root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "app");
    let config_map = |name: &str, namespace: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {namespace}\ndata:\n  mode: blue\n"
        )
    };
    repo.write("own/cm.yaml", &config_map("settings", &tenant));
    repo.write("escape/cm.yaml", &config_map("escaped", &other));
    repo.commit("initial");
    repo.push("HEAD:refs/heads/main");
    let server = GitHttpServer::start(root.path(), HttpAuth::None);
    let repos: Api<GitRepository> = Api::namespaced(client.clone(), &tenant);
    let spec = GitRepositorySpec {
        url: server.url("app.git"),
        interval: "10m".into(),
        r#ref: Some(GitRepositoryRef {
            branch: Some("main".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    repos
        .create(&PostParams::default(), &GitRepository::new("app", spec))
        .await
        .unwrap();
    let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &tenant);
    // No serviceAccountName: the default account `deployer`.
    for (name, path, account) in [
        ("own", "./own", None),
        ("escape", "./escape", None),
        ("viewer", "./own", Some("viewer")),
    ] {
        let mut ks = kustomization(path, account);
        ks.metadata.name = Some(name.into());
        kustomizations
            .create(&PostParams::default(), &ks)
            .await
            .unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let (_, kubeconfig) = service_account_kubeconfig(&client, &ns, "gantry", dir.path()).await;
    let storage = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("gantry.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _gantry = Gantry(
        Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["run", "--watch-namespace", &tenant])
            .arg(format!("--leader-election-namespace={ns}"))
            .arg("--default-service-account=deployer")
            .arg(format!("--metrics-addr=127.0.0.1:{}", free_port()))
            .arg(format!("--health-addr=127.0.0.1:{}", free_port()))
            .arg("--serving-addr=127.0.0.1:0")
            .arg(format!("--receiver-addr=127.0.0.1:{}", free_port()))
            .arg("--uptime-addr=127.0.0.1:0")
            .arg("--storage-addr=127.0.0.1:0")
            .arg("--storage-path")
            .arg(storage.path())
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAME", "tenancy-test")
            .env("GANTRY_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting gantry run"),
    );

    // Its own namespace: applied as `deployer`, which may.
    gantry_testkit::wait_for(&kustomizations, "own", WAIT, |ks| {
        ready_condition(ks).is_some_and(|c| c.status == "True")
    })
    .await;
    let applied = Api::<ConfigMap>::namespaced(client.clone(), &tenant)
        .get("settings")
        .await
        .unwrap();
    assert_eq!(
        applied.data,
        Some(BTreeMap::from([("mode".into(), "blue".into())]))
    );
    // Another namespace: `deployer` may not, and says so.
    let refused = |account: &'static str| {
        let tenant = tenant.clone();
        move |ks: Option<&Kustomization>| {
            ready_condition(ks).is_some_and(|c| {
                c.status == "False"
                    && c.reason == "ReconciliationFailed"
                    && c.message.contains("forbidden")
                    && c.message
                        .contains(&format!("system:serviceaccount:{tenant}:{account}"))
            })
        }
    };
    let escape = gantry_testkit::wait_for(&kustomizations, "escape", WAIT, refused("deployer"))
        .await
        .unwrap();
    eprintln!(
        "escape: {}",
        ready_condition(Some(&escape)).unwrap().message
    );
    assert!(
        Api::<ConfigMap>::namespaced(client.clone(), &other)
            .get_opt("escaped")
            .await
            .unwrap()
            .is_none()
    );
    // spec.serviceAccountName wins over the default: `viewer` may not write even at home.
    let viewer = gantry_testkit::wait_for(&kustomizations, "viewer", WAIT, refused("viewer"))
        .await
        .unwrap();
    eprintln!(
        "viewer: {}",
        ready_condition(Some(&viewer)).unwrap().message
    );

    // Events are written with Gantry's own (least) rights.
    let events: Api<Event> = Api::namespaced(client.clone(), &tenant);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reasons: Vec<String> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("escape"))
            .filter_map(|e| e.reason)
            .collect();
        if reasons.iter().any(|r| r == "ReconciliationFailed") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a ReconciliationFailed event for escape: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Nothing Gantry itself tried was refused (the tenants' refusals name their own accounts).
    let log = std::fs::read_to_string(&log_path).unwrap();
    let me = format!("system:serviceaccount:{ns}:gantry");
    assert!(
        !log.contains(&me),
        "gantry's own account was refused something:\n{log}"
    );

    drop(_gantry);
    gantry_testkit::delete_namespace(&client, &tenant).await;
    gantry_testkit::delete_namespace(&client, &other).await;
    installed.uninstall(&client).await;
}
