//! The OCIRepository controller against the real API server and a real registry (Debian's
//! `docker-registry`): artifacts pushed by Gantry (`gantry_source::oci::layout::push`, what
//! `gantry push artifact` runs) and by the real `flux` CLI (`GANTRY_FLUX`, built by `cargo xtask
//! test`) become artifacts with Flux's revision, path, metadata, conditions and events; `copy`,
//! `layerSelector`, semver with `semverFilter`, digest references, docker-config credentials and
//! the failures a user meets.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gantry_api::meta::LocalObjectReference;
use gantry_api::source::v1::{
    OCILayerOperation, OCILayerSelector, OCIRepository, OCIRepositoryRef, OCIRepositorySpec,
};
use gantry_runtime::controller::{Controller, Shared};
use gantry_source::OCIRepositories;
use gantry_source::artifact::ArtifactStore;
use gantry_source::oci::layout::{self, CONTENT_MEDIA_TYPE, PushMetadata};
use gantry_source::registry::{ClientConfig, Credentials, Reference, RegistryClient};
use gantry_source::sourceignore::SourceIgnore;
use gantry_testkit::registry::{Registry, RegistryAuth};
use gantry_testkit::{wait_for, with_namespace};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(60);

struct Running {
    task: tokio::task::JoinHandle<()>,
    store: ArtifactStore,
    _storage: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start_controller(client: &Client, ns: &str) -> Running {
    start_limited(client, ns, gantry_source::oci::DEFAULT_MAX_LAYER_BYTES)
}

fn start_limited(client: &Client, ns: &str, max_layer_bytes: u64) -> Running {
    let storage = tempfile::tempdir().unwrap();
    let store = ArtifactStore::new(storage.path(), "http://gantry.test/");
    let controller = Controller::new(
        OCIRepositories::new(store.clone()).max_layer_bytes(max_layer_bytes),
        Shared::new(client.clone()),
    )
    .namespace(Some(ns));
    Running {
        task: tokio::spawn(controller.run(std::future::pending())),
        store,
        _storage: storage,
    }
}

fn flux_bin() -> PathBuf {
    std::env::var_os("GANTRY_FLUX").map(PathBuf::from).expect(
        "GANTRY_FLUX is not set: run the suite with `cargo xtask test`, which builds the flux CLI",
    )
}

/// `flux push artifact` with loopback-only networking (see cluster_flux_cli.rs).
fn flux_push(url: &str, dir: &Path, extra: &[&str]) {
    let home = tempfile::tempdir().unwrap();
    let nowhere = "http://127.0.0.1:9";
    let out = Command::new(flux_bin())
        .args(["push", "artifact", url, "--path"])
        .arg(dir)
        .args([
            "--source=https://git.example/team/app",
            "--revision=main@sha1:0123456789abcdef0123456789abcdef01234567",
            "--insecure-registry",
        ])
        .args(extra)
        .env("HOME", home.path())
        .env("HTTPS_PROXY", nowhere)
        .env("HTTP_PROXY", nowhere)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .expect("running flux");
    assert!(
        out.status.success(),
        "flux push artifact: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    dir
}

async fn gantry_push(registry: &Registry, repository: &str, tag: &str, dir: &Path) -> String {
    let reference = Reference::parse(&registry.image(repository)).unwrap();
    let credentials = registry.credentials().map(|(u, p)| Credentials {
        username: u.into(),
        password: p.into(),
    });
    let client = RegistryClient::new(
        &reference,
        ClientConfig {
            insecure: true,
            credentials,
            ..Default::default()
        },
    )
    .unwrap();
    let meta = PushMetadata {
        source: "https://git.example/team/app".into(),
        revision: "main@sha1:89abcdef0123456789abcdef0123456789abcdef".into(),
        ..Default::default()
    };
    let ignore = SourceIgnore::vcs_and(&[]).unwrap();
    layout::push(&client, tag, dir, &ignore, &meta)
        .await
        .unwrap()
        .digest
}

fn spec(registry: &Registry, repository: &str, r: OCIRepositoryRef) -> OCIRepositorySpec {
    OCIRepositorySpec {
        url: format!("oci://{}", registry.image(repository)),
        interval: "10m".into(),
        timeout: Some("30s".into()),
        insecure: true,
        r#ref: Some(r),
        ..Default::default()
    }
}

fn tag(t: &str) -> OCIRepositoryRef {
    OCIRepositoryRef {
        tag: Some(t.into()),
        ..Default::default()
    }
}

async fn create(api: &Api<OCIRepository>, name: &str, spec: OCIRepositorySpec) {
    api.create(&PostParams::default(), &OCIRepository::new(name, spec))
        .await
        .unwrap();
}

fn ready(repo: Option<&OCIRepository>) -> Option<(&str, &str, &str)> {
    let c = repo?
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.as_str(), c.reason.as_str(), c.message.as_str()))
}

