//! ImagePolicy and ImageUpdateAutomation against the local control plane, a real registry
//! (`docker-registry`) and a real git server (`git http-backend`): tags pushed to the registry
//! end up, by policy, as a commit in git; bad policies, bad files, refused pushes and racing
//! automations are reported as Flux reports them. Nothing is mocked.

use std::time::Duration;

use gantry_api::image::v1::{
    AlphabeticalPolicy, CommitSpec, CommitUser, CrossNamespaceSourceReference, GitSpec,
    ImagePolicy, ImagePolicyChoice, ImagePolicySpec, ImageRepository, ImageRepositorySpec,
    ImageUpdateAutomation, ImageUpdateAutomationSpec, NumericalPolicy, PushSpec, SemVerPolicy,
    TagFilter, UpdateStrategy,
};
use gantry_api::meta::NamespacedObjectReference;
use gantry_api::source::v1::{GitRepository, GitRepositoryRef, GitRepositorySpec};
use gantry_image::controller::{ImageControllers, Settings};
use gantry_image::tags::TagStore;
use gantry_runtime::controller::Shared;
use gantry_runtime::metrics::Metrics;
use gantry_testkit::git::{GitHttpServer, HttpAuth, TestRepo, git};
use gantry_testkit::registry::{Registry, RegistryAuth};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

const GIT_USER: &str = "bot";
const GIT_PASSWORD: &str = "s3cret";

