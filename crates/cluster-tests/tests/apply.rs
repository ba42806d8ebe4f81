//! The apply engine against a real API server: staged server-side apply with dry-run, drift,
//! owner labels, Flux's annotations, force, prune and health waits.

use std::collections::BTreeMap;
use std::time::Duration;

use gantry_core::kustomize::inventory::{Inventory, InventoryEntry, ObjectId};
use gantry_core::kustomize::kstatus::Status;
use gantry_kustomize::apply::{
    Action, Applier, ApplyError, ApplyOptions, ChangeSet, FIELD_MANAGER, OWNER_NAME_LABEL,
    OWNER_NAMESPACE_LABEL, Owner,
};
use gantry_kustomize::health::{HealthError, WaitOptions};
use gantry_testkit::with_namespace;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

fn applier(client: &Client) -> Applier {
    Applier::new(client.clone(), FIELD_MANAGER)
}

fn opts(ns: &str) -> ApplyOptions {
    ApplyOptions::new(Owner::new("apps", ns))
}

fn config_map(ns: &str, name: &str, data: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": name, "namespace": ns },
        "data": data
    })
}

fn deployment(ns: &str, name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": name, "namespace": ns },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "app", "image": "registry.invalid/app:1.0.0" }] }
            }
        }
    })
}

/// The Flux benchmark's shape: ConfigMap, ServiceAccount, Service, Deployment.
fn app_set(ns: &str, mode: &str) -> Vec<Value> {
    vec![
        deployment(ns, "web", 1),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "web", "namespace": ns },
            "spec": { "selector": { "app": "web" }, "ports": [{ "port": 80, "targetPort": 8080 }] }
        }),
        config_map(ns, "settings", json!({ "mode": mode })),
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": { "name": "web", "namespace": ns }
        }),
    ]
}

fn actions(set: &ChangeSet) -> BTreeMap<String, Action> {
    set.entries
        .iter()
        .map(|e| (e.id.display(), e.action))
        .collect()
}

async fn resource_versions(client: &Client, ns: &str) -> Vec<String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get("settings")
        .await
        .unwrap();
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .get("web")
        .await
        .unwrap();
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get("web")
        .await
        .unwrap();
    let deploy = Api::<Deployment>::namespaced(client.clone(), ns)
        .get("web")
        .await
        .unwrap();
    [
        cm.resource_version(),
        sa.resource_version(),
        svc.resource_version(),
        deploy.metadata.generation.map(|g| g.to_string()),
    ]
    .into_iter()
    .map(Option::unwrap_or_default)
    .collect()
}

#[tokio::test]
async fn apply_creates_then_leaves_unchanged_objects_alone_then_configures_only_the_drifted() {
    with_namespace("apply", |client, ns| async move {
        let applier = applier(&client);

        let first = applier
            .apply(app_set(&ns, "staging"), &opts(&ns))
            .await
            .unwrap();
        let kinds: Vec<&str> = first.entries.iter().map(|e| e.id.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["ServiceAccount", "ConfigMap", "Service", "Deployment"],
            "applied in Flux's kind order"
        );
        assert!(
            first.entries.iter().all(|e| e.action == Action::Created),
            "{first:?}"
        );
        let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get("settings")
            .await
            .unwrap();
        assert_eq!(
            cm.labels().get(OWNER_NAME_LABEL).map(String::as_str),
            Some("apps")
        );
        assert_eq!(cm.labels().get(OWNER_NAMESPACE_LABEL), Some(&ns));
        let inventory = first.to_inventory();
        assert_eq!(
            inventory.to_pairs()[0],
            (format!("{ns}_web__ServiceAccount"), "v1".to_string())
        );
        // Deployment's controller writes status (and so resourceVersion) on its own; compare
        // its generation instead, and the others' resourceVersions.
        let before = resource_versions(&client, &ns).await;

        let second = applier
            .apply(app_set(&ns, "staging"), &opts(&ns))
            .await
            .unwrap();
        assert!(
            second.entries.iter().all(|e| e.action == Action::Unchanged),
            "nothing drifted: {second:?}"
        );
        assert!(!second.has_changes());
        assert_eq!(
            resource_versions(&client, &ns).await,
            before,
            "nothing was written"
        );

        let third = applier
            .apply(app_set(&ns, "production"), &opts(&ns))
            .await
            .unwrap();
        let changed: Vec<String> = third.changes().map(ToString::to_string).collect();
        assert_eq!(changed, [format!("ConfigMap/{ns}/settings configured")]);
        let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get("settings")
            .await
            .unwrap();
        assert_eq!(cm.data.unwrap()["mode"], "production");
    })
    .await;
}