fn is_ready(repo: Option<&OCIRepository>) -> bool {
    ready(repo).is_some_and(|(s, _, _)| s == "True")
}

fn failed_with(reason: &'static str) -> impl FnMut(Option<&OCIRepository>) -> bool {
    move |repo| ready(repo).is_some_and(|(s, r, _)| s == "False" && r == reason)
}

async fn events(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

fn file_sha256(path: &Path) -> String {
    format!(
        "sha256:{}",
        hex_encode(&Sha256::digest(std::fs::read(path).unwrap()))
    )
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn artifacts_pushed_by_gantry_and_by_flux_become_flux_revisions() {
    with_namespace("oci-pull", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let registry = Registry::start(RegistryAuth::Anonymous);
        let content = tree(&[
            ("deploy/app.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n"),
            ("deploy/logo.png", "png"),
        ]);
        let gantry_digest = gantry_push(&registry, "team/app", "v1.0.0", content.path()).await;
        let flux_content = tree(&[("deploy/flux.yaml", "kind: ConfigMap\n")]);
        flux_push(
            &format!("oci://{}:v1.1.0", registry.image("team/app")),
            flux_content.path(),
            &[],
        );
        flux_push(
            &format!("oci://{}:v2.0.0-rc.1", registry.image("team/app")),
            flux_content.path(),
            &[],
        );
        let running = start_controller(&client, &ns);
        let api: Api<OCIRepository> = Api::namespaced(client.clone(), &ns);

        create(&api, "by-gantry", spec(&registry, "team/app", tag("v1.0.0"))).await;
        let repo = wait_for(&api, "by-gantry", WAIT, is_ready).await.unwrap();
        let status = repo.status.as_ref().unwrap();
        let artifact = status.artifact.as_ref().unwrap();
        assert_eq!(artifact.revision, format!("v1.0.0@{gantry_digest}"));
        assert_eq!(
            artifact.path,
            format!("ocirepository/{ns}/by-gantry/{gantry_digest}.tar.gz"),
            "Flux names the file after the manifest digest"
        );
        assert_eq!(
            artifact.url,
            format!("http://gantry.test/{}", artifact.path)
        );
        assert_eq!(
            artifact.metadata["org.opencontainers.image.source"],
            "https://git.example/team/app"
        );
        assert_eq!(
            artifact.metadata["org.opencontainers.image.revision"],
            "main@sha1:89abcdef0123456789abcdef0123456789abcdef"
        );
        assert!(artifact.metadata.contains_key("org.opencontainers.image.created"));
        let file = running.store.local_path(artifact).unwrap();
        assert_eq!(file_sha256(&file), artifact.digest);
        assert_eq!(artifact.size, Some(std::fs::metadata(&file).unwrap().len() as i64));
        // `status.url` as source-controller writes it: the object's `latest.tar.gz`, a link to
        // the current artifact that the artifact server serves (a regular file, no symlink).
        let latest = format!("ocirepository/{ns}/by-gantry/latest.tar.gz");
        assert_eq!(
            status.url.as_deref(),
            Some(format!("http://gantry.test/{latest}").as_str())
        );
        let served = running.store.file_for(&format!("/{latest}")).unwrap();
        let meta = std::fs::symlink_metadata(&served).unwrap();
        assert!(meta.is_file(), "{} is not a regular file", served.display());
        assert_eq!(file_sha256(&served), artifact.digest);
        let (_, _, message) = ready(Some(&repo)).unwrap();
        assert_eq!(
            message,
            format!("stored artifact for digest 'v1.0.0@{gantry_digest}'")
        );
        let conditions: Vec<_> = status
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            conditions,
            [
                ("Ready", "True", "Succeeded"),
                ("ArtifactInStorage", "True", "Succeeded")
            ]
        );
        assert_eq!(status.observed_generation, Some(1));
        let opened = running.store.open(artifact).unwrap();
        assert_eq!(
            std::fs::read_to_string(opened.path().join("deploy/app.yaml")).unwrap(),
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n"
        );
        // Flux's default exclusions apply when the artifact is extracted (`*.png` is one).
        assert!(!opened.path().join("deploy/logo.png").exists());
        let reasons = events(&client, &ns, "by-gantry").await;
        assert!(
            reasons.iter().any(|(r, m)| r == "NewArtifact"
                && m == &format!(
                    "stored artifact with revision 'v1.0.0@{gantry_digest}' from '{}', origin source 'https://git.example/team/app', origin revision 'main@sha1:89abcdef0123456789abcdef0123456789abcdef'",
                    repo.spec.url
                )),
            "{reasons:?}"
        );

        // The flux CLI's artifact, chosen by a semver range (the pre-release is not in it).
        let semver = OCIRepositoryRef {
            semver: Some(">=1.0.0".into()),
            semver_filter: Some("^v1".into()),
            ..Default::default()
        };
        create(&api, "by-flux", spec(&registry, "team/app", semver)).await;
        let repo = wait_for(&api, "by-flux", WAIT, is_ready).await.unwrap();
        let artifact = repo.status.unwrap().artifact.unwrap();
        let flux_digest = RegistryClient::new(
            &Reference::parse(&registry.image("team/app")).unwrap(),
            ClientConfig {
                insecure: true,
                ..Default::default()
            },
        )
        .unwrap()
        .manifest_digest("v1.1.0")
        .await
        .unwrap();
        assert_eq!(artifact.revision, format!("v1.1.0@{flux_digest}"));
        assert_eq!(
            artifact.metadata["org.opencontainers.image.revision"],
            "main@sha1:0123456789abcdef0123456789abcdef01234567"
        );
        let opened = running.store.open(&artifact).unwrap();
        assert_eq!(
            std::fs::read_to_string(opened.path().join("deploy/flux.yaml")).unwrap(),
            "kind: ConfigMap\n"
        );

        // A digest reference is its own revision.
        let by_digest = OCIRepositoryRef {
            digest: Some(gantry_digest.clone()),
            tag: Some("v1.1.0".into()),
            ..Default::default()
        };
        create(&api, "by-digest", spec(&registry, "team/app", by_digest)).await;
        let repo = wait_for(&api, "by-digest", WAIT, is_ready).await.unwrap();
        assert_eq!(repo.status.unwrap().artifact.unwrap().revision, gantry_digest);
    })
    .await;
}

