//! The objects the serving controllers create, built as Knative builds them
//! (`pkg/reconciler/configuration/resources`, `pkg/reconciler/revision/resources`): a Revision
//! from a Service's template, the Revision's Deployment, and the Kubernetes Service that sends
//! in-cluster calls to Gantry's router.

use std::collections::BTreeMap;

use gantry_api::serving::v1::{Container, Revision, RevisionSpec, Service};
use gantry_api::serving::{
    self, APP_LABEL, CONFIGURATION_GENERATION_LABEL, CONFIGURATION_LABEL, CONFIGURATION_UID_LABEL,
    DEFAULT_CONTAINER_ANNOTATION, DEFAULT_CONTAINER_NAME, DEFAULT_TIMEOUT_SECONDS, REVISION_LABEL,
    REVISION_UID_LABEL, ROUTING_STATE_LABEL, ROUTING_STATE_MODIFIED_ANNOTATION, SERVICE_LABEL,
    SERVICE_UID_LABEL, USER_PORT_NAME,
};
use gantry_core::serving::naming;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    self as core, EnvVar, PodSpec, PodTemplateSpec, Probe, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

/// Knative's `progress-deadline` default (`config-deployment`).
pub const PROGRESS_DEADLINE_SECONDS: i32 = 600;
/// Knative's label on the placeholder Service, naming its Route (the Service's name).
pub const ROUTE_LABEL: &str = "serving.knative.dev/route";

