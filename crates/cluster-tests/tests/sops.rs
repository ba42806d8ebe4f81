//! `spec.decryption` end to end: a git repository with files encrypted by the real `sops` CLI
//! (`GANTRY_SOPS`, built by `cargo xtask test`) for age keys made here, the source and
//! Kustomization controllers, and the real API server. A good key applies the decrypted Secret;
//! a wrong key, a tampered file, a missing key Secret and an unsupported key type each leave
//! `Ready=False` with a message naming the problem, an Event, and nothing applied.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use age::secrecy::ExposeSecret as _;
use gantry_api::kustomize::v1::{
    CrossNamespaceSourceReference, Decryption, Kustomization, KustomizationSpec, SourceKind,
};
use gantry_api::meta::LocalObjectReference;
use gantry_api::source::v1::{GitRepository, GitRepositoryRef, GitRepositorySpec};
use gantry_runtime::controller::{Controller, Shared};
use gantry_runtime::trigger::Trigger;
use gantry_source::{ArtifactStore, GitRepositories};
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo};
use gantry_testkit::{wait_for, with_namespace};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};

const WAIT: Duration = Duration::from_secs(90);

fn sops_bin() -> PathBuf {
    match std::env::var_os("GANTRY_SOPS") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "GANTRY_SOPS is not set: run the suite with `cargo xtask test`, which builds sops, or \
             set GANTRY_SOPS to a sops binary (`cargo xtask tool sops` prints one)"
        ),
    }
}

fn encrypt(recipient: &str, name: &str, plain: &str, flags: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, plain).unwrap();
    let out = Command::new(sops_bin())
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .args(["--encrypt", "--age", recipient])
        .args(flags)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn secret(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\ntype: Opaque\nstringData:\n  password: {value}\n"
    )
}

fn key_secret(name: &str, data: &[(&str, String)]) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
    secret.data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes())))
            .collect(),
    );
    secret
}

