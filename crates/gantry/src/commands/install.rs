//! `gantry install`: the manifests that install Gantry into a cluster, printed as one YAML stream
//! for `kubectl apply --server-side -f -`.
//!
//! Everything is built from typed k8s-openapi structs so a wrong field name is a compile error, not
//! an object the API server silently prunes.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, Namespace, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, SecurityContext, Service, ServiceAccount,
    ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

/// The repository this binary was built from: the workspace manifest's `repository`, the one
/// place the published image is derived from.
pub const REPOSITORY: &str = env!("CARGO_PKG_REPOSITORY");
/// Namespace Gantry runs in unless `--namespace` says otherwise.
pub const DEFAULT_NAMESPACE: &str = "gantry-system";

/// Name shared by the ServiceAccount, Deployment, roles and bindings.
pub const NAME: &str = "gantry";
/// The `cluster-admin` binding (and, with `--multi-tenant`, the ServiceAccount holding it).
pub const RECONCILER: &str = "gantry-reconciler";
/// Port of `/healthz` and `/readyz`; `gantry run` must listen here by default.
pub const HEALTH_PORT: i32 = 9440;
/// Port of `/metrics`; `gantry run` must listen here by default.
pub const METRICS_PORT: i32 = 8080;
/// Port of the webhook receivers (Flux's notification-controller uses the same).
pub const RECEIVER_PORT: i32 = 9292;
/// Port of the Knative Serving router (`gantry run --serving-addr`, default `0.0.0.0:8090`).
pub const SERVING_PORT: i32 = 8090;
/// The router's Service: every Knative Service's Kubernetes Service is an ExternalName to it.
pub const SERVING_SERVICE: &str = "gantry-serving";
/// Heartbeat Monitors are called here (`gantry run --uptime-addr`).
pub const UPTIME_PORT: i32 = 9334;
/// Port of the artifact server (Flux's source-controller `--storage-addr` default).
pub const STORAGE_PORT: i32 = 9090;
/// The Service artifact URLs name (Flux's).
pub const ARTIFACT_SERVICE: &str = "source-controller";
/// Unprivileged UID/GID (distroless `nonroot`).
const NON_ROOT_ID: i64 = 65532;

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Print only the CustomResourceDefinitions.
    #[arg(long)]
    pub crds: bool,

    /// Namespace to run Gantry in (created by the manifests).
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,

    /// Container image of the controller [default: the image the release workflow publishes
    /// for this version, when this build's repository has one; else it must be given].
    #[arg(long)]
    pub image: Option<String>,

    /// Multi-tenancy lockdown: Gantry's own ServiceAccount gets only what the controllers need,
    /// not `cluster-admin`, and every Kustomization applies as a ServiceAccount of its own
    /// namespace (its `spec.serviceAccountName`, else `--default-service-account`). A
    /// `gantry-reconciler` ServiceAccount bound to `cluster-admin` is created in Gantry's namespace
    /// for the platform's own Kustomizations there to name.
    #[arg(long)]
    pub multi_tenant: bool,

    /// With `--multi-tenant`: the ServiceAccount Kustomizations without `spec.serviceAccountName`
    /// impersonate (passed to `gantry run --default-service-account`).
    #[arg(long, default_value = "default", requires = "multi_tenant")]
    pub default_service_account: String,
}

pub fn run(args: &InstallArgs) -> anyhow::Result<ExitCode> {
    print!("{}", render(args)?);
    Ok(ExitCode::SUCCESS)
}

/// The image the release workflow publishes for `version` of a build from `repository`:
/// `ghcr.io/<owner>/<repo>:<version>` for a GitHub repository (GHCR wants it lowercase), and
/// `None` for anywhere else: nothing is published there that Gantry knows of, and a guessed
/// name is a namespace a stranger could own.
pub fn published_image(repository: &str, version: &str) -> Option<String> {
    let path = repository
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .strip_prefix("https://github.com/")?;
    let (owner, repo) = path.split_once('/')?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    };
    if !valid(owner) || !valid(repo) {
        return None;
    }
    Some(format!(
        "ghcr.io/{}/{}:{version}",
        owner.to_ascii_lowercase(),
        repo.to_ascii_lowercase()
    ))
}

/// `--image`, else the published image of this version, else a clear refusal.
fn image(args: &InstallArgs) -> anyhow::Result<String> {
    resolve_image(args.image.as_deref(), REPOSITORY, env!("CARGO_PKG_VERSION"))
}