#[tokio::test]
async fn drift_made_by_hand_is_corrected_and_kubectl_leftovers_are_cleaned() {
    with_namespace("drift", |client, ns| async move {
        let applier = applier(&client);
        let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
        // Created the way `kubectl apply` (client-side) does it.
        let mut by_kubectl: ConfigMap =
            serde_json::from_value(config_map(&ns, "settings", json!({ "mode": "staging" })))
                .unwrap();
        by_kubectl.annotations_mut().insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{\"data\":{\"mode\":\"staging\",\"old\":\"x\"}}".into(),
        );
        by_kubectl
            .data
            .as_mut()
            .unwrap()
            .insert("old".into(), "x".into());
        let params = PostParams {
            field_manager: Some("kubectl-client-side-apply".into()),
            ..PostParams::default()
        };
        cms.create(&params, &by_kubectl).await.unwrap();

        let set = vec![config_map(&ns, "settings", json!({ "mode": "staging" }))];
        let first = applier.apply(set.clone(), &opts(&ns)).await.unwrap();
        assert_eq!(first.entries[0].action, Action::Configured);
        let cm = cms.get("settings").await.unwrap();
        assert!(
            !cm.annotations()
                .contains_key("kubectl.kubernetes.io/last-applied-configuration"),
            "the client-side apply annotation is removed"
        );
        let managers: Vec<String> = cm
            .managed_fields()
            .iter()
            .filter_map(|m| m.manager.clone())
            .collect();
        assert!(
            !managers.iter().any(|m| m.starts_with("kubectl")),
            "kubectl's fields were taken over: {managers:?}"
        );
        assert_eq!(
            cm.data.as_ref().unwrap().get("old"),
            None,
            "a field only kubectl set, and git no longer has, is gone once taken over"
        );

        // Someone edits a field git owns.
        cms.patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "mode": "hacked" } })),
        )
        .await
        .unwrap();
        let fixed = applier.apply(set.clone(), &opts(&ns)).await.unwrap();
        assert_eq!(fixed.entries[0].action, Action::Configured);
        assert_eq!(
            cms.get("settings").await.unwrap().data.unwrap()["mode"],
            "staging"
        );
        let again = applier.apply(set, &opts(&ns)).await.unwrap();
        assert_eq!(again.entries[0].action, Action::Unchanged);
    })
    .await;
}