#[tokio::test]
async fn copy_keeps_the_layer_and_missing_layers_are_reported() {
    with_namespace("oci-layer", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let registry = Registry::start(RegistryAuth::Anonymous);
        let content = tree(&[("app.yaml", "kind: ConfigMap\n")]);
        let digest = gantry_push(&registry, "app", "latest", content.path()).await;
        let client_reg = RegistryClient::new(
            &Reference::parse(&registry.image("app")).unwrap(),
            ClientConfig {
                insecure: true,
                ..Default::default()
            },
        )
        .unwrap();
        let (bytes, _) = client_reg.manifest(&digest).await.unwrap();
        let manifest = layout::Manifest::parse(&bytes).unwrap();
        let running = start_controller(&client, &ns);
        let api: Api<OCIRepository> = Api::namespaced(client.clone(), &ns);

        let mut copy = spec(&registry, "app", OCIRepositoryRef::default());
        copy.layer_selector = Some(OCILayerSelector {
            media_type: Some(CONTENT_MEDIA_TYPE.into()),
            operation: Some(OCILayerOperation::Copy),
        });
        create(&api, "copy", copy).await;
        let repo = wait_for(&api, "copy", WAIT, is_ready).await.unwrap();
        let status = repo.status.unwrap();
        let artifact = status.artifact.unwrap();
        assert_eq!(artifact.revision, format!("latest@{digest}"));
        assert_eq!(
            artifact.digest, manifest.layers[0].digest,
            "the layer as it is"
        );
        assert_eq!(
            status.observed_layer_selector.unwrap().operation,
            Some(OCILayerOperation::Copy)
        );
        assert_eq!(
            file_sha256(&running.store.local_path(&artifact).unwrap()),
            artifact.digest
        );

        let mut missing = spec(&registry, "app", OCIRepositoryRef::default());
        missing.layer_selector = Some(OCILayerSelector {
            media_type: Some("application/vnd.example.nothing".into()),
            operation: None,
        });
        create(&api, "no-such-layer", missing).await;
        let repo = wait_for(
            &api,
            "no-such-layer",
            WAIT,
            failed_with("OCIArtifactLayerOperationFailed"),
        )
        .await;
        assert_eq!(
            ready(repo.as_ref()).unwrap().2,
            "failed to find layer with media type 'application/vnd.example.nothing' in artifact"
        );
        // A manifest the registry accepts but that is no artifact: a clear reason, no panic.
        client_reg
            .push_blob(
                &gantry_source::artifact::digest_of(layout::CONFIG_BLOB),
                layout::CONFIG_BLOB,
            )
            .await
            .unwrap();
        let empty = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": layout::MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": layout::CONFIG_MEDIA_TYPE,
                "size": layout::CONFIG_BLOB.len(),
                "digest": gantry_source::artifact::digest_of(layout::CONFIG_BLOB),
            },
            "layers": [],
        });
        client_reg
            .push_manifest(
                "empty",
                layout::MANIFEST_MEDIA_TYPE,
                &serde_json::to_vec(&empty).unwrap(),
            )
            .await
            .unwrap();
        create(&api, "no-layers", spec(&registry, "app", tag("empty"))).await;
        let repo = wait_for(
            &api,
            "no-layers",
            WAIT,
            failed_with("OCIArtifactLayerOperationFailed"),
        )
        .await;
        assert_eq!(
            ready(repo.as_ref()).unwrap().2,
            "no layers found in artifact"
        );

        let fetch_failed = wait_for(&api, "no-such-layer", WAIT, |r| r.is_some())
            .await
            .unwrap()
            .status
            .unwrap()
            .conditions;
        assert!(
            fetch_failed
                .iter()
                .any(|c| c.type_ == "FetchFailed" && c.status == "True")
        );
    })
    .await;
}