fn resolve_image(given: Option<&str>, repository: &str, version: &str) -> anyhow::Result<String> {
    if let Some(image) = given {
        return Ok(image.to_string());
    }
    published_image(repository, version).ok_or_else(|| {
        anyhow::anyhow!(
            "no published image is known for this build of gantry (built from {repository}, \
             where no release workflow publishes one): pass --image with the image to run, \
             e.g. one built and pushed with `cargo xtask image --push REGISTRY/REPO:TAG`"
        )
    })
}

/// The multi-document YAML stream `gantry install` prints.
pub fn render(args: &InstallArgs) -> anyhow::Result<String> {
    let mut documents = Vec::new();
    for crd in crds() {
        documents.push(to_value(&crd)?);
    }
    if !args.crds {
        for object in manifests(args)? {
            documents.push(object);
        }
    }
    let mut out = String::new();
    for document in &documents {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(document).context("rendering YAML")?);
    }
    Ok(out)
}

fn to_value(object: &impl Serialize) -> anyhow::Result<serde_json::Value> {
    serde_json::to_value(object).context("serialising a manifest")
}

/// Everything except the CRDs, in apply order: namespace, identity, permissions, workload.
fn manifests(args: &InstallArgs) -> anyhow::Result<Vec<serde_json::Value>> {
    let namespace = args.namespace.as_str();
    let service_account = |name: &str| ServiceAccount {
        metadata: meta(name, Some(namespace)),
        ..Default::default()
    };
    let mut objects = vec![
        to_value(&namespace_object(namespace))?,
        to_value(&service_account(NAME))?,
        to_value(&controller_role())?,
        to_value(&cluster_binding(NAME, NAME, namespace, NAME))?,
    ];
    if args.multi_tenant {
        // cluster-admin goes to an account Gantry only acts as for Kustomizations of its own
        // namespace that name it; tenants cannot name accounts of another namespace.
        objects.push(to_value(&service_account(RECONCILER))?);
        objects.push(to_value(&cluster_binding(
            RECONCILER,
            "cluster-admin",
            namespace,
            RECONCILER,
        ))?);
    } else {
        objects.push(to_value(&cluster_binding(
            RECONCILER,
            "cluster-admin",
            namespace,
            NAME,
        ))?);
    }
    // `status.artifact.url` names the `source-controller` Service, as Flux's does.
    let mut run_args = vec![
        "run".to_string(),
        format!("--storage-adv-addr={ARTIFACT_SERVICE}.{namespace}.svc.cluster.local."),
    ];
    if args.multi_tenant {
        run_args.push(format!(
            "--default-service-account={}",
            args.default_service_account
        ));
    }
    objects.extend([
        to_value(&leader_election_role(namespace))?,
        to_value(&leader_election_binding(namespace))?,
        to_value(&deployment(namespace, &image(args)?, run_args))?,
        to_value(&service(namespace, "webhook-receiver", "http-webhook"))?,
        to_value(&service(namespace, SERVING_SERVICE, "serving"))?,
        to_value(&service(namespace, ARTIFACT_SERVICE, "http"))?,
    ]);
    Ok(objects)
}

/// The labels of every object. `part-of: flux` is what the `flux` CLI selects on: `flux check`,
/// `flux version` and `flux logs` find the controllers' Deployments (and through them their
/// Pods) and the CRDs by `app.kubernetes.io/part-of=flux`, in `flux-system` unless told `-n`.
/// (`flux uninstall` selects the same label, so it removes Gantry too.)
fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), NAME.into()),
        ("app.kubernetes.io/part-of".into(), "flux".into()),
        (
            "app.kubernetes.io/version".into(),
            env!("CARGO_PKG_VERSION").into(),
        ),
    ])
}

/// Gantry's CRDs, labelled for the `flux` CLI. `flux check` and `flux version` print the
/// GitRepository CRD's `part-of` and `version` labels as the distribution; a version of
/// `gantry-v<version>` makes that `flux-gantry-v0.1.0` rather than a Flux release number.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = gantry_api::crds();
    for crd in &mut crds {
        let mut labels = labels();
        labels.insert(
            "app.kubernetes.io/version".into(),
            concat!("gantry-v", env!("CARGO_PKG_VERSION")).into(),
        );
        crd.metadata.labels.get_or_insert_default().extend(labels);
    }
    crds
}

fn selector_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".into(), NAME.into())])
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: Some(labels()),
        ..Default::default()
    }
}

fn namespace_object(namespace: &str) -> Namespace {
    let mut metadata = meta(namespace, None);
    // The pod below satisfies the `restricted` Pod Security Standard; enforce it so a later edit
    // that weakens it is refused instead of silently deployed.
    metadata.labels.get_or_insert_default().insert(
        "pod-security.kubernetes.io/enforce".into(),
        "restricted".into(),
    );
    Namespace {
        metadata,
        ..Default::default()
    }
}