#[tokio::test]
async fn an_object_the_server_rejects_fails_the_whole_revision_and_writes_nothing() {
    with_namespace("reject", |client, ns| async move {
        let applier = applier(&client);
        applier.apply(app_set(&ns, "v1"), &opts(&ns)).await.unwrap();
        let before = resource_versions(&client, &ns).await;

        let bad_service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "broken", "namespace": ns },
            "spec": { "ports": [{ "port": 0 }] }
        });
        let mut no_selector = deployment(&ns, "headless", 1);
        no_selector["spec"]
            .as_object_mut()
            .unwrap()
            .remove("selector");

        for (bad, name) in [(bad_service, "Service"), (no_selector, "Deployment")] {
            let mut revision = app_set(&ns, "v2");
            revision.push(config_map(&ns, "brand-new", json!({ "a": "b" })));
            revision.push(bad);
            let err = applier.apply(revision, &opts(&ns)).await.unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, ApplyError::DryRun { .. }), "{name}: {err:?}");
            assert!(
                message.contains(&format!("{name}/{ns}/")) && message.contains("dry-run failed"),
                "{name}: the error names the object: {message}"
            );
            assert!(
                message.contains("Invalid"),
                "{name}: quotes the server: {message}"
            );

            assert_eq!(
                resource_versions(&client, &ns).await,
                before,
                "{name}: previous state intact"
            );
            let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
            assert_eq!(
                cms.get("settings").await.unwrap().data.unwrap()["mode"],
                "v1"
            );
            assert!(
                cms.get_opt("brand-new").await.unwrap().is_none(),
                "{name}: nothing new"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn an_unknown_kind_fails_with_a_clear_message_before_anything_is_written() {
    with_namespace("unknown", |client, ns| async move {
        let revision = vec![
            config_map(&ns, "settings", json!({})),
            json!({
                "apiVersion": "widgets.gantry.invalid/v1", "kind": "Widget",
                "metadata": { "name": "w1", "namespace": ns }, "spec": {}
            }),
        ];
        let err = applier(&client)
            .apply(revision, &opts(&ns))
            .await
            .unwrap_err();
        assert!(matches!(err, ApplyError::UnknownKind { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "Widget/{ns}/w1: no matches for kind \"Widget\" in version \
                 \"widgets.gantry.invalid/v1\" (is its CustomResourceDefinition installed?)"
            )
        );
        let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
        assert!(cms.get_opt("settings").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn a_crd_its_objects_and_a_new_namespace_apply_in_one_revision() {
    with_namespace("stage", |client, ns| async move {
        let group = format!("{ns}.gantry.test");
        let crd_name = format!("widgets.{group}");
        let extra_ns = format!("{ns}-extra");
        let revision = vec![
            json!({
                "apiVersion": "stable.invalid/v1", "kind": "Ignored",
                "metadata": { "name": "x", "annotations": {
                    "kustomize.toolkit.fluxcd.io/reconcile": "disabled" } }
            }),
            json!({
                "apiVersion": format!("{group}/v1"), "kind": "Widget",
                "metadata": { "name": "w1", "namespace": ns },
                "spec": { "size": 3 }
            }),
            config_map(&extra_ns, "inside", json!({ "a": "b" })),
            json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": extra_ns } }),
            json!({
                "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": { "name": crd_name },
                "spec": {
                    "group": group,
                    "scope": "Namespaced",
                    "names": { "plural": "widgets", "singular": "widget", "kind": "Widget",
                               "listKind": "WidgetList" },
                    "versions": [{
                        "name": "v1", "served": true, "storage": true,
                        "schema": { "openAPIV3Schema": { "type": "object", "properties": {
                            "spec": { "type": "object", "properties": {
                                "size": { "type": "integer", "maximum": 10 } } } } } }
                    }]
                }
            }),
        ];
        let applier = applier(&client);
        let result = applier.apply(revision.clone(), &opts(&ns)).await;
        // Clean up cluster-scoped objects whatever happened.
        let cleanup = async {
            let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
            let _ = crds.delete(&crd_name, &Default::default()).await;
            let nss: Api<Namespace> = Api::all(client.clone());
            let _ = nss.delete(&extra_ns, &Default::default()).await;
        };
        let set = match result {
            Ok(set) => set,
            Err(err) => {
                cleanup.await;
                panic!("staged apply failed: {err}");
            }
        };
        let got = actions(&set);
        assert_eq!(
            got[&format!("CustomResourceDefinition/{crd_name}")],
            Action::Created
        );
        assert_eq!(got[&format!("Namespace/{extra_ns}")], Action::Created);
        assert_eq!(got[&format!("Widget/{ns}/w1")], Action::Created);
        assert_eq!(
            got[&format!("ConfigMap/{extra_ns}/inside")],
            Action::Created
        );
        assert_eq!(
            got["Ignored/x"],
            Action::Skipped,
            "reconcile: disabled is skipped"
        );

        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, "v1", "Widget"));
        let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        assert_eq!(widgets.get("w1").await.unwrap().data["spec"]["size"], 3);

        // Again: all unchanged, the custom object included.
        let again = applier.apply(revision.clone(), &opts(&ns)).await.unwrap();
        assert!(!again.has_changes(), "{again:?}");

        // A custom object the CRD's schema rejects is refused at dry-run, naming it.
        let mut invalid = revision.clone();
        invalid[1]["spec"]["size"] = json!(99);
        let err = applier.apply(invalid, &opts(&ns)).await.unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("Widget/{ns}/w1 dry-run failed")),
            "{err}"
        );

        // delete_all (deletionPolicy: Delete) removes everything, the CRD and Namespace last.
        let inventory = set.to_inventory();
        let deleted = applier
            .delete_all(&inventory, &Owner::new("apps", &ns))
            .await
            .unwrap();
        let order: Vec<String> = deleted
            .with_action(Action::Deleted)
            .map(|e| e.id.kind.clone())
            .collect();
        assert_eq!(
            order,
            [
                "Widget",
                "ConfigMap",
                "Namespace",
                "CustomResourceDefinition"
            ],
            "{deleted:?}"
        );
        cleanup.await;
    })
    .await;
}

#[tokio::test]
async fn immutable_field_changes_fail_without_force_and_recreate_with_it() {
    with_namespace("force", |client, ns| async move {
        let applier = applier(&client);
        let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
        applier
            .apply(vec![deployment(&ns, "web", 0)], &opts(&ns))
            .await
            .unwrap();
        let uid = deployments.get("web").await.unwrap().uid();

        let mut changed = deployment(&ns, "web", 0);
        changed["spec"]["selector"]["matchLabels"]["tier"] = json!("front");
        changed["spec"]["template"]["metadata"]["labels"]["tier"] = json!("front");
        let err = applier
            .apply(vec![changed.clone()], &opts(&ns))
            .await
            .unwrap_err();
        assert!(matches!(err, ApplyError::Immutable { .. }), "{err:?}");
        assert!(err.to_string().contains("field is immutable"), "{err}");
        assert_eq!(
            deployments.get("web").await.unwrap().uid(),
            uid,
            "untouched"
        );

        let mut forced = opts(&ns);
        forced.force = true;
        let set = applier.apply(vec![changed.clone()], &forced).await.unwrap();
        assert_eq!(set.entries[0].action, Action::Created, "recreated");
        let recreated = deployments.get("web").await.unwrap();
        assert_ne!(recreated.uid(), uid);
        assert_eq!(
            recreated.spec.unwrap().selector.match_labels.unwrap()["tier"],
            "front"
        );

        // The per-object annotation does the same without spec.force.
        let mut annotated = deployment(&ns, "web", 0);
        annotated["metadata"]["annotations"] =
            json!({ "kustomize.toolkit.fluxcd.io/force": "Enabled" });
        let uid = deployments.get("web").await.unwrap().uid();
        let set = applier.apply(vec![annotated], &opts(&ns)).await.unwrap();
        assert_eq!(set.entries[0].action, Action::Created);
        assert_ne!(deployments.get("web").await.unwrap().uid(), uid);
    })
    .await;
}

#[tokio::test]
async fn prune_deletes_only_stale_objects_that_carry_our_labels() {
    with_namespace("prune", |client, ns| async move {
        let applier = applier(&client);
        let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
        let mut keep = config_map(&ns, "keep-me", json!({}));
        keep["metadata"]["annotations"] =
            json!({ "kustomize.toolkit.fluxcd.io/prune": "Disabled" });
        let first = applier
            .apply(
                vec![
                    config_map(&ns, "stays", json!({})),
                    config_map(&ns, "goes", json!({})),
                    keep,
                ],
                &opts(&ns),
            )
            .await
            .unwrap();
        // In the inventory but not ours: a hand-made object, and one another Kustomization owns.
        let mut previous = first.to_inventory();
        let mut foreign = ConfigMap::default();
        foreign.meta_mut().name = Some("hand-made".into());
        cms.create(&PostParams::default(), &foreign).await.unwrap();
        previous.insert(ObjectId::new(&ns, "hand-made", "", "ConfigMap"), "v1");
        let other_owner = ApplyOptions::new(Owner::new("other", &ns));
        applier
            .apply(vec![config_map(&ns, "theirs", json!({}))], &other_owner)
            .await
            .unwrap();
        previous.insert(ObjectId::new(&ns, "theirs", "", "ConfigMap"), "v1");
        // And one that is already gone.
        previous.insert(ObjectId::new(&ns, "vanished", "", "ConfigMap"), "v1");

        let second = applier
            .apply(vec![config_map(&ns, "stays", json!({}))], &opts(&ns))
            .await
            .unwrap();
        let current = second.to_inventory();
        let pruned = applier
            .prune(&previous, &current, &Owner::new("apps", &ns))
            .await
            .unwrap();
        let got = actions(&pruned);
        assert_eq!(got.len(), 4, "the vanished object is not reported: {got:?}");
        assert_eq!(got[&format!("ConfigMap/{ns}/goes")], Action::Deleted);
        assert_eq!(got[&format!("ConfigMap/{ns}/keep-me")], Action::Skipped);
        assert_eq!(got[&format!("ConfigMap/{ns}/hand-made")], Action::Skipped);
        assert_eq!(got[&format!("ConfigMap/{ns}/theirs")], Action::Skipped);

        for (name, exists) in [
            ("stays", true),
            ("goes", false),
            ("keep-me", true),
            ("hand-made", true),
            ("theirs", true),
        ] {
            assert_eq!(cms.get_opt(name).await.unwrap().is_some(), exists, "{name}");
        }
        let gone: Vec<InventoryEntry> = previous
            .entries
            .iter()
            .filter(|e| e.id.name == "goes")
            .cloned()
            .collect();
        applier
            .wait_for_termination(&gone, Duration::from_secs(30), Duration::from_millis(200))
            .await
            .expect("deleted objects terminate");
        // Nothing stale: nothing to do.
        let none = applier
            .prune(&current, &current, &Owner::new("apps", &ns))
            .await
            .unwrap();
        assert!(none.entries.is_empty());
    })
    .await;
}

#[tokio::test]
async fn ssa_if_not_present_and_ignore() {
    with_namespace("ssa", |client, ns| async move {
        let applier = applier(&client);
        let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
        let annotated = |name: &str, mode: &str, value: &str| {
            let mut cm = config_map(&ns, name, json!({ "mode": mode }));
            cm["metadata"]["annotations"] = json!({ "kustomize.toolkit.fluxcd.io/ssa": value });
            cm
        };

        // IfNotPresent: created once, never updated, recreated when deleted.
        let set = applier
            .apply(vec![annotated("seed", "one", "IfNotPresent")], &opts(&ns))
            .await
            .unwrap();
        assert_eq!(set.entries[0].action, Action::Created);
        let set = applier
            .apply(vec![annotated("seed", "two", "ifnotpresent")], &opts(&ns))
            .await
            .unwrap();
        assert_eq!(set.entries[0].action, Action::Skipped);
        assert_eq!(cms.get("seed").await.unwrap().data.unwrap()["mode"], "one");
        cms.delete("seed", &Default::default()).await.unwrap();
        let set = applier
            .apply(vec![annotated("seed", "two", "IfNotPresent")], &opts(&ns))
            .await
            .unwrap();
        assert_eq!(set.entries[0].action, Action::Created);
        assert_eq!(cms.get("seed").await.unwrap().data.unwrap()["mode"], "two");

        // Ignore in git: never applied.
        let set = applier
            .apply(vec![annotated("ignored", "x", "Ignore")], &opts(&ns))
            .await
            .unwrap();
        assert_eq!(set.entries[0].action, Action::Skipped);
        assert!(cms.get_opt("ignored").await.unwrap().is_none());

        // Ignore on the live object (set by hand): git's changes are not applied.
        applier
            .apply(
                vec![config_map(&ns, "live", json!({ "mode": "git" }))],
                &opts(&ns),
            )
            .await
            .unwrap();
        cms.patch(
            "live",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": {
                "kustomize.toolkit.fluxcd.io/ssa": "ignore" } }, "data": { "mode": "manual" } })),
        )
        .await
        .unwrap();
        let set = applier
            .apply(
                vec![config_map(&ns, "live", json!({ "mode": "git" }))],
                &opts(&ns),
            )
            .await
            .unwrap();
        assert_eq!(set.entries[0].action, Action::Skipped);
        assert_eq!(
            cms.get("live").await.unwrap().data.unwrap()["mode"],
            "manual"
        );

        // Merge: fields another manager owns stay.
        applier
            .apply(vec![annotated("merged", "git", "Merge")], &opts(&ns))
            .await
            .unwrap();
        cms.patch(
            "merged",
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(json!({ "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": "merged" }, "data": { "extra": "theirs" } })),
        )
        .await
        .unwrap();
        applier
            .apply(vec![annotated("merged", "git2", "Merge")], &opts(&ns))
            .await
            .unwrap();
        let data = cms.get("merged").await.unwrap().data.unwrap();
        assert_eq!(data["mode"], "git2");
        assert_eq!(data["extra"], "theirs");
    })
    .await;
}