const DEPLOY: &str = "\
# The web tier. Comments, quoting and order must survive the update.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: staging
spec:
  template:
    spec:
      containers:
        - name: web
          image: \"IMAGE:0000000-202601010000\" # {\"$imagepolicy\": \"NS:staging\"}
          args: [\"--port\", '8080']
";

/// The three image controllers, wired as `gantry run` wires them, until dropped.
struct Controllers {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    metrics: Metrics,
    tags: TagStore,
    workdirs: std::path::PathBuf,
    _storage: tempfile::TempDir,
}

impl Drop for Controllers {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

fn start(client: &Client, namespace: &str) -> Controllers {
    let storage = tempfile::tempdir().unwrap();
    let tags = TagStore::new(storage.path().join("images"));
    let workdirs = storage.path().join("automation");
    let shared = Shared::new(client.clone());
    let metrics = shared.metrics.clone();
    let controllers = ImageControllers::new(
        shared,
        Settings {
            tags: tags.clone(),
            workdirs: workdirs.clone(),
            sources: None,
            namespace: Some(namespace.to_owned()),
            concurrency: 4,
        },
    );
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(controllers.run(async move { s.cancelled().await }));
    Controllers {
        stop,
        task,
        metrics,
        tags,
        workdirs,
        _storage: storage,
    }
}

struct Git {
    _root: tempfile::TempDir,
    repo: TestRepo,
    server: GitHttpServer,
}

fn git_server(files: &[(&str, String)]) -> Git {
    let root = tempfile::tempdir().unwrap();
    let repo = TestRepo::new(root.path(), "fleet");
    for (path, content) in files {
        repo.write(path, content);
    }
    repo.commit("initial");
    repo.push("HEAD:refs/heads/main");
    // git-http-backend accepts pushes from authenticated users only.
    let server = GitHttpServer::start(
        root.path(),
        HttpAuth::Basic {
            username: GIT_USER.into(),
            password: GIT_PASSWORD.into(),
        },
    );
    Git {
        _root: root,
        repo,
        server,
    }
}

// The file as committed on `branch` of the bare repository.
fn file_on(git_: &Git, branch: &str, path: &str) -> String {
    git(&git_.repo.bare, &["show", &format!("{branch}:{path}")])
}

async fn create_git_repository(client: &Client, ns: &str, url: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "fleet-auth"},
        "stringData": {"username": GIT_USER, "password": GIT_PASSWORD}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let repos: Api<GitRepository> = Api::namespaced(client.clone(), ns);
    let repo = GitRepository::new(
        "fleet",
        GitRepositorySpec {
            url: url.into(),
            interval: "10m".into(),
            secret_ref: Some(gantry_api::meta::LocalObjectReference {
                name: "fleet-auth".into(),
            }),
            r#ref: Some(GitRepositoryRef {
                branch: Some("main".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    repos.create(&PostParams::default(), &repo).await.unwrap();
}

async fn create_image_repository(client: &Client, ns: &str, name: &str, image: &str) {
    let api: Api<ImageRepository> = Api::namespaced(client.clone(), ns);
    let obj = ImageRepository::new(
        name,
        ImageRepositorySpec {
            image: image.into(),
            interval: "1h".into(),
            insecure: true,
            ..Default::default()
        },
    );
    api.create(&PostParams::default(), &obj).await.unwrap();
}

async fn create_policy(client: &Client, ns: &str, name: &str, repo: &str, spec: ImagePolicySpec) {
    let api: Api<ImagePolicy> = Api::namespaced(client.clone(), ns);
    let obj = ImagePolicy::new(
        name,
        ImagePolicySpec {
            image_repository_ref: NamespacedObjectReference {
                name: repo.into(),
                namespace: None,
            },
            ..spec
        },
    );
    api.create(&PostParams::default(), &obj).await.unwrap();
}

fn staging_policy() -> ImagePolicySpec {
    ImagePolicySpec {
        policy: ImagePolicyChoice {
            alphabetical: Some(AlphabeticalPolicy { order: None }),
            ..Default::default()
        },
        filter_tags: Some(TagFilter {
            pattern: Some("^[a-f0-9]+-(?P<ts>[0-9]{12})$".into()),
            extract: Some("$ts".into()),
        }),
        ..Default::default()
    }
}

fn automation_spec(path: &str, template: Option<&str>) -> ImageUpdateAutomationSpec {
    ImageUpdateAutomationSpec {
        source_ref: CrossNamespaceSourceReference {
            kind: "GitRepository".into(),
            name: "fleet".into(),
            ..Default::default()
        },
        interval: "10m".into(),
        git: Some(GitSpec {
            checkout: None,
            commit: CommitSpec {
                author: CommitUser {
                    name: Some("gantry-bot".into()),
                    email: "bot@gantry.invalid".into(),
                },
                message_template: template.map(str::to_owned),
                ..Default::default()
            },
            push: Some(PushSpec {
                branch: Some("main".into()),
                ..Default::default()
            }),
        }),
        update: Some(UpdateStrategy {
            path: Some(path.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn create_automation(client: &Client, ns: &str, name: &str, spec: ImageUpdateAutomationSpec) {
    let api: Api<ImageUpdateAutomation> = Api::namespaced(client.clone(), ns);
    api.create(
        &PostParams::default(),
        &ImageUpdateAutomation::new(name, spec),
    )
    .await
    .unwrap();
}

fn ready_of(
    conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Option<(String, String, String)> {
    conds
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn policy_status(
    api: &Api<ImagePolicy>,
    name: &str,
    check: impl Fn(&ImagePolicy) -> bool,
) -> ImagePolicy {
    gantry_testkit::wait_for(api, name, Duration::from_secs(30), |p| {
        p.is_some_and(&check)
    })
    .await
    .unwrap()
}

fn policy_ready(p: &ImagePolicy) -> Option<(String, String, String)> {
    ready_of(&p.status.as_ref()?.conditions)
}

fn automation_ready(a: &ImageUpdateAutomation) -> Option<(String, String, String)> {
    ready_of(&a.status.as_ref()?.conditions)
}

async fn request_reconcile<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({"metadata": {"annotations": {
        "reconcile.fluxcd.io/requestedAt": jiff::Timestamp::now().to_string()
    }}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_new_tag_in_the_registry_becomes_a_commit_in_git() {
    gantry_testkit::with_namespace("img-auto", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let registry = Registry::start(RegistryAuth::Anonymous);
        let image = registry.image("web");
        registry.push("web", "0000000-202601010000").await;
        registry.push("web", "abc1234-202601020930").await;
        registry.push("web", "not-a-build-tag").await;

        let deploy = DEPLOY.replace("IMAGE", &image).replace("NS", &ns);
        let other = "kind: ConfigMap\n# untouched, no marker\ndata: {a: b}\n".to_string();
        let git_ = git_server(&[
            ("clusters/staging/web.yaml", deploy.clone()),
            ("clusters/staging/other.yaml", other.clone()),
            ("clusters/production/web.yaml", deploy.clone()),
        ]);
        create_git_repository(&client, &ns, &git_.server.url("fleet.git")).await;
        let _controllers = start(&client, &ns);
        create_image_repository(&client, &ns, "web", &image).await;
        create_policy(&client, &ns, "staging", "web", staging_policy()).await;
        let template = "Deploy {{ range $o, $cs := .Changed.Objects }}{{ $o.Kind }}/{{ $o.Name }}{{ range $cs }} {{ .NewValue }}{{ end }}{{ end }}\n\nby {{ .AutomationObject }}";
        create_automation(&client, &ns, "staging", automation_spec("clusters/staging", Some(template))).await;

        let automations: Api<ImageUpdateAutomation> = Api::namespaced(client.clone(), &ns);
        let done = gantry_testkit::wait_for(&automations, "staging", Duration::from_secs(60), |a| {
            a.and_then(|a| a.status.as_ref()).is_some_and(|s| s.last_push_commit.is_some())
        })
        .await
        .unwrap();
        let status = done.status.clone().unwrap();
        let (ready, reason, message) = automation_ready(&done).unwrap();
        assert_eq!((ready.as_str(), reason.as_str()), ("True", "Succeeded"), "{message}");
        let commit = status.last_push_commit.clone().unwrap();
        assert_eq!(message, format!("pushed commit '{}' to branch 'main'", &commit[..7]));
        assert_eq!(status.observed_policies["staging"].tag, "abc1234-202601020930");

        // Only the marked scalar's bytes changed; quoting and comments survive.
        let expected = deploy.replace("0000000-202601010000", "abc1234-202601020930");
        assert_eq!(file_on(&git_, "main", "clusters/staging/web.yaml"), expected.trim_end());
        assert_eq!(file_on(&git_, "main", "clusters/staging/other.yaml"), other.trim_end());
        // Outside update.path nothing changes.
        assert_eq!(file_on(&git_, "main", "clusters/production/web.yaml"), deploy.trim_end());
        let log = git(&git_.repo.bare, &["log", "-1", "--format=%H%n%an <%ae>%n%B", "main"]);
        let mut lines = log.lines();
        assert_eq!(lines.next(), Some(commit.as_str()));
        assert_eq!(lines.next(), Some("gantry-bot <bot@gantry.invalid>"));
        assert_eq!(
            lines.next(),
            Some(format!("Deploy Deployment/web {image}:abc1234-202601020930").as_str())
        );
        assert!(log.contains(&format!("by {ns}/staging")), "{log}");

        // A newer build, announced by a reconcile request on the ImageRepository: scan, policy and
        // automation follow at once, without waiting for any interval (all are 10m or more).
        registry.push("web", "def5678-202601031200").await;
        let images: Api<ImageRepository> = Api::namespaced(client.clone(), &ns);
        let asked = std::time::Instant::now();
        request_reconcile(&images, "web").await;
        let done = gantry_testkit::wait_for(&automations, "staging", Duration::from_secs(30), |a| {
            a.and_then(|a| a.status.as_ref())
                .and_then(|s| s.last_push_commit.clone())
                .is_some_and(|c| c != commit)
        })
        .await
        .unwrap();
        eprintln!("registry push announced -> commit pushed: {:?}", asked.elapsed());
        assert!(file_on(&git_, "main", "clusters/staging/web.yaml").contains("def5678-202601031200"));
        let policies: Api<ImagePolicy> = Api::namespaced(client.clone(), &ns);
        let p = policies.get("staging").await.unwrap();
        let s = p.status.unwrap();
        assert_eq!(s.latest_ref.unwrap().tag, "def5678-202601031200");
        assert_eq!(s.observed_previous_ref.unwrap().tag, "abc1234-202601020930");
        assert_ne!(done.status.unwrap().last_push_commit, Some(commit));

        // Nothing new: a run reports the repository up to date and makes no commit.
        let head = git_.repo.remote_head("main");
        request_reconcile(&automations, "staging").await;
        let quiet = gantry_testkit::wait_for(&automations, "staging", Duration::from_secs(30), |a| {
            a.and_then(automation_ready)
                .is_some_and(|(_, _, m)| m == "repository up-to-date")
        })
        .await
        .unwrap();
        assert_eq!(git_.repo.remote_head("main"), head);
        assert_eq!(quiet.status.unwrap().observed_source_revision, Some(format!("main@sha1:{head}")));
    })
    .await;
}

#[tokio::test]
async fn bad_policies_are_reported_and_invalid_ones_stall() {
    gantry_testkit::with_namespace("img-policy", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let registry = Registry::start(RegistryAuth::Anonymous);
        let image = registry.image("api");
        for tag in ["1.0.0", "1.2.0", "v1.3.0-rc.1", "2.0.0", "latest"] {
            registry.push("api", tag).await;
        }
        let _controllers = start(&client, &ns);
        let policies: Api<ImagePolicy> = Api::namespaced(client.clone(), &ns);

        // The repository does not exist yet: DependencyNotReady, then the first scan fixes it.
        let semver = |range: &str| ImagePolicySpec {
            policy: ImagePolicyChoice {
                semver: Some(SemVerPolicy {
                    range: range.into(),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        create_policy(&client, &ns, "production", "api", semver("^1.0.0")).await;
        let p = policy_status(&policies, "production", |p| {
            policy_ready(p).is_some_and(|(s, r, _)| s == "False" && r == "DependencyNotReady")
        })
        .await;
        assert!(
            policy_ready(&p).unwrap().2.contains("\"api\" not found"),
            "{:?}",
            policy_ready(&p)
        );
        create_image_repository(&client, &ns, "api", &image).await;
        let p = policy_status(&policies, "production", |p| {
            policy_ready(p).is_some_and(|(s, _, _)| s == "True")
        })
        .await;
        assert_eq!(
            p.status.as_ref().unwrap().latest_ref.as_ref().unwrap().tag,
            "1.2.0"
        );
        assert_eq!(
            policy_ready(&p).unwrap().2,
            format!("Latest image tag for {image} resolved to 1.2.0")
        );

        // An invalid range is Stalled with the reason and never retried.
        create_policy(&client, &ns, "bad-range", "api", semver(">= 1.x.y ||")).await;
        let p = policy_status(&policies, "bad-range", |p| {
            policy_ready(p).is_some_and(|(s, r, _)| s == "False" && r == "InvalidPolicy")
        })
        .await;
        let conds = &p.status.as_ref().unwrap().conditions;
        assert!(
            conds
                .iter()
                .any(|c| c.type_ == "Stalled" && c.status == "True"),
            "{conds:?}"
        );

        // An invalid regex likewise.
        let mut spec = staging_policy();
        spec.filter_tags.as_mut().unwrap().pattern = Some("^(?P<ts>[0-9".into());
        create_policy(&client, &ns, "bad-regex", "api", spec).await;
        let p = policy_status(&policies, "bad-regex", |p| {
            policy_ready(p).is_some_and(|(_, r, _)| r == "InvalidPolicy")
        })
        .await;
        assert!(
            policy_ready(&p).unwrap().2.contains("^(?P<ts>[0-9"),
            "{:?}",
            policy_ready(&p)
        );

        // No tag matches: not Ready, with the reason, retried.
        create_policy(&client, &ns, "none", "api", semver(">=5.0.0")).await;
        let p = policy_status(&policies, "none", |p| {
            policy_ready(p).is_some_and(|(s, _, _)| s == "False")
        })
        .await;
        let (_, reason, message) = policy_ready(&p).unwrap();
        assert_eq!(reason, "Failure");
        assert!(message.contains("no tag matches"), "{message}");
        assert!(
            !p.status
                .unwrap()
                .conditions
                .iter()
                .any(|c| c.type_ == "Stalled")
        );

        // A numerical policy over a tag that is not a number names the tag.
        let numerical = ImagePolicySpec {
            policy: ImagePolicyChoice {
                numerical: Some(NumericalPolicy { order: None }),
                ..Default::default()
            },
            ..Default::default()
        };
        create_policy(&client, &ns, "numbers", "api", numerical).await;
        let p = policy_status(&policies, "numbers", |p| {
            policy_ready(p).is_some_and(|(s, _, _)| s == "False")
        })
        .await;
        let message = policy_ready(&p).unwrap().2;
        assert!(message.contains("is not a number"), "{message}");
        assert!(!p.name_any().is_empty());
    })
    .await;
}

#[tokio::test]
async fn bad_files_are_left_alone_and_refused_pushes_are_reported() {
    gantry_testkit::with_namespace("img-faults", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let registry = Registry::start(RegistryAuth::Anonymous);
        let image = registry.image("web");
        registry.push("web", "abc1234-202601020930").await;
        let good = DEPLOY.replace("IMAGE", &image).replace("NS", &ns);
        let broken = format!(
            "image: {image}:old # {{\"$imagepolicy\": \"{ns}:staging\"}}\n  bad: [unclosed\n"
        );
        let unknown = format!("image: {image}:old # {{\"$imagepolicy\": \"{ns}:nobody\"}}\n");
        let git_ = git_server(&[
            ("apps/good.yaml", good.clone()),
            ("apps/broken.yaml", broken.clone()),
            ("apps/unknown.yaml", unknown.clone()),
        ]);
        create_git_repository(&client, &ns, &git_.server.url("fleet.git")).await;
        let _controllers = start(&client, &ns);
        create_image_repository(&client, &ns, "web", &image).await;
        create_policy(&client, &ns, "staging", "web", staging_policy()).await;
        create_automation(&client, &ns, "apps", automation_spec("apps", None)).await;

        let automations: Api<ImageUpdateAutomation> = Api::namespaced(client.clone(), &ns);
        let a = gantry_testkit::wait_for(&automations, "apps", Duration::from_secs(60), |a| {
            a.and_then(automation_ready)
                .is_some_and(|(s, _, _)| s == "False")
                && a.and_then(|a| a.status.as_ref())
                    .is_some_and(|s| s.last_push_commit.is_some())
        })
        .await
        .unwrap();
        let (_, reason, message) = automation_ready(&a).unwrap();
        assert_eq!(reason, "UpdateFailed");
        assert!(
            message.contains("apps/broken.yaml") || message.contains("broken.yaml"),
            "{message}"
        );
        assert!(message.contains("not valid YAML"), "{message}");
        // The good file was committed with the default message; the others are byte-identical.
        assert!(file_on(&git_, "main", "apps/good.yaml").contains("abc1234-202601020930"));
        assert_eq!(
            file_on(&git_, "main", "apps/broken.yaml"),
            broken.trim_end()
        );
        assert_eq!(
            file_on(&git_, "main", "apps/unknown.yaml"),
            unknown.trim_end()
        );
        assert_eq!(
            git(&git_.repo.bare, &["log", "-1", "--format=%s", "main"]),
            "Update from image update automation"
        );

        // The server now refuses every push: the failure names the cause and is retried.
        git_.repo.hook(
            "pre-receive",
            "#!/bin/sh\necho 'main is protected' >&2\nexit 1\n",
        );
        registry.push("web", "fff0000-202601050000").await;
        let images: Api<ImageRepository> = Api::namespaced(client.clone(), &ns);
        request_reconcile(&images, "web").await;
        let a = gantry_testkit::wait_for(&automations, "apps", Duration::from_secs(30), |a| {
            a.and_then(automation_ready)
                .is_some_and(|(_, r, _)| r == "GitOperationFailed")
        })
        .await
        .unwrap();
        let message = automation_ready(&a).unwrap().2;
        assert!(
            message.contains("main is protected") || message.contains("rejected"),
            "{message}"
        );
        assert!(!file_on(&git_, "main", "apps/good.yaml").contains("fff0000"));
    })
    .await;
}

#[tokio::test]
async fn two_automations_pushing_to_one_branch_both_land() {
    gantry_testkit::with_namespace("img-race", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let registry = Registry::start(RegistryAuth::Anonymous);
        let image = registry.image("web");
        registry.push("web", "abc1234-202601020930").await;
        let deploy = DEPLOY.replace("IMAGE", &image).replace("NS", &ns);
        let git_ = git_server(&[
            ("team-a/web.yaml", deploy.clone()),
            ("team-b/web.yaml", deploy.clone()),
        ]);
        create_git_repository(&client, &ns, &git_.server.url("fleet.git")).await;
        create_image_repository(&client, &ns, "web", &image).await;
        create_policy(&client, &ns, "staging", "web", staging_policy()).await;
        // Both exist before the controllers start, so the policy's first choice runs both at once.
        create_automation(&client, &ns, "team-a", automation_spec("team-a", None)).await;
        create_automation(&client, &ns, "team-b", automation_spec("team-b", None)).await;
        let _controllers = start(&client, &ns);

        let automations: Api<ImageUpdateAutomation> = Api::namespaced(client.clone(), &ns);
        for name in ["team-a", "team-b"] {
            gantry_testkit::wait_for(&automations, name, Duration::from_secs(60), |a| {
                a.and_then(|a| a.status.as_ref())
                    .is_some_and(|s| s.last_push_commit.is_some())
            })
            .await;
        }
        for dir in ["team-a", "team-b"] {
            assert!(
                file_on(&git_, "main", &format!("{dir}/web.yaml")).contains("abc1234-202601020930"),
                "{dir} lost its update"
            );
        }
        let count = git(&git_.repo.bare, &["rev-list", "--count", "main"]);
        assert_eq!(count, "3", "initial commit plus one commit per automation");
    })
    .await;
}

#[tokio::test]
async fn digest_reflection_resolves_the_manifest_digest() {
    gantry_testkit::with_namespace("img-digest", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let registry = Registry::start(RegistryAuth::Anonymous);
        let image = registry.image("api");
        let first = registry.push_variant("api", "1.0.0", "one").await;
        let _controllers = start(&client, &ns);
        create_image_repository(&client, &ns, "api", &image).await;
        let spec = ImagePolicySpec {
            policy: ImagePolicyChoice {
                semver: Some(SemVerPolicy {
                    range: ">=1.0.0".into(),
                }),
                ..Default::default()
            },
            digest_reflection_policy: Some(gantry_api::image::v1::ReflectionPolicy::IfNotPresent),
            ..Default::default()
        };
        create_policy(&client, &ns, "api", "api", spec).await;
        let policies: Api<ImagePolicy> = Api::namespaced(client.clone(), &ns);
        let p = policy_status(&policies, "api", |p| {
            p.status
                .as_ref()
                .and_then(|s| s.latest_ref.as_ref())
                .is_some_and(|r| r.digest.is_some())
        })
        .await;
        let latest = p.status.as_ref().unwrap().latest_ref.clone().unwrap();
        assert_eq!(latest.tag, "1.0.0");
        assert_eq!(latest.digest.as_deref(), Some(first.as_str()));
        assert!(
            policy_ready(&p)
                .unwrap()
                .2
                .ends_with(&format!("with digest {first}"))
        );

        // A new release with other content: the new digest is resolved.
        let second = registry.push_variant("api", "1.1.0", "two").await;
        assert_ne!(first, second);
        let images: Api<ImageRepository> = Api::namespaced(client.clone(), &ns);
        request_reconcile(&images, "api").await;
        let p = policy_status(&policies, "api", |p| {
            p.status
                .as_ref()
                .and_then(|s| s.latest_ref.as_ref())
                .is_some_and(|r| r.tag == "1.1.0")
        })
        .await;
        let status = p.status.unwrap();
        assert_eq!(status.latest_ref.unwrap().digest, Some(second));
        assert_eq!(status.observed_previous_ref.unwrap().digest, Some(first));
    })
    .await;
}

// The lines of `exported` about objects named `name`.
fn series(exported: &str, name: &str) -> Vec<String> {
    let label = format!("name=\"{name}\"");
    exported
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(&label))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_deleted_policy_and_automation_leave_no_metrics_and_no_work_trees() {
    gantry_testkit::with_namespace("img-delete", |client, ns| async move {
        gantry_testkit::install_crds(&client).await;
        let registry = Registry::start(RegistryAuth::Anonymous);
        let image = registry.image("web");
        registry.push("web", "abc1234-202601020930").await;
        let deploy = DEPLOY.replace("IMAGE", &image).replace("NS", &ns);
        let git_ = git_server(&[("clusters/staging/web.yaml", deploy.replace(":staging", ":doomed"))]);
        create_git_repository(&client, &ns, &git_.server.url("fleet.git")).await;
        let controllers = start(&client, &ns);
        create_image_repository(&client, &ns, "web", &image).await;
        create_policy(&client, &ns, "doomed", "web", staging_policy()).await;
        create_automation(&client, &ns, "doomed", automation_spec("clusters/staging", None)).await;
        let automations: Api<ImageUpdateAutomation> = Api::namespaced(client.clone(), &ns);
        let policies: Api<ImagePolicy> = Api::namespaced(client.clone(), &ns);
        gantry_testkit::wait_for(&automations, "doomed", Duration::from_secs(60), |a| {
            a.and_then(|a| a.status.as_ref()).is_some_and(|s| s.last_push_commit.is_some())
        })
        .await
        .unwrap();
        let workdir = controllers.workdirs.join(&ns).join("doomed");
        assert!(workdir.is_dir(), "work trees are made in {}", workdir.display());

        // Then both fail (Ready=False exported): the policy's repository and the automation's
        // source do not exist.
        let missing = |field: &str| serde_json::json!({"spec": {field: {"name": "missing"}}});
        policies
            .patch("doomed", &PatchParams::default(), &Patch::Merge(missing("imageRepositoryRef")))
            .await
            .unwrap();
        automations
            .patch("doomed", &PatchParams::default(), &Patch::Merge(
                serde_json::json!({"spec": {"sourceRef": {"kind": "GitRepository", "name": "missing"}}}),
            ))
            .await
            .unwrap();
        let exported_failures = |exported: &str| {
            series(exported, "doomed")
                .iter()
                .filter(|l| {
                    l.starts_with("gotk_reconcile_condition{") && l.contains("status=\"False\"")
                })
                .count()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while exported_failures(&controllers.metrics.encode()) < 2
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let before = controllers.metrics.encode();
        assert_eq!(exported_failures(&before), 2, "{before}");
        assert!(controllers.tags.exists(&ns, "web"));

        policies.delete("doomed", &Default::default()).await.unwrap();
        automations.delete("doomed", &Default::default()).await.unwrap();
        gantry_testkit::wait_for(&policies, "doomed", Duration::from_secs(30), |p| p.is_none()).await;
        gantry_testkit::wait_for(&automations, "doomed", Duration::from_secs(30), |a| a.is_none())
            .await;
        assert!(!workdir.exists(), "{} removed with the automation", workdir.display());
        let after = controllers.metrics.encode();
        assert_eq!(series(&after, "doomed"), Vec::<String>::new(), "{after}");
    })
    .await;
}