fn rule(groups: &[&str], resources: &[impl AsRef<str>], verbs: &[&str]) -> PolicyRule {
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(resources.iter().map(|r| r.as_ref().to_string()).collect()),
        verbs: strings(verbs),
        ..Default::default()
    }
}

/// What the controllers themselves need, and nothing more (every `Api` the controllers call is
/// listed here; `gantry install --multi-tenant` grants only this):
/// - their own kinds: spec read, status written, finalizers managed;
/// - the Flux kinds a Receiver may name: read and annotated with `requestedAt`;
/// - Secrets and ConfigMaps read by name: git and registry credentials, `substituteFrom`,
///   receiver tokens, provider addresses; Secrets also watched, by name only (a `metadata.name`
///   field selector), so webhook calls are checked against tokens in memory;
/// - Events written; Namespaces read (ImagePolicy's `accessFrom` selects them by label);
/// - ServiceAccounts impersonated: Kustomizations apply as their `spec.serviceAccountName`.
///
/// Applying arbitrary manifests is not here: that is the reconciler binding below, or the
/// impersonated account's own rights.
fn controller_role() -> ClusterRole {
    const READ: &[&str] = &["get", "list", "watch"];
    const OBJECT: &[&str] = &["get", "list", "watch", "update", "patch"];
    const STATUS: &[&str] = &["get", "update", "patch"];
    let sub = |kinds: &[&str], sub: &str| -> Vec<String> {
        kinds.iter().map(|k| format!("{k}/{sub}")).collect()
    };
    let mut rules = Vec::new();
    for (group, kinds) in SERVED_KINDS {
        rules.push(rule(&[group], kinds, OBJECT));
        rules.push(rule(&[group], &sub(kinds, "status"), STATUS));
        rules.push(rule(&[group], &sub(kinds, "finalizers"), &["update"]));
    }
    rules.extend([
        // Receivers: status written, nothing else; Alerts and Providers: read only.
        rule(&["notification.toolkit.fluxcd.io"], &["receivers"], READ),
        rule(
            &["notification.toolkit.fluxcd.io"],
            &["receivers/status"],
            STATUS,
        ),
        rule(
            &["notification.toolkit.fluxcd.io"],
            &["alerts", "providers"],
            READ,
        ),
        // Flux kinds Gantry does not serve that a Receiver may still name: annotated only.
        rule(
            &["source.toolkit.fluxcd.io"],
            &[
                "buckets",
                "helmcharts",
                "helmrepositories",
                "externalartifacts",
            ],
            &["get", "list", "patch"],
        ),
        rule(
            &["helm.toolkit.fluxcd.io"],
            &["helmreleases"],
            &["get", "list", "patch"],
        ),
        rule(
            &["source.extensions.fluxcd.io"],
            &["artifactgenerators"],
            &["get", "list", "patch"],
        ),
        // `watch` serves the Receiver token cache: one watch per Secret a Receiver names, with
        // a `metadata.name` field selector, so a forged webhook call costs no API request. RBAC
        // cannot confine a ClusterRole to names unknown at install time, so the verb is
        // cluster-wide; `list` stays refused (Flux grants both on every Secret).
        rule(&[""], &["secrets"], &["get", "watch"]),
        rule(&[""], &["configmaps"], &["get"]),
        rule(&[""], &["namespaces"], &["get"]),
        rule(&[""], &["serviceaccounts"], &["impersonate"]),
        rule(&["", "events.k8s.io"], &["events"], &["create", "patch"]),
        // Knative Serving: Services stamp out Revisions (created, relabelled, collected), a
        // Revision creates its Deployment; the router reads Pods and EndpointSlices and scales
        // Deployments through `/scale`; each Knative Service gets a Kubernetes Service.
        rule(&["serving.knative.dev"], &["services"], READ),
        rule(
            &["serving.knative.dev"],
            &["revisions"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        rule(
            &["serving.knative.dev"],
            &["services/status", "revisions/status"],
            STATUS,
        ),
        // Owner references with blockOwnerDeletion (Revisions, Deployments, Services).
        rule(
            &["serving.knative.dev"],
            &["services/finalizers", "revisions/finalizers"],
            &["update"],
        ),
        rule(
            &["apps"],
            &["deployments"],
            &["get", "list", "watch", "create"],
        ),
        rule(
            &["apps"],
            &["deployments/scale"],
            &["get", "update", "patch"],
        ),
        rule(&[""], &["pods"], READ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(
            &[""],
            &["services"],
            &["get", "list", "watch", "create", "patch"],
        ),
    ]);
    ClusterRole {
        metadata: meta(NAME, None),
        rules: Some(rules),
        ..Default::default()
    }
}

/// The kinds Gantry's controllers reconcile, by API group.
const SERVED_KINDS: &[(&str, &[&str])] = &[
    (
        "source.toolkit.fluxcd.io",
        &["gitrepositories", "ocirepositories"],
    ),
    ("kustomize.toolkit.fluxcd.io", &["kustomizations"]),
    ("uptime.gantry.dev", &["monitors"]),
    (
        "image.toolkit.fluxcd.io",
        &[
            "imagerepositories",
            "imagepolicies",
            "imageupdateautomations",
        ],
    ),
];

/// Binds a ClusterRole to the ServiceAccount `account` of Gantry's namespace.
///
/// By default `gantry-reconciler` binds `cluster-admin` to Gantry itself, exactly as Flux binds
/// its `cluster-reconciler`: a Kustomization may apply any kind of object (CRDs, RBAC,
/// namespaces), so the applier needs every right. Tenants are confined with
/// `spec.serviceAccountName`, which makes Gantry impersonate a less privileged ServiceAccount for
/// that Kustomization; `--multi-tenant` makes that the rule for every Kustomization.
fn cluster_binding(name: &str, role: &str, namespace: &str, account: &str) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name, None),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(vec![service_account_subject(namespace, account)]),
    }
}

