use std::collections::HashMap;
use std::sync::Arc;

use gantry_api::kustomize::v1::{
    ARTIFACT_FAILED_REASON, CrossNamespaceSourceReference, KustomizationSpec,
    RECONCILIATION_FAILED_REASON, SourceKind,
};
use gantry_api::meta::{DependencyReference, STALLED_CONDITION};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;

use super::*;
use crate::controller::users_of;

fn kustomization(namespace: &str, name: &str, source: &str, deps: &[&str]) -> Kustomization {
    let mut ks = Kustomization::new(
        name,
        KustomizationSpec {
            interval: "10m".into(),
            source_ref: CrossNamespaceSourceReference {
                kind: SourceKind::GitRepository,
                name: source.into(),
                ..Default::default()
            },
            depends_on: deps
                .iter()
                .map(|d| {
                    let (ns, name) = d.split_once('/').map_or((None, *d), |(n, d)| (Some(n), d));
                    DependencyReference {
                        name: name.into(),
                        namespace: ns.map(str::to_owned),
                        ..Default::default()
                    }
                })
                .collect(),
            ..Default::default()
        },
    );
    ks.metadata.namespace = Some(namespace.into());
    ks.metadata.generation = Some(1);
    ks
}

/// `ks` after a successful run of `revision`.
fn applied(mut ks: Kustomization, revision: &str) -> Kustomization {
    let mut status = KustomizationStatus::default();
    settle(&ks, &mut status, &Ok(revision.into()));
    ks.status = Some(status);
    ks
}

#[test]
fn durations_print_as_go_prints_them() {
    assert_eq!(go_duration(Duration::from_secs(30)), "30s");
    assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
    assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
    assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
    assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
    assert_eq!(
        progress_message("main@sha1:abc", Duration::from_secs(300)),
        "Fetching manifests for revision main@sha1:abc with a timeout of 5m0s"
    );
}

#[test]
fn failures_are_announced_as_flux_announces_them() {
    let failed = Failure::new(
        RECONCILIATION_FAILED_REASON,
        "Deployment/a/web dry-run failed",
    );
    assert_eq!(announcement(&failed, false), Some(Severity::Error));
    // The same Ready condition again: the retry is not news.
    assert_eq!(announcement(&failed, true), None);
    // Created before its source has an artifact (everything applied at once): only a log,
    // or every start would alert.
    let no_artifact = Failure::new(ARTIFACT_FAILED_REASON, "Source is not ready").waiting(None);
    assert_eq!(announcement(&no_artifact, false), None);
    let dependency = Failure::dependency("a", "b", "is not ready");
    assert_eq!(dependency.message, "dependency 'a/b' is not ready");
    assert_eq!(announcement(&dependency, false), Some(Severity::Info));
    // A path missing from the revision is a failure, even with the same reason.
    let no_path = Failure::new(ARTIFACT_FAILED_REASON, "kustomization path not found");
    assert_eq!(announcement(&no_path, false), Some(Severity::Error));
}

#[test]
fn a_retry_of_the_same_failure_is_unchanged_a_new_message_is_not() {
    let ks = kustomization("apps", "web", "repo", &[]);
    let mut previous = KustomizationStatus::default();
    let failure = Failure::new(RECONCILIATION_FAILED_REASON, "dry-run failed");
    assert!(!unchanged(&previous, &failure), "no Ready yet");
    settle(
        &ks,
        &mut previous,
        &Err(Failure::new(RECONCILIATION_FAILED_REASON, "dry-run failed")),
    );
    assert!(unchanged(&previous, &failure));
    let other = Failure::new(RECONCILIATION_FAILED_REASON, "another object failed");
    assert!(!unchanged(&previous, &other));
}

#[test]
fn a_failure_sets_ready_false_and_only_a_terminal_one_stalls() {
    let ks = kustomization("apps", "web", "repo", &[]);
    let mut status = applied(ks.clone(), "main@sha1:1")
        .status
        .unwrap_or_default();
    settle(
        &ks,
        &mut status,
        &Err(Failure::new(RECONCILIATION_FAILED_REASON, "boom")),
    );
    let ready = conditions::get(&status.conditions, READY_CONDITION)
        .map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()));
    assert_eq!(ready, Some(("False", RECONCILIATION_FAILED_REASON, "boom")));
    assert!(!conditions::is_true(&status.conditions, STALLED_CONDITION));
    assert_eq!(
        status.last_applied_revision.as_deref(),
        Some("main@sha1:1"),
        "a failure keeps what was applied"
    );

    let cycle = Failure::new(DEPENDENCY_NOT_READY_REASON, "dependency cycle detected").terminal();
    settle(&ks, &mut status, &Err(cycle));
    assert!(conditions::is_true(&status.conditions, STALLED_CONDITION));

    let mut unhealthy = Failure::new(HEALTH_CHECK_FAILED_REASON, "timeout waiting for: [...]");
    unhealthy.healthy = Some(false);
    settle(&ks, &mut status, &Err(unhealthy));
    let healthy = conditions::get(&status.conditions, HEALTHY_CONDITION)
        .map(|c| (c.status.as_str(), c.reason.as_str()));
    assert_eq!(healthy, Some(("False", HEALTH_CHECK_FAILED_REASON)));
    assert!(
        !conditions::is_true(&status.conditions, STALLED_CONDITION),
        "retryable again"
    );

    settle(&ks, &mut status, &Ok("main@sha1:2".into()));
    assert!(conditions::is_true(&status.conditions, READY_CONDITION));
    assert_eq!(
        status.last_attempted_revision.as_deref(),
        Some("main@sha1:2")
    );
    assert_eq!(status.observed_generation, Some(1));
}