fn entry(ns: &str, name: &str) -> InventoryEntry {
    InventoryEntry {
        id: ObjectId::new(ns, name, "apps", "Deployment"),
        version: "v1".into(),
    }
}

#[tokio::test]
async fn health_wait_sees_a_deployment_become_current() {
    with_namespace("health", |client, ns| async move {
        let applier = applier(&client);
        let set = applier
            .apply(vec![deployment(&ns, "web", 2)], &opts(&ns))
            .await
            .unwrap();
        let inventory: Inventory = set.to_inventory();
        applier
            .wait(
                &inventory.entries,
                &WaitOptions::new(Duration::from_secs(90)),
            )
            .await
            .expect("kwok makes the Pods ready, so the Deployment becomes Current");
    })
    .await;
}

fn unschedulable(ns: &str, name: &str, progress_deadline: Option<i32>) -> Value {
    let mut d = deployment(ns, name, 1);
    d["spec"]["template"]["spec"]["nodeSelector"] = json!({ "gantry.dev/no-such-node": "true" });
    if let Some(seconds) = progress_deadline {
        d["spec"]["progressDeadlineSeconds"] = json!(seconds);
    }
    d
}

#[tokio::test]
async fn health_wait_times_out_listing_what_is_not_ready() {
    with_namespace("timeout", |client, ns| async move {
        let applier = applier(&client);
        applier
            .apply(
                vec![deployment(&ns, "web", 1), unschedulable(&ns, "stuck", None)],
                &opts(&ns),
            )
            .await
            .unwrap();
        // `web` first becomes ready on its own (under load this can take a while) ...
        applier
            .wait(
                &[entry(&ns, "web")],
                &WaitOptions::new(Duration::from_secs(90)),
            )
            .await
            .unwrap();
        // ... while `stuck` never will.
        let opts = WaitOptions {
            timeout: Duration::from_secs(5),
            interval: Duration::from_millis(500),
            fail_fast: true,
        };
        let err = applier
            .wait(&[entry(&ns, "web"), entry(&ns, "stuck")], &opts)
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, HealthError::Timeout { .. }), "{err:?}");
        assert!(
            message.starts_with(&format!(
                "timeout waiting for: [Deployment/{ns}/stuck status: 'InProgress'"
            )),
            "{message}"
        );
        assert_eq!(err.unhealthy().len(), 1, "web became ready: {message}");

        // A missing object is reported as NotFound.
        let err = applier
            .wait(
                &[entry(&ns, "absent")],
                &WaitOptions {
                    timeout: Duration::from_secs(1),
                    ..opts
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.unhealthy()[0].status, Status::NotFound);
    })
    .await;
}