fn service_account_subject(namespace: &str, account: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: account.into(),
        namespace: Some(namespace.into()),
        ..Default::default()
    }
}

/// Leader election only needs Leases in Gantry's own namespace: read, created once, renewed and
/// taken over by patch, and watched by standbys so a released Lease is taken at once. Each
/// replica also keeps a serving replica Lease there (its address for the leader to collect its
/// request counts), deletes it when it stops, and the leader deletes those of replicas long gone.
fn leader_election_role(namespace: &str) -> Role {
    Role {
        metadata: meta(&format!("{NAME}-leader-election"), Some(namespace)),
        rules: Some(vec![rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["get", "list", "watch", "create", "patch", "delete"],
        )]),
    }
}

fn leader_election_binding(namespace: &str) -> RoleBinding {
    let name = format!("{NAME}-leader-election");
    RoleBinding {
        metadata: meta(&name, Some(namespace)),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name,
        },
        subjects: Some(vec![service_account_subject(namespace, NAME)]),
    }
}

fn http_probe(path: &str, initial_delay: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("healthz".into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(10),
        ..Default::default()
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    }
}

/// A ClusterIP Service on port 80 to the named container port of Gantry's pods. Gantry serves
/// under the names Flux's and Knative's tooling expect:
/// - `webhook-receiver` (Flux's), so ingress set up for Flux keeps working;
/// - `gantry-serving`, the router, which every replica serves (no leader on the data path);
/// - `source-controller` (Flux's), to the artifact server, so consumers that download
///   `status.artifact.url` reach Gantry.
fn service(namespace: &str, name: &str, target_port: &str) -> Service {
    Service {
        metadata: meta(name, Some(namespace)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::String(target_port.into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn deployment(namespace: &str, image: &str, args: Vec<String>) -> Deployment {
    let quantity = |q: &str| Quantity(q.into());
    let container = Container {
        name: "manager".into(),
        image: Some(image.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        // `gantry run` serves on HEALTH_PORT and METRICS_PORT by default; no port flags here, so
        // the manifest cannot drift from the command's options.
        args: Some(args),
        env: Some(vec![
            // Leader election identity and lease namespace.
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            // The serving address other replicas collect this one's request counts at.
            field_env("POD_IP", "status.podIP"),
            // Flux's log keys, so `flux logs` reads the pod's log as it reads Flux's.
            EnvVar {
                name: "GANTRY_LOG_FORMAT".into(),
                value: Some("flux".into()),
                ..Default::default()
            },
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("healthz".into()),
                container_port: HEALTH_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("http-prom".into()),
                container_port: METRICS_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("http-webhook".into()),
                container_port: RECEIVER_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("serving".into()),
                container_port: SERVING_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("http-uptime".into()),
                container_port: UPTIME_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("http".into()),
                container_port: STORAGE_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        liveness_probe: Some(http_probe("/healthz", 5)),
        readiness_probe: Some(http_probe("/readyz", 0)),
        // From measured figures (docs/benchmarks.md, "The installed pod"): `gantry run` idles
        // at 32-46 MiB and 0.00 cores, and reconciling 1000 Kustomizations peaks at 46-47 MiB
        // and averages 0.05 cores (`cargo xtask bench gitops --count 1000`); each
        // kustomize child it runs (up to `--concurrent`, 8) takes 15 MiB for a small overlay and
        // 111 MiB for 4000 objects, so 8 such builds at once stay under 1 GiB.
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), quantity("100m")),
                ("memory".into(), quantity("64Mi")),
            ])),
            // No CPU limit (throttling only slows reconciles); a memory limit keeps a runaway
            // build from taking the node down.
            limits: Some(BTreeMap::from([("memory".into(), quantity("1Gi"))])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        // The root filesystem is read-only: artifacts, git checkouts and kustomize builds go here.
        volume_mounts: Some(vec![mount("data", "/data"), mount("tmp", "/tmp")]),
        ..Default::default()
    };
    let mut pod_labels = labels();
    pod_labels.extend(selector_labels());
    Deployment {
        metadata: meta(NAME, Some(namespace)),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector_labels()),
                ..Default::default()
            },
            // Leader election makes a second replica wait anyway; recreate avoids two pods
            // contending for the lease during every upgrade.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..Default::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([
                        ("prometheus.io/scrape".into(), "true".into()),
                        ("prometheus.io/port".into(), METRICS_PORT.to_string()),
                    ])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(NAME.into()),
                    termination_grace_period_seconds: Some(10),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(NON_ROOT_ID),
                        run_as_group: Some(NON_ROOT_ID),
                        fs_group: Some(NON_ROOT_ID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![empty_dir("data"), empty_dir("tmp")]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const TEST_IMAGE: &str = "registry.local/gantry:test";

    fn args(crds: bool) -> InstallArgs {
        InstallArgs {
            crds,
            namespace: DEFAULT_NAMESPACE.into(),
            image: Some(TEST_IMAGE.into()),
            multi_tenant: false,
            default_service_account: "default".into(),
        }
    }

    fn multi_tenant() -> InstallArgs {
        InstallArgs {
            multi_tenant: true,
            ..args(false)
        }
    }

    fn parse(stream: &str) -> Vec<Value> {
        serde_saphyr::from_str_multiple(stream).expect("the output is valid YAML")
    }

    fn kinds(documents: &[Value]) -> Vec<String> {
        documents
            .iter()
            .map(|d| d["kind"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn crds_only_prints_just_the_crds() {
        let stream = render(&args(true)).unwrap();
        // `cargo xtask sandbox` reads the stream back as typed CRDs.
        let typed: Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
            serde_saphyr::from_str_multiple(&stream).expect("typed CRDs");
        assert_eq!(typed, crds());
        let documents = parse(&stream);
        assert!(
            kinds(&documents)
                .iter()
                .all(|k| k == "CustomResourceDefinition")
        );
        let names: Vec<_> = documents
            .iter()
            .map(|d| d["metadata"]["name"].as_str().unwrap())
            .collect();
        for name in [
            "gitrepositories.source.toolkit.fluxcd.io",
            "kustomizations.kustomize.toolkit.fluxcd.io",
            "receivers.notification.toolkit.fluxcd.io",
            "alerts.notification.toolkit.fluxcd.io",
            "providers.notification.toolkit.fluxcd.io",
        ] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
    }

    #[test]
    fn full_install_has_every_kind_in_apply_order() {
        let documents = parse(&render(&args(false)).unwrap());
        let crds = gantry_api::crds().len();
        let kinds = kinds(&documents);
        assert!(
            kinds[..crds]
                .iter()
                .all(|k| k == "CustomResourceDefinition")
        );
        assert_eq!(
            kinds[crds..],
            [
                "Namespace",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "Deployment",
                "Service",
                "Service",
                "Service",
            ]
        );
        for document in &documents {
            assert!(document["apiVersion"].is_string(), "{document}");
        }
    }

    /// What is printed must parse back to exactly what was built: no string turned into a bool
    /// or number (`"True"`, `"*"`, `"8080"`), nothing lost.
    #[test]
    fn yaml_round_trips_to_the_typed_objects() {
        let mut expected: Vec<Value> = crds()
            .iter()
            .map(|c| serde_json::to_value(c).unwrap())
            .collect();
        expected.extend(manifests(&args(false)).unwrap());
        let parsed = parse(&render(&args(false)).unwrap());
        assert_eq!(parsed.len(), expected.len());
        for (parsed, expected) in parsed.iter().zip(&expected) {
            assert_eq!(
                normalize(parsed.clone()),
                normalize(expected.clone()),
                "{}",
                expected["kind"]
            );
        }
    }

    /// YAML has one number type for `0` and `0.0`; compare numbers by value.
    fn normalize(value: Value) -> Value {
        match value {
            Value::Number(n) => serde_json::json!(n.as_f64()),
            Value::Array(a) => Value::Array(a.into_iter().map(normalize).collect()),
            Value::Object(o) => {
                Value::Object(o.into_iter().map(|(k, v)| (k, normalize(v))).collect())
            }
            other => other,
        }
    }

    #[test]
    fn namespace_and_image_are_configurable() {
        let documents = parse(
            &render(&InstallArgs {
                namespace: "ops".into(),
                image: Some("registry.local/gantry:dev".into()),
                ..multi_tenant()
            })
            .unwrap(),
        );
        let deployment = documents
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .unwrap();
        assert_eq!(deployment["metadata"]["namespace"], "ops");
        assert_eq!(
            deployment["spec"]["template"]["spec"]["containers"][0]["image"],
            "registry.local/gantry:dev"
        );
        let namespace = documents.iter().find(|d| d["kind"] == "Namespace").unwrap();
        assert_eq!(namespace["metadata"]["name"], "ops");
        for binding in documents.iter().filter(|d| {
            d["kind"]
                .as_str()
                .is_some_and(|k| k.ends_with("RoleBinding"))
        }) {
            assert_eq!(binding["subjects"][0]["namespace"], "ops", "{binding}");
        }
    }

    #[test]
    fn deployment_runs_gantry_non_root_with_probes() {
        let objects = manifests(&args(false)).unwrap();
        let deployment: Deployment = serde_json::from_value(
            objects
                .into_iter()
                .find(|o| o["kind"] == "Deployment")
                .unwrap(),
        )
        .unwrap();
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some(NAME));
        let container = &pod.containers[0];
        assert_eq!(container.image.as_deref(), Some(TEST_IMAGE));
        // Artifact URLs name the Service that reaches the artifact server.
        assert_eq!(
            container.args.as_deref(),
            Some(
                &[
                    "run".to_string(),
                    "--storage-adv-addr=source-controller.gantry-system.svc.cluster.local.".into()
                ][..]
            )
        );
        let probe_path = |p: &Option<Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(
            probe_path(&container.liveness_probe).as_deref(),
            Some("/healthz")
        );
        assert_eq!(
            probe_path(&container.readiness_probe).as_deref(),
            Some("/readyz")
        );
        let ports: Vec<_> = container
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.container_port)
            .collect();
        assert_eq!(
            ports,
            [
                HEALTH_PORT,
                METRICS_PORT,
                RECEIVER_PORT,
                SERVING_PORT,
                UPTIME_PORT,
                STORAGE_PORT
            ]
        );
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        let requests = container
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap();
        assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    }

    fn granted(role: &ClusterRole, group: &str, resource: &str, verb: &str) -> bool {
        role.rules.iter().flatten().any(|r| {
            r.api_groups.iter().flatten().any(|g| g == group)
                && r.resources.iter().flatten().any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
        })
    }

    #[test]
    fn controller_role_covers_the_flux_kinds_and_their_status() {
        let role = controller_role();
        let granted =
            |group: &str, resource: &str, verb: &str| granted(&role, group, resource, verb);
        let notification = "notification.toolkit.fluxcd.io";
        assert!(granted(notification, "receivers/status", "patch"));
        for kind in ["alerts", "providers", "receivers"] {
            assert!(granted(notification, kind, "watch"), "{kind}");
            assert!(!granted(notification, kind, "patch"), "{kind} is only read");
        }
        for (group, kind) in [
            ("source.toolkit.fluxcd.io", "gitrepositories"),
            ("kustomize.toolkit.fluxcd.io", "kustomizations"),
            ("image.toolkit.fluxcd.io", "imagerepositories"),
            ("image.toolkit.fluxcd.io", "imagepolicies"),
            ("image.toolkit.fluxcd.io", "imageupdateautomations"),
        ] {
            assert!(granted(group, kind, "watch"), "{kind}");
            assert!(granted(group, kind, "patch"), "{kind}");
            assert!(granted(group, &format!("{kind}/status"), "patch"), "{kind}");
            assert!(
                granted(group, &format!("{kind}/finalizers"), "update"),
                "{kind}"
            );
            assert!(!granted(group, kind, "create"), "{kind} is never created");
            assert!(!granted(group, kind, "delete"), "{kind} is never deleted");
        }
        // A Receiver may name kinds Gantry does not serve: it annotates them.
        assert!(granted("helm.toolkit.fluxcd.io", "helmreleases", "patch"));
        assert!(granted("", "events", "create"));
        assert!(granted("events.k8s.io", "events", "patch"));
        assert!(granted("", "secrets", "get"));
        assert!(!granted("", "secrets", "list"), "secrets are read by name");
        assert!(
            granted("", "secrets", "watch"),
            "receiver tokens are watched"
        );
        assert!(
            !granted("", "configmaps", "watch"),
            "configmaps are read by name"
        );
        assert!(
            !granted("", "configmaps", "list"),
            "configmaps are read by name"
        );
        assert!(granted("", "configmaps", "get"));
        assert!(granted("", "namespaces", "get"));
        assert!(granted("", "serviceaccounts", "impersonate"));
        assert!(
            !granted("coordination.k8s.io", "leases", "create"),
            "leases are granted in the namespace only"
        );
        for rule in role.rules.iter().flatten() {
            let wildcard = |items: &Option<Vec<String>>| items.iter().flatten().any(|i| i == "*");
            assert!(
                !wildcard(&rule.api_groups)
                    && !wildcard(&rule.resources)
                    && !rule.verbs.iter().any(|v| v == "*"),
                "no wildcard: {rule:?}"
            );
        }
    }

    fn bindings(documents: &[Value]) -> Vec<(String, String, String)> {
        documents
            .iter()
            .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
            .map(|d| {
                (
                    d["metadata"]["name"].as_str().unwrap().to_string(),
                    d["roleRef"]["name"].as_str().unwrap().to_string(),
                    d["subjects"][0]["name"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn default_install_binds_cluster_admin_to_gantry_as_flux_does() {
        let documents = manifests(&args(false)).unwrap();
        assert_eq!(
            bindings(&documents),
            [
                ("gantry".into(), "gantry".into(), "gantry".into()),
                (RECONCILER.into(), "cluster-admin".into(), "gantry".into()),
                (
                    "gantry-leader-election".into(),
                    "gantry-leader-election".into(),
                    "gantry".into()
                ),
            ]
        );
    }

    #[test]
    fn multi_tenant_install_does_not_bind_cluster_admin_to_gantry() {
        let documents = manifests(&multi_tenant()).unwrap();
        let bindings = bindings(&documents);
        assert!(
            bindings
                .iter()
                .filter(|(_, role, _)| role == "cluster-admin")
                .all(|(_, _, account)| account == RECONCILER),
            "{bindings:?}"
        );
        assert!(
            bindings
                .iter()
                .any(|(_, role, account)| role == "gantry" && account == "gantry")
        );
        let accounts: Vec<_> = documents
            .iter()
            .filter(|d| d["kind"] == "ServiceAccount")
            .map(|d| d["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(accounts, ["gantry", RECONCILER]);
        let deployment = documents
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .unwrap();
        assert_eq!(
            deployment["spec"]["template"]["spec"]["containers"][0]["args"],
            serde_json::json!([
                "run",
                "--storage-adv-addr=source-controller.gantry-system.svc.cluster.local.",
                "--default-service-account=default"
            ])
        );
        let custom = manifests(&InstallArgs {
            default_service_account: "flux".into(),
            ..multi_tenant()
        })
        .unwrap();
        let deployment = custom.iter().find(|d| d["kind"] == "Deployment").unwrap();
        assert_eq!(
            deployment["spec"]["template"]["spec"]["containers"][0]["args"][2],
            "--default-service-account=flux"
        );
    }

    #[test]
    fn replicas_keep_serving_leases_and_advertise_their_pod_ip() {
        let role = leader_election_role("gantry-system");
        let rules = role.rules.unwrap();
        for verb in ["get", "list", "watch", "create", "patch", "delete"] {
            assert!(
                rules.iter().any(|r| {
                    r.api_groups
                        .iter()
                        .flatten()
                        .any(|g| g == "coordination.k8s.io")
                        && r.resources.iter().flatten().any(|x| x == "leases")
                        && r.verbs.iter().any(|v| v == verb)
                }),
                "leases {verb}"
            );
        }
        assert_eq!(role.metadata.namespace.as_deref(), Some("gantry-system"));
        let documents = manifests(&args(false)).unwrap();
        let deployment = documents
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .unwrap();
        let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
        assert!(
            env.as_array().unwrap().iter().any(|e| e["name"] == "POD_IP"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"),
            "{env}"
        );
    }

    #[test]
    fn published_image_is_derived_from_a_github_repository_only() {
        assert_eq!(
            published_image("https://github.com/Acme/Gantry", "1.2.3").as_deref(),
            Some("ghcr.io/acme/gantry:1.2.3")
        );
        assert_eq!(
            published_image("https://github.com/acme/gantry.git/", "0.1.0").as_deref(),
            Some("ghcr.io/acme/gantry:0.1.0")
        );
        for unknown in [
            "https://example.invalid/gantry",
            "https://gitlab.com/acme/gantry",
            "https://github.com/acme",
            "https://github.com/acme/gantry/tree/main",
            "http://github.com/acme/gantry",
            "",
        ] {
            assert_eq!(published_image(unknown, "0.1.0"), None, "{unknown}");
        }
    }

    /// A repository without a published image: without `--image` the install is refused,
    /// saying what to do; `--image` wins over a published one; the CRDs alone need no image.
    #[test]
    fn without_a_published_image_install_requires_image() {
        let unknown = "https://example.invalid/gantry";
        let err = resolve_image(None, unknown, "0.1.0").expect_err("refused without --image");
        let message = format!("{err:#}");
        assert!(message.contains("--image"), "{message}");
        assert!(message.contains(unknown), "{message}");
        let github = "https://github.com/acme/gantry";
        assert_eq!(
            resolve_image(None, github, "0.1.0").unwrap(),
            "ghcr.io/acme/gantry:0.1.0"
        );
        assert_eq!(
            resolve_image(Some("mine:1"), github, "0.1.0").unwrap(),
            "mine:1"
        );
        // This build: whatever its repository, render agrees with resolve_image.
        let rendered = render(&InstallArgs {
            image: None,
            ..args(false)
        });
        match published_image(REPOSITORY, env!("CARGO_PKG_VERSION")) {
            Some(published) => assert!(rendered.unwrap().contains(&published)),
            None => assert!(format!("{:#}", rendered.unwrap_err()).contains("--image")),
        }
        assert!(
            render(&InstallArgs {
                image: None,
                ..args(true)
            })
            .is_ok()
        );
    }

    /// The container ports are where `gantry run` listens when the Deployment passes no flag.
    #[test]
    fn container_ports_are_gantry_runs_defaults() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            run: crate::commands::run::RunArgs,
        }
        let cli = Cli::try_parse_from(["run"]).unwrap();
        assert_eq!(i32::from(cli.run.health_addr.port()), HEALTH_PORT);
        assert_eq!(i32::from(cli.run.metrics_addr.port()), METRICS_PORT);
        assert_eq!(i32::from(cli.run.receiver_addr.port()), RECEIVER_PORT);
        assert_eq!(i32::from(cli.run.uptime_addr.port()), UPTIME_PORT);
        assert_eq!(i32::from(cli.run.storage_addr.port()), STORAGE_PORT);
        // And the storage path is a volume of the read-only pod.
        let objects = manifests(&args(false)).unwrap();
        let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
        let mounts = &deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
        assert!(
            mounts
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["mountPath"] == cli.run.storage_path.to_str().unwrap()),
            "{mounts}"
        );
    }

    #[test]
    fn default_service_account_requires_multi_tenant() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            install: InstallArgs,
        }
        let err = Cli::try_parse_from(["install", "--default-service-account", "x"])
            .err()
            .expect("refused without --multi-tenant");
        assert!(err.to_string().contains("--multi-tenant"), "{err}");
        let cli = Cli::try_parse_from([
            "install",
            "--multi-tenant",
            "--default-service-account",
            "x",
        ])
        .unwrap();
        assert_eq!(cli.install.default_service_account, "x");
    }

    /// What the `flux` CLI selects on (see `labels`); `cluster_flux_cli` runs the real CLI.
    #[test]
    fn flux_cli_labels_are_on_the_crds_deployment_and_pods() {
        let documents = parse(&render(&args(false)).unwrap());
        let part_of = |d: &Value| d["metadata"]["labels"]["app.kubernetes.io/part-of"].clone();
        for document in &documents {
            assert_eq!(part_of(document), "flux", "{}", document["kind"]);
        }
        let deployment = documents
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .unwrap();
        assert_eq!(
            deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"],
            "flux"
        );
        // `flux logs` picks the container named `manager` when a pod has several, and reads
        // Flux's log keys.
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["name"], "manager");
        assert!(
            container["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "GANTRY_LOG_FORMAT" && e["value"] == "flux"),
            "{container}"
        );
        let git = documents
            .iter()
            .find(|d| d["metadata"]["name"] == "gitrepositories.source.toolkit.fluxcd.io")
            .unwrap();
        assert_eq!(
            git["metadata"]["labels"]["app.kubernetes.io/version"],
            concat!("gantry-v", env!("CARGO_PKG_VERSION"))
        );
    }
}