/// A controller owner reference to `obj`, as `kmeta.NewControllerRef` writes it.
pub fn controller_ref<K: Resource<DynamicType = ()>>(obj: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: obj.name_any(),
        uid: obj.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Knative's defaults for a Revision spec (its webhook applies them; Gantry has no webhook, so
/// the controller stores them): container name, the default TCP readiness probe, a success
/// threshold, `timeoutSeconds` and `containerConcurrency`.
pub fn defaulted(spec: &RevisionSpec) -> RevisionSpec {
    let mut spec = spec.clone();
    if let Some(container) = spec.containers.first_mut() {
        if container.name.as_deref().is_none_or(str::is_empty) {
            container.name = Some(DEFAULT_CONTAINER_NAME.to_owned());
        }
        let mut probe = container
            .readiness_probe
            .take()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        let handlers = ["tcpSocket", "httpGet", "exec", "grpc"];
        if !handlers.iter().any(|h| probe.get(h).is_some()) {
            probe["tcpSocket"] = json!({ "port": 0 });
        }
        if probe.get("successThreshold").is_none() {
            probe["successThreshold"] = json!(1);
        }
        container.readiness_probe = Some(probe);
    }
    spec.timeout_seconds.get_or_insert(DEFAULT_TIMEOUT_SECONDS);
    spec.container_concurrency.get_or_insert(0);
    spec
}

/// The Revision generation `generation` of `svc`'s template stamps out, named `name`.
pub fn revision(svc: &Service, name: &str, generation: i64) -> Revision {
    let template = &svc.spec.template;
    let svc_name = svc.name_any();
    let uid = svc.uid().unwrap_or_default();
    let mut labels = template.metadata.labels.clone();
    labels.insert(SERVICE_LABEL.into(), svc_name.clone());
    labels.insert(SERVICE_UID_LABEL.into(), uid.clone());
    labels.insert(CONFIGURATION_LABEL.into(), svc_name);
    labels.insert(CONFIGURATION_UID_LABEL.into(), uid);
    labels.insert(
        CONFIGURATION_GENERATION_LABEL.into(),
        generation.to_string(),
    );
    let mut annotations = template.metadata.annotations.clone();
    for key in [
        serving::CREATOR_ANNOTATION,
        serving::LAST_MODIFIER_ANNOTATION,
    ] {
        if let Some(v) = svc.annotations().get(key) {
            annotations.insert(key.to_owned(), v.clone());
        }
    }
    let mut rev = Revision::new(name, defaulted(&template.spec));
    rev.metadata.namespace = svc.namespace();
    rev.metadata.labels = Some(labels);
    rev.metadata.annotations = Some(annotations);
    rev.metadata.owner_references = Some(vec![controller_ref(svc)]);
    rev
}

/// Whether `rev` is what `svc`'s current template stamps out (same defaulted spec, the
/// template's labels and annotations, the template's name if it has one).
pub fn matches_template(rev: &Revision, svc: &Service) -> bool {
    let template = &svc.spec.template;
    let subset = |want: &BTreeMap<String, String>, have: &BTreeMap<String, String>| {
        want.iter().all(|(k, v)| have.get(k) == Some(v))
    };
    template
        .metadata
        .name
        .as_deref()
        .is_none_or(|n| n == rev.name_any())
        && rev.spec == defaulted(&template.spec)
        && subset(&template.metadata.labels, rev.labels())
        && subset(&template.metadata.annotations, rev.annotations())
}

/// The configuration generation a Revision was stamped out by (its label).
pub fn generation_of(rev: &Revision) -> i64 {
    rev.labels()
        .get(CONFIGURATION_GENERATION_LABEL)
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

/// Labels Knative keeps off the Deployment and pods (they change while the Revision does not).
fn deployment_labels(rev: &Revision) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = rev
        .labels()
        .iter()
        .filter(|(k, _)| k.as_str() != ROUTE_LABEL && k.as_str() != ROUTING_STATE_LABEL)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(REVISION_LABEL.into(), rev.name_any());
    labels.insert(REVISION_UID_LABEL.into(), rev.uid().unwrap_or_default());
    labels
        .entry(APP_LABEL.into())
        .or_insert_with(|| rev.name_any());
    labels
}

/// Annotations Knative keeps off the Deployment and pods: routing bookkeeping and the
/// autoscaler's settings.
fn deployment_annotations(rev: &Revision) -> BTreeMap<String, String> {
    let excluded = [
        "serving.knative.dev/lastPinned",
        serving::NO_GC_ANNOTATION,
        ROUTING_STATE_MODIFIED_ANNOTATION,
        "serving.knative.dev/routes",
    ];
    rev.annotations()
        .iter()
        .filter(|(k, _)| {
            !excluded.contains(&k.as_str()) && !k.starts_with(serving::AUTOSCALING_PREFIX)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The Revision's Deployment, `<revision>-deployment`, with `replicas` set to `replicas` (the
/// initial scale: only ever written at creation).
pub fn deployment(rev: &Revision, replicas: i32) -> Deployment {
    let labels = deployment_labels(rev);
    let mut pod_annotations = deployment_annotations(rev);
    let spec = &rev.spec;
    let container = spec.container().cloned().unwrap_or_default();
    if let Some(name) = &container.name {
        pod_annotations.insert(DEFAULT_CONTAINER_ANNOTATION.into(), name.clone());
    }
    let uid = rev.uid().unwrap_or_default();
    Deployment {
        metadata: ObjectMeta {
            name: Some(naming::deployment_name(&rev.name_any())),
            namespace: rev.namespace(),
            labels: Some(labels.clone()),
            annotations: Some(deployment_annotations(rev)),
            owner_references: Some(vec![controller_ref(rev)]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(REVISION_UID_LABEL.to_owned(), uid)])),
                ..LabelSelector::default()
            },
            progress_deadline_seconds: Some(PROGRESS_DEADLINE_SECONDS),
            revision_history_limit: Some(0),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::String("25%".into())),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(spec, &container)),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn pod_spec(spec: &RevisionSpec, container: &Container) -> PodSpec {
    PodSpec {
        containers: vec![serving_container(container)],
        volumes: (!spec.volumes.is_empty()).then(|| spec.volumes.clone()),
        service_account_name: spec.service_account_name.clone(),
        image_pull_secrets: (!spec.image_pull_secrets.is_empty())
            .then(|| spec.image_pull_secrets.clone()),
        // Knative: in-flight requests get the request timeout to finish.
        termination_grace_period_seconds: spec.timeout_seconds,
        // Knative's `enable-service-links` default.
        enable_service_links: Some(false),
        ..PodSpec::default()
    }
}

/// The serving container: one port named `user-port`, `PORT` in the environment, the readiness
/// probe aimed at that port when it names none (Knative's default probe is a TCP connect).
fn serving_container(c: &Container) -> core::Container {
    let port = c.user_port();
    let mut env = c.env.clone();
    env.push(EnvVar {
        name: "PORT".into(),
        value: Some(port.to_string()),
        value_from: None,
    });
    core::Container {
        name: c
            .name
            .clone()
            .unwrap_or_else(|| DEFAULT_CONTAINER_NAME.to_owned()),
        image: c.image.clone(),
        command: (!c.command.is_empty()).then(|| c.command.clone()),
        args: (!c.args.is_empty()).then(|| c.args.clone()),
        ports: Some(vec![core::ContainerPort {
            name: Some(USER_PORT_NAME.into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..core::ContainerPort::default()
        }]),
        env: Some(env),
        env_from: (!c.env_from.is_empty()).then(|| c.env_from.clone()),
        resources: c.resources.clone(),
        readiness_probe: Some(readiness_probe(c.readiness_probe.as_ref(), port)),
        volume_mounts: (!c.volume_mounts.is_empty()).then(|| c.volume_mounts.clone()),
        ..core::Container::default()
    }
}

/// The probe as written, with an unset or zero `tcpSocket`/`httpGet`/`grpc` port set to the
/// serving port; a TCP probe of that port when there is none.
pub fn readiness_probe(probe: Option<&Value>, port: i32) -> Probe {
    let mut probe = probe
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let handlers = ["tcpSocket", "httpGet", "exec", "grpc"];
    if !handlers.iter().any(|h| probe.get(h).is_some()) {
        probe["tcpSocket"] = json!({});
    }
    for handler in ["tcpSocket", "httpGet", "grpc"] {
        if let Some(h) = probe.get_mut(handler).and_then(Value::as_object_mut) {
            let unset = h
                .get("port")
                .is_none_or(|p| p.is_null() || *p == json!(0) || *p == json!(""));
            if unset {
                h.insert("port".into(), json!(port));
            }
        }
    }
    serde_json::from_value(probe).unwrap_or_else(|_| Probe {
        tcp_socket: Some(core::TCPSocketAction {
            port: IntOrString::Int(port),
            host: None,
        }),
        success_threshold: Some(1),
        ..Probe::default()
    })
}

/// The Kubernetes Service named after Knative Service `svc`: an ExternalName pointing at
/// Gantry's router (`router_host`), as Knative's placeholder Service points at its ingress.
pub fn placeholder_service(svc: &Service, router_host: &str) -> core::Service {
    let name = svc.name_any();
    core::Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: svc.namespace(),
            labels: Some(BTreeMap::from([
                (SERVICE_LABEL.to_owned(), name.clone()),
                (ROUTE_LABEL.to_owned(), name),
            ])),
            owner_references: Some(vec![controller_ref(svc)]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some(router_host.to_owned()),
            session_affinity: Some("None".into()),
            ports: Some(vec![ServicePort {
                name: Some("http2".into()),
                port: 80,
                target_port: Some(IntOrString::Int(80)),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ksvc() -> Service {
        let mut svc: Service = serde_json::from_value(json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": { "name": "hello", "namespace": "team", "uid": "svc-uid" },
            "spec": { "template": {
                "metadata": {
                    "labels": { "tier": "web" },
                    "annotations": { "autoscaling.knative.dev/min-scale": "1", "note": "x" }
                },
                "spec": { "containers": [{ "image": "img", "ports": [{ "containerPort": 9000 }] }] }
            } }
        }))
        .unwrap();
        svc.metadata.generation = Some(3);
        svc
    }

    #[test]
    fn a_revision_carries_knatives_labels_and_defaults() {
        let svc = ksvc();
        let rev = revision(&svc, "hello-00001", 1);
        let labels = rev.labels();
        assert_eq!(labels[SERVICE_LABEL], "hello");
        assert_eq!(labels[CONFIGURATION_LABEL], "hello");
        assert_eq!(labels[CONFIGURATION_GENERATION_LABEL], "1");
        assert_eq!(labels["tier"], "web");
        let c = rev.spec.container().unwrap();
        assert_eq!(c.name.as_deref(), Some("user-container"));
        assert_eq!(
            c.readiness_probe,
            Some(json!({ "tcpSocket": { "port": 0 }, "successThreshold": 1 }))
        );
        assert_eq!(rev.spec.timeout_seconds, Some(300));
        assert!(matches_template(&rev, &svc));
        let mut changed = svc.clone();
        changed.spec.template.spec.containers[0].image = Some("img:2".into());
        assert!(!matches_template(&rev, &changed));
        let mut named = svc.clone();
        named.spec.template.metadata.name = Some("hello-v1".into());
        assert!(!matches_template(&rev, &named));
        assert_eq!(generation_of(&rev), 1);
    }

    #[test]
    fn the_deployment_is_knatives() {
        let mut rev = revision(&ksvc(), "hello-00001", 1);
        rev.metadata.uid = Some("rev-uid".into());
        let d = deployment(&rev, 2);
        assert_eq!(d.metadata.name.as_deref(), Some("hello-00001-deployment"));
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        assert_eq!(
            spec.selector.match_labels.unwrap()[REVISION_UID_LABEL],
            "rev-uid"
        );
        let meta = spec.template.metadata.unwrap();
        let labels = meta.labels.unwrap();
        for key in [
            SERVICE_LABEL,
            CONFIGURATION_LABEL,
            REVISION_LABEL,
            REVISION_UID_LABEL,
        ] {
            assert!(labels.contains_key(key), "{key}");
        }
        let annotations = meta.annotations.unwrap();
        assert_eq!(annotations["note"], "x");
        assert!(!annotations.contains_key("autoscaling.knative.dev/min-scale"));
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 9000);
        assert!(
            c.env
                .as_ref()
                .unwrap()
                .iter()
                .any(|e| e.name == "PORT" && e.value.as_deref() == Some("9000"))
        );
        let probe = c.readiness_probe.as_ref().unwrap();
        assert_eq!(
            probe.tcp_socket.as_ref().unwrap().port,
            IntOrString::Int(9000)
        );
        assert_eq!(pod.termination_grace_period_seconds, Some(300));
    }

    #[test]
    fn a_probe_without_a_port_gets_the_serving_port() {
        let p = readiness_probe(Some(&json!({ "httpGet": { "path": "/healthz" } })), 8080);
        let get = p.http_get.unwrap();
        assert_eq!(get.port, IntOrString::Int(8080));
        assert_eq!(get.path.as_deref(), Some("/healthz"));
        let p = readiness_probe(Some(&json!({ "tcpSocket": { "port": 7000 } })), 8080);
        assert_eq!(p.tcp_socket.unwrap().port, IntOrString::Int(7000));
    }

    #[test]
    fn the_placeholder_points_at_the_router() {
        let s = placeholder_service(&ksvc(), "gantry-serving.gantry-system.svc.cluster.local");
        let spec = s.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ExternalName"));
        assert_eq!(
            spec.external_name.as_deref(),
            Some("gantry-serving.gantry-system.svc.cluster.local")
        );
        assert_eq!(s.metadata.name.as_deref(), Some("hello"));
    }
}