fn spec(ns: &str, path: &str, secret_ref: Option<&str>) -> KustomizationSpec {
    KustomizationSpec {
        target_namespace: Some(ns.into()),
        interval: "1h".into(),
        retry_interval: Some("2s".into()),
        timeout: Some("30s".into()),
        path: Some(path.into()),
        prune: true,
        decryption: Some(Decryption {
            secret_ref: secret_ref.map(|name| LocalObjectReference { name: name.into() }),
            ..Default::default()
        }),
        source_ref: CrossNamespaceSourceReference {
            kind: SourceKind::GitRepository,
            name: "app".into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn ready(ks: &Kustomization) -> Option<(String, String, String)> {
    ks.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn warning_events(client: &Client, ns: &str, name: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter_map(|e| e.note)
        .collect()
}

#[tokio::test]
async fn decryption_applies_good_secrets_and_refuses_bad_ones() {
    with_namespace("ks-sops", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let key = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let recipient = key.to_public().to_string();
        let agekey = |k: &age::x25519::Identity| format!("{}\n", k.to_string().expose_secret());

        let root = tempfile::tempdir().unwrap();
        let repo = TestRepo::new(root.path(), "app");
        let good = encrypt(&recipient, "secret.yaml", &secret("db", "hunter2"), &[]);
        let regex = ["--encrypted-regex", "^stringData$"];
        let tampered = encrypt(&recipient, "secret.yaml", &secret("tampered", "x"), &regex)
            .replace("name: tampered", "name: changed");
        repo.write("good/secret.yaml", &good)
            .write("tampered/secret.yaml", &tampered)
            .commit("encrypted");
        repo.push("HEAD:refs/heads/main");
        let server = GitHttpServer::start(root.path(), HttpAuth::None);

        let storage = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(storage.path(), "http://gantry.test/");
        let shared = Shared::new(client.clone());
        let (stored, stored_requests) = Trigger::<GitRepository>::new();
        let source = Controller::new(
            GitRepositories::new(store.clone()).notify_stored(stored),
            shared.clone(),
        )
        .namespace(Some(&ns));
        let kustomize = gantry_kustomize::controller::controller(
            gantry_kustomize::controller::Settings::new(store),
            shared,
            stored_requests,
            Some(&ns),
        );
        let tasks = [
            tokio::spawn(source.run(std::future::pending())),
            tokio::spawn(kustomize.run(std::future::pending())),
        ];

        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let pp = PostParams::default();
        secrets
            .create(
                &pp,
                &key_secret("sops-age", &[("identity.agekey", agekey(&key))]),
            )
            .await
            .unwrap();
        secrets
            .create(
                &pp,
                &key_secret("sops-other", &[("identity.agekey", agekey(&other))]),
            )
            .await
            .unwrap();
        secrets
            .create(
                &pp,
                &key_secret(
                    "sops-kms",
                    &[("sops.aws-kms", "aws_access_key_id: x\n".into())],
                ),
            )
            .await
            .unwrap();
        let git = GitRepositorySpec {
            url: server.url("app.git"),
            interval: "1h".into(),
            r#ref: Some(GitRepositoryRef {
                branch: Some("main".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        Api::<GitRepository>::namespaced(client.clone(), &ns)
            .create(&pp, &GitRepository::new("app", git))
            .await
            .unwrap();

        let kustomizations: Api<Kustomization> = Api::namespaced(client.clone(), &ns);
        for (name, path, secret_ref) in [
            ("good", "good", Some("sops-age")),
            ("wrong-key", "good", Some("sops-other")),
            ("tampered", "tampered", Some("sops-age")),
            ("missing", "good", Some("absent")),
            ("kms", "good", Some("sops-kms")),
        ] {
            kustomizations
                .create(&pp, &Kustomization::new(name, spec(&ns, path, secret_ref)))
                .await
                .unwrap();
        }

        let applied = wait_for(&kustomizations, "good", WAIT, |k| {
            k.and_then(ready).is_some_and(|(s, _, _)| s == "True")
        })
        .await
        .unwrap();
        let db = secrets.get("db").await.unwrap();
        let data = db.data.unwrap_or_default();
        assert_eq!(
            data.get("password").map(|b| b.0.as_slice()),
            Some(&b"hunter2"[..])
        );
        assert!(
            ready(&applied).unwrap().2.contains("Applied revision"),
            "{:?}",
            ready(&applied)
        );

        let missing = format!("sops decryption Secret '{ns}/absent' not found");
        let cases = [
            (
                "wrong-key",
                vec![
                    "secret.yaml",
                    &recipient[..],
                    "no age identity of the decryption Secret matches",
                ],
            ),
            (
                "tampered",
                vec![
                    "tampered/secret.yaml",
                    "failed to verify sops data integrity",
                ],
            ),
            ("missing", vec![&missing[..]]),
            (
                "kms",
                vec!["sops.aws-kms", "AWS KMS credentials", "not support"],
            ),
        ];
        for (name, wanted) in cases {
            let failed = wait_for(&kustomizations, name, WAIT, |k| {
                k.and_then(ready).is_some_and(|(s, _, _)| s == "False")
            })
            .await
            .unwrap();
            let (_, reason, message) = ready(&failed).unwrap();
            assert_eq!(reason, "BuildFailed", "{name}: {message}");
            for w in &wanted {
                assert!(message.contains(w), "{name}: {message} lacks {w}");
            }
            assert!(!message.contains("hunter2"), "{name}: {message}");
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let notes = warning_events(&client, &ns, name).await;
                if notes.iter().any(|n| n.contains(wanted[0])) {
                    assert!(notes.iter().all(|n| !n.contains("hunter2")), "{notes:?}");
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{name}: no event in {notes:?}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let inventory = failed.status.as_ref().and_then(|s| s.inventory.as_ref());
            assert!(
                inventory.is_none_or(|i| i.entries.is_empty()),
                "{name}: {inventory:?}"
            );
        }
        // The unsupported key type cannot be fixed by retrying: Stalled.
        let kms = kustomizations.get("kms").await.unwrap();
        let stalled = kms
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled");
        assert!(
            stalled.is_some_and(|c| c.status == "True"),
            "{:?}",
            kms.status
        );
        // Nothing of the tampered file was applied.
        for absent in ["changed", "tampered"] {
            assert!(secrets.get_opt(absent).await.unwrap().is_none(), "{absent}");
        }
        for task in tasks {
            task.abort();
        }
    })
    .await;
}