#[test]
fn dependents_hear_of_a_new_ready_or_a_new_revision_only() {
    let ks = kustomization("apps", "web", "repo", &[]);
    let first = applied(ks.clone(), "main@sha1:1")
        .status
        .unwrap_or_default();
    assert!(became_ready(&KustomizationStatus::default(), &first));
    assert!(
        !became_ready(&first, &first),
        "drift correction of the same revision"
    );
    let second = applied(ks, "main@sha1:2").status.unwrap_or_default();
    assert!(became_ready(&first, &second));
}

#[test]
fn a_revision_is_applied_only_at_the_same_generation() {
    let ks = kustomization("apps", "web", "repo", &[]);
    assert!(!already_applied(&ks, "main@sha1:1"), "never applied");
    let ks = applied(ks, "main@sha1:1");
    assert!(already_applied(&ks, "main@sha1:1"));
    assert!(!already_applied(&ks, "main@sha1:2"), "new revision");
    let mut edited = ks;
    edited.metadata.generation = Some(2);
    assert!(!already_applied(&edited, "main@sha1:1"), "new spec");
}

#[test]
fn a_dependency_is_ready_at_its_generation_and_at_the_shared_source_revision() {
    let ks = kustomization("apps", "web", "repo", &["infra"]);
    assert_eq!(dependency_blocks(&ks, None, None), Some("not found"));
    let infra = kustomization("apps", "infra", "repo", &[]);
    assert_eq!(
        dependency_blocks(&ks, Some(&infra), None),
        Some("is not ready")
    );
    let ready = applied(infra, "main@sha1:1");
    assert_eq!(
        dependency_blocks(&ks, Some(&ready), Some("main@sha1:1")),
        None
    );
    assert_eq!(
        dependency_blocks(&ks, Some(&ready), Some("main@sha1:2")),
        Some("is not up to date with the source revision")
    );
    let mut edited = ready.clone();
    edited.metadata.generation = Some(2);
    assert_eq!(
        dependency_blocks(&ks, Some(&edited), None),
        Some("is not ready"),
        "spec changed since"
    );
    // Another source: its revision says nothing about ours.
    let other = applied(kustomization("apps", "infra", "other", &[]), "main@sha1:9");
    assert_eq!(
        dependency_blocks(&ks, Some(&other), Some("main@sha1:2")),
        None
    );
}

#[test]
fn cycles_are_found_through_cached_dependencies_across_namespaces() {
    let cached: HashMap<(String, String), Arc<Kustomization>> = [
        kustomization("apps", "b", "repo", &["infra/c"]),
        kustomization("infra", "c", "repo", &["apps/a"]),
        kustomization("infra", "d", "repo", &[]),
    ]
    .into_iter()
    .map(|k| {
        (
            (k.namespace().unwrap_or_default(), k.name_any()),
            Arc::new(k),
        )
    })
    .collect();
    let lookup = |ns: &str, name: &str| cached.get(&(ns.to_owned(), name.to_owned())).cloned();
    let a = kustomization("apps", "a", "repo", &["b"]);
    assert_eq!(
        dependency_cycle(&a, lookup),
        Some(vec![
            "apps/a".into(),
            "apps/b".into(),
            "infra/c".into(),
            "apps/a".into()
        ])
    );
    let fine = kustomization("apps", "a", "repo", &["infra/d", "missing"]);
    assert_eq!(dependency_cycle(&fine, lookup), None);
    assert!(depends_on(&a, "apps", "b"));
    assert!(
        !depends_on(&a, "infra", "b"),
        "dependsOn without namespace means its own"
    );
}

#[test]
fn a_stored_artifact_wakes_the_kustomizations_of_that_repository_only() {
    let (cache, mut writer) = reflector::store();
    for ks in [
        kustomization("apps", "web", "repo", &[]),
        kustomization("apps", "api", "repo", &[]),
        kustomization("apps", "other", "elsewhere", &[]),
        kustomization("team", "web", "repo", &[]),
        {
            let mut cross = kustomization("team", "shared", "repo", &[]);
            cross.spec.source_ref.namespace = Some("apps".into());
            cross
        },
    ] {
        writer.apply_watcher_event(&watcher::Event::Apply(ks));
    }
    let mut woken: Vec<String> = users_of(&ObjectRef::new("repo").within("apps"), &cache)
        .into_iter()
        .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
        .collect();
    woken.sort();
    assert_eq!(woken, ["apps/api", "apps/web", "team/shared"]);
}
