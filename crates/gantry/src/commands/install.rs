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
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

/// Image run by `gantry install` unless `--image` says otherwise: the release matching this binary.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/gantry-dev/gantry:", env!("CARGO_PKG_VERSION"));
/// Namespace Gantry runs in unless `--namespace` says otherwise.
pub const DEFAULT_NAMESPACE: &str = "gantry-system";

/// Name shared by the ServiceAccount, Deployment, roles and bindings.
const NAME: &str = "gantry";
/// Port of `/healthz` and `/readyz`; `gantry run` must listen here by default.
pub const HEALTH_PORT: i32 = 9440;
/// Port of `/metrics`; `gantry run` must listen here by default.
pub const METRICS_PORT: i32 = 8080;
/// Port of the webhook receivers (Flux's notification-controller uses the same).
pub const RECEIVER_PORT: i32 = 9292;
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

    /// Container image of the controller.
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub image: String,
}

pub fn run(args: &InstallArgs) -> anyhow::Result<ExitCode> {
    print!("{}", render(args)?);
    Ok(ExitCode::SUCCESS)
}

/// The multi-document YAML stream `gantry install` prints.
pub fn render(args: &InstallArgs) -> anyhow::Result<String> {
    let mut documents = Vec::new();
    for crd in gantry_api::crds() {
        documents.push(to_value(&crd)?);
    }
    if !args.crds {
        for object in manifests(&args.namespace, &args.image)? {
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
fn manifests(namespace: &str, image: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    Ok(vec![
        to_value(&namespace_object(namespace))?,
        to_value(&ServiceAccount {
            metadata: meta(NAME, Some(namespace)),
            ..Default::default()
        })?,
        to_value(&controller_role())?,
        to_value(&cluster_binding(NAME, NAME, namespace))?,
        to_value(&cluster_binding(
            &format!("{NAME}-reconciler"),
            "cluster-admin",
            namespace,
        ))?,
        to_value(&leader_election_role(namespace))?,
        to_value(&leader_election_binding(namespace))?,
        to_value(&deployment(namespace, image))?,
        to_value(&webhook_service(namespace))?,
    ])
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), NAME.into()),
        ("app.kubernetes.io/part-of".into(), NAME.into()),
        (
            "app.kubernetes.io/version".into(),
            env!("CARGO_PKG_VERSION").into(),
        ),
    ])
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

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..Default::default()
    }
}

/// What the controllers themselves need: their own kinds (spec read, status written, finalizers
/// managed) and events. Reading sources' Secrets and applying manifests is covered by the
/// reconciler binding below.
fn controller_role() -> ClusterRole {
    const OBJECT: &[&str] = &["get", "list", "watch", "update", "patch"];
    const STATUS: &[&str] = &["get", "update", "patch"];
    ClusterRole {
        metadata: meta(NAME, None),
        rules: Some(vec![
            rule(&["source.toolkit.fluxcd.io"], &["gitrepositories"], OBJECT),
            rule(
                &["source.toolkit.fluxcd.io"],
                &["gitrepositories/status"],
                STATUS,
            ),
            rule(
                &["source.toolkit.fluxcd.io"],
                &["gitrepositories/finalizers"],
                &["update"],
            ),
            rule(
                &["kustomize.toolkit.fluxcd.io"],
                &["kustomizations"],
                OBJECT,
            ),
            rule(
                &["kustomize.toolkit.fluxcd.io"],
                &["kustomizations/status"],
                STATUS,
            ),
            rule(
                &["kustomize.toolkit.fluxcd.io"],
                &["kustomizations/finalizers"],
                &["update"],
            ),
            rule(
                &["image.toolkit.fluxcd.io"],
                &[
                    "imagerepositories",
                    "imagepolicies",
                    "imageupdateautomations",
                ],
                OBJECT,
            ),
            rule(
                &["image.toolkit.fluxcd.io"],
                &[
                    "imagerepositories/status",
                    "imagepolicies/status",
                    "imageupdateautomations/status",
                ],
                STATUS,
            ),
            rule(
                &["image.toolkit.fluxcd.io"],
                &[
                    "imagerepositories/finalizers",
                    "imagepolicies/finalizers",
                    "imageupdateautomations/finalizers",
                ],
                &["update"],
            ),
            // Receivers: status written; Alerts and Providers: read; the webhook server annotates
            // any Flux kind a Receiver names (covered by the reconciler binding below).
            rule(
                &["notification.toolkit.fluxcd.io"],
                &["receivers", "alerts", "providers"],
                OBJECT,
            ),
            rule(
                &["notification.toolkit.fluxcd.io"],
                &["receivers/status"],
                STATUS,
            ),
            rule(&["", "events.k8s.io"], &["events"], &["create", "patch"]),
        ]),
        ..Default::default()
    }
}