#[tokio::test]
async fn health_wait_fails_fast_when_the_progress_deadline_is_exceeded() {
    with_namespace("failfast", |client, ns| async move {
        let applier = applier(&client);
        applier
            .apply(vec![unschedulable(&ns, "doomed", Some(1))], &opts(&ns))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let err = applier
            .wait(
                &[entry(&ns, "doomed")],
                &WaitOptions {
                    timeout: Duration::from_secs(120),
                    interval: Duration::from_millis(500),
                    fail_fast: true,
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, HealthError::Failed { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "failed early due to stalled resources: [Deployment/{ns}/doomed status: \
                 'Failed': Progress deadline exceeded]"
            )
        );
        assert!(started.elapsed() < Duration::from_secs(90), "failed fast");
    })
    .await;
}

#[tokio::test]
async fn secrets_and_cluster_scoped_objects_are_unchanged_on_reapply() {
    with_namespace("scope", |client, ns| async move {
        let applier = applier(&client);
        let role = format!("{ns}-reader");
        let revision = vec![
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": { "name": "token", "namespace": ns },
                "stringData": { "token": "s3cr3t" }
            }),
            // A stray namespace on a cluster-scoped object is dropped, as kubectl does.
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": { "name": role, "namespace": ns },
                "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"] }]
            }),
        ];
        let first = applier.apply(revision.clone(), &opts(&ns)).await.unwrap();
        let got = actions(&first);
        assert_eq!(
            got[&format!("ClusterRole/{role}")],
            Action::Created,
            "{got:?}"
        );
        assert_eq!(got[&format!("Secret/{ns}/token")], Action::Created);
        let second = applier.apply(revision, &opts(&ns)).await.unwrap();
        assert!(
            !second.has_changes(),
            "stringData compares as data: {second:?}"
        );

        let deleted = applier
            .delete_all(&first.to_inventory(), &Owner::new("apps", &ns))
            .await
            .unwrap();
        assert_eq!(deleted.with_action(Action::Deleted).count(), 2);

        // A namespaced object without a namespace is refused before anything is written.
        let err = applier
            .apply(
                vec![json!({ "apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": { "name": "nowhere" } })],
                &opts(&ns),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ApplyError::InvalidObject { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("ConfigMap/nowhere: namespace not specified"),
            "{err}"
        );
    })
    .await;
}

#[tokio::test]
async fn health_wait_waits_for_a_job_to_complete() {
    with_namespace("job", |client, ns| async move {
        let applier = applier(&client);
        let set = applier
            .apply(
                vec![json!({
                    "apiVersion": "batch/v1", "kind": "Job",
                    "metadata": { "name": "migrate", "namespace": ns },
                    "spec": { "backoffLimit": 0, "template": { "spec": {
                        "restartPolicy": "Never",
                        "containers": [{ "name": "m", "image": "registry.invalid/migrate:1" }]
                    } } }
                })],
                &opts(&ns),
            )
            .await
            .unwrap();
        applier
            .wait(
                &set.health_targets(),
                &WaitOptions::new(Duration::from_secs(90)),
            )
            .await
            .expect("kwok completes the Job's Pod, and the wait ends only then");
        let jobs: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &ns,
            &ApiResource::from_gvk(&GroupVersionKind::gvk("batch", "v1", "Job")),
        );
        let job = jobs.get("migrate").await.unwrap();
        let complete = job.data["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Complete" && c["status"] == "True")
            });
        assert!(complete, "{:#}", job.data["status"]);
    })
    .await;
}