async fn docker_secret(client: &Client, ns: &str, name: &str, json: &str) {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name },
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": { ".dockerconfigjson": json },
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("gantry-tests").force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn credentials_come_from_a_docker_config_and_failures_say_why() {
    with_namespace("oci-auth", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let registry = Registry::start(RegistryAuth::htpasswd("flux", "s3cret"));
        let content = tree(&[("app.yaml", "kind: ConfigMap\n")]);
        gantry_push(&registry, "app", "v1", content.path()).await;
        docker_secret(
            &client,
            &ns,
            "good",
            &registry.docker_config("flux", "s3cret"),
        )
        .await;
        docker_secret(
            &client,
            &ns,
            "bad",
            &registry.docker_config("flux", "wrong"),
        )
        .await;
        let _running = start_controller(&client, &ns);
        let api: Api<OCIRepository> = Api::namespaced(client.clone(), &ns);

        let mut good = spec(&registry, "app", tag("v1"));
        good.secret_ref = Some(LocalObjectReference {
            name: "good".into(),
        });
        create(&api, "good", good).await;
        wait_for(&api, "good", WAIT, is_ready).await;

        let mut bad = spec(&registry, "app", tag("v1"));
        bad.secret_ref = Some(LocalObjectReference { name: "bad".into() });
        create(&api, "bad", bad).await;
        let repo = wait_for(&api, "bad", WAIT, failed_with("OCIArtifactPullFailed")).await;
        let message = ready(repo.as_ref()).unwrap().2;
        assert!(
            message.starts_with("failed to determine artifact digest: authentication to")
                && !message.contains("s3cret")
                && !message.contains("wrong"),
            "{message}"
        );

        let mut missing = spec(&registry, "app", tag("v1"));
        missing.secret_ref = Some(LocalObjectReference {
            name: "absent".into(),
        });
        create(&api, "no-secret", missing).await;
        wait_for(&api, "no-secret", WAIT, failed_with("AuthenticationFailed")).await;

        let mut no_tag = spec(&registry, "app", tag("v9"));
        no_tag.secret_ref = Some(LocalObjectReference {
            name: "good".into(),
        });
        create(&api, "no-tag", no_tag).await;
        wait_for(&api, "no-tag", WAIT, failed_with("OCIArtifactPullFailed")).await;

        let mut with_tag = spec(&registry, "app:v1", OCIRepositoryRef::default());
        with_tag.url = format!("oci://{}:v1", registry.image("app"));
        create(&api, "url-tag", with_tag).await;
        let repo = wait_for(&api, "url-tag", WAIT, failed_with("URLInvalid")).await;
        let status = repo.unwrap().status.unwrap();
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Stalled" && c.status == "True"),
            "a URL with a tag cannot work until the spec changes"
        );
    })
    .await;
}

#[tokio::test]
async fn a_layer_over_the_limit_is_refused_before_download() {
    with_namespace("oci-limit", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let registry = Registry::start(RegistryAuth::Anonymous);
        let content = tree(&[("app.yaml", &"x".repeat(4096))]);
        gantry_push(&registry, "app", "v1", content.path()).await;
        let running = start_limited(&client, &ns, 64);
        let api: Api<OCIRepository> = Api::namespaced(client.clone(), &ns);
        create(&api, "big", spec(&registry, "app", tag("v1"))).await;
        let repo = wait_for(
            &api,
            "big",
            WAIT,
            failed_with("OCIArtifactLayerOperationFailed"),
        )
        .await;
        let message = ready(repo.as_ref()).unwrap().2.to_owned();
        assert!(
            message.ends_with("bytes, more than the 64 allowed"),
            "{message}"
        );
        let dir = running.store.object_dir("ocirepository", &ns, "big");
        assert!(
            std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none()),
            "nothing stored"
        );
    })
    .await;
}