/// Binds a ClusterRole to Gantry's ServiceAccount.
///
/// `gantry-reconciler` binds `cluster-admin`, exactly as Flux binds its `cluster-reconciler`:
/// a Kustomization may apply any kind of object (CRDs, RBAC, namespaces), so the applier needs
/// every right. Tenants are confined with `spec.serviceAccountName`, which makes Gantry
/// impersonate a less privileged ServiceAccount for that Kustomization.
fn cluster_binding(name: &str, role: &str, namespace: &str) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name, None),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(vec![service_account_subject(namespace)]),
    }
}

fn service_account_subject(namespace: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: NAME.into(),
        namespace: Some(namespace.into()),
        ..Default::default()
    }
}

/// Leader election only needs Leases in Gantry's own namespace.
fn leader_election_role(namespace: &str) -> Role {
    Role {
        metadata: meta(&format!("{NAME}-leader-election"), Some(namespace)),
        rules: Some(vec![rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["get", "list", "watch", "create", "update", "patch"],
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
        subjects: Some(vec![service_account_subject(namespace)]),
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

/// `webhook-receiver`, the Service name Flux uses, so ingress set up for Flux keeps working.
fn webhook_service(namespace: &str) -> Service {
    Service {
        metadata: meta("webhook-receiver", Some(namespace)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::String("http-webhook".into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn deployment(namespace: &str, image: &str) -> Deployment {
    let quantity = |q: &str| Quantity(q.into());
    let container = Container {
        name: "manager".into(),
        image: Some(image.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        // `gantry run` serves on HEALTH_PORT and METRICS_PORT by default; no flags here, so the
        // manifest cannot drift from the command's options.
        args: Some(vec!["run".into()]),
        env: Some(vec![
            // Leader election identity and lease namespace.
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
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
        ]),
        liveness_probe: Some(http_probe("/healthz", 5)),
        readiness_probe: Some(http_probe("/readyz", 0)),
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

    fn args(crds: bool) -> InstallArgs {
        InstallArgs {
            crds,
            namespace: DEFAULT_NAMESPACE.into(),
            image: DEFAULT_IMAGE.into(),
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
        assert_eq!(typed, gantry_api::crds());
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
        let mut expected: Vec<Value> = gantry_api::crds()
            .iter()
            .map(|c| serde_json::to_value(c).unwrap())
            .collect();
        expected.extend(manifests(DEFAULT_NAMESPACE, DEFAULT_IMAGE).unwrap());
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
                crds: false,
                namespace: "ops".into(),
                image: "registry.local/gantry:dev".into(),
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
        let objects = manifests(DEFAULT_NAMESPACE, DEFAULT_IMAGE).unwrap();
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
        assert_eq!(container.image.as_deref(), Some(DEFAULT_IMAGE));
        assert!(DEFAULT_IMAGE.ends_with(env!("CARGO_PKG_VERSION")));
        assert_eq!(container.args.as_ref().unwrap()[0], "run");
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
        assert_eq!(ports, [HEALTH_PORT, METRICS_PORT, RECEIVER_PORT]);
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

    #[test]
    fn controller_role_covers_the_flux_kinds_and_their_status() {
        let role = controller_role();
        let granted = |resource: &str, verb: &str| {
            role.rules.iter().flatten().any(|r| {
                r.resources.iter().flatten().any(|x| x == resource)
                    && r.verbs.iter().any(|v| v == verb)
            })
        };
        assert!(granted("receivers/status", "patch"));
        for kind in ["alerts", "providers", "receivers"] {
            assert!(granted(kind, "watch"), "{kind}");
        }
        for kind in ["gitrepositories", "kustomizations"] {
            assert!(granted(kind, "watch"), "{kind}");
            assert!(granted(&format!("{kind}/status"), "patch"), "{kind}");
            assert!(granted(&format!("{kind}/finalizers"), "update"), "{kind}");
        }
        assert!(granted("events", "create"));
        assert!(
            !granted("leases", "create"),
            "leases are granted in the namespace only"
        );
    }
}
