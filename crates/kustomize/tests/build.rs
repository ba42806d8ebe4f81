//! The build on real directories: plain YAML trees, kustomize overlays (with a real kustomize or
//! kubectl binary), the spec's transforms, substitution and every build-side fault.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use gantry_api::kustomize::v1::{
    CommonMetadata, Image, KustomizationSpec, Patch, PostBuild, Selector, SubstituteStrategy,
};
use gantry_kustomize::build::{BuildError, Kustomize, build, read};
use serde_json::{Value, json};

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn names(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

/// A kustomize that must exist: tests that need one fail (never skip) without it.
fn real_kustomize() -> Kustomize {
    let k = Kustomize::default();
    if let Err(tried) = k.resolve() {
        panic!(
            "these tests need kustomize or kubectl (looked for {tried}); run them through \
             `cargo xtask test`, which builds kustomize, or set GANTRY_KUSTOMIZE to a kustomize binary"
        );
    }
    k
}

fn no_kustomize() -> Kustomize {
    Kustomize {
        binary: Some("/nonexistent/kustomize".into()),
        timeout: Duration::from_secs(5),
        ..Kustomize::default()
    }
}

const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: NAME\ndata:\n  k: v\n";

fn cm(name: &str) -> String {
    CM.replace("NAME", name)
}

#[test]
fn plain_directory_takes_every_yaml_file_recursively_in_lexical_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "b.yaml", &cm("b"));
    write(
        root,
        "a.yml",
        &format!("---\n{}---\n---\n{}", cm("a1"), cm("a2")),
    );
    write(root, "c/nested/z.yaml", &cm("z"));
    write(root, "c/y.yaml", &cm("y"));
    write(root, "README.md", "not: yaml: at all");
    write(root, "notes.txt", "ignored");
    write(root, "empty.yaml", "# nothing here\n");
    write(
        root,
        "d.yaml",
        &cm("yes").replace("k: v", "yes: on\n  n: 0755"),
    );
    let objects = read(root, &no_kustomize()).unwrap();
    assert_eq!(
        names(&objects),
        [
            "ConfigMap/a1",
            "ConfigMap/a2",
            "ConfigMap/b",
            "ConfigMap/z",
            "ConfigMap/y",
            "ConfigMap/yes"
        ]
    );
    // Like kustomize: `y`, `yes` and `on` are strings (YAML 1.2), a leading 0 is octal (Go).
    assert_eq!(objects[5]["data"], json!({"yes": "on", "n": 493}));
    assert!(objects[5]["data"]["n"].is_i64());
}

#[test]
fn lists_are_flattened() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "list.yaml",
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: one}\n\
         - apiVersion: v1\n  kind: Secret\n  metadata: {name: two}\n",
    );
    let objects = read(dir.path(), &no_kustomize()).unwrap();
    assert_eq!(names(&objects), ["ConfigMap/one", "Secret/two"]);
}

#[test]
fn malformed_yaml_names_file_line_and_column_and_returns_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a-good.yaml", &cm("good"));
    write(
        dir.path(),
        "b-bad.yaml",
        &format!(
            "{}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\ndata: [unclosed\n",
            cm("first")
        ),
    );
    let err = build(
        dir.path(),
        &KustomizationSpec::default(),
        &BTreeMap::new(),
        &no_kustomize(),
        true,
    )
    .unwrap_err();
    let BuildError::Yaml { file, line, .. } = &err else {
        panic!("expected a YAML error, got {err}");
    };
    assert!(file.ends_with("b-bad.yaml"), "{err}");
    // The stream's 12th line is past the unclosed flow sequence of the second document.
    assert!((11..=12).contains(line), "line {line}: {err}");
    let msg = err.to_string();
    assert!(msg.contains("b-bad.yaml:"), "{msg}");
    assert_eq!(err.reason(), "BuildFailed");
}

#[test]
fn bad_indentation_is_reported_on_its_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "x.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n   bad: indent\n",
    );
    let err = read(dir.path(), &no_kustomize()).unwrap_err();
    assert!(
        matches!(&err, BuildError::Yaml { line: 4..=5, .. }),
        "{err}"
    );
}

#[test]
fn documents_that_are_not_objects_name_file_and_document() {
    let cases = [
        (
            "kind: ConfigMap\nmetadata: {name: x}\n",
            "missing apiVersion",
        ),
        ("apiVersion: v1\nmetadata: {name: x}\n", "missing kind"),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
            "missing metadata.name",
        ),
        ("apiVersion: v1\nkind: ConfigMap\n", "missing metadata.name"),
        ("- just\n- a list\n", "not a mapping"),
    ];
    for (doc, problem) in cases {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "x.yaml",
            &format!("{}---\n\n---\n{doc}", cm("ok")),
        );
        let err = read(dir.path(), &no_kustomize()).unwrap_err();
        let BuildError::InvalidObject {
            file,
            document,
            line,
            problem: got,
        } = &err
        else {
            panic!("{doc}: expected InvalidObject, got {err}");
        };
        assert!(file.ends_with("x.yaml"));
        assert_eq!(*document, 3, "{err}");
        assert_eq!(*line, 10, "{err}");
        assert!(got.contains(problem), "{err}");
        assert!(err.to_string().contains("x.yaml:10: document 3"), "{err}");
    }
}

#[test]
fn duplicate_objects_fail() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &cm("same"));
    write(dir.path(), "b.yaml", &cm("same"));
    let err = read(dir.path(), &no_kustomize()).unwrap_err();
    assert!(matches!(err, BuildError::Duplicate { .. }), "{err}");
    assert!(
        err.to_string().contains("a.yaml") && err.to_string().contains("b.yaml"),
        "{err}"
    );
}

#[test]
fn missing_path_and_file_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = read(&dir.path().join("nope"), &no_kustomize()).unwrap_err();
    assert!(matches!(err, BuildError::PathNotFound { .. }), "{err}");
    assert!(
        err.to_string().starts_with("kustomization path not found:"),
        "{err}"
    );
    write(dir.path(), "f.yaml", &cm("x"));
    let err = read(&dir.path().join("f.yaml"), &no_kustomize()).unwrap_err();
    assert!(matches!(err, BuildError::NotADirectory { .. }), "{err}");
}

#[test]
fn kustomization_directory_is_built_by_kustomize() {
    let kustomize = real_kustomize();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "base/cm.yaml", &cm("config"));
    write(root, "base/kustomization.yaml", "resources:\n- cm.yaml\n");
    write(
        root,
        "overlay/kustomization.yaml",
        "resources:\n- ../base\nnamePrefix: dev-\ncommonLabels:\n  env: dev\n",
    );
    let objects = read(&root.join("overlay"), &kustomize).unwrap();
    assert_eq!(names(&objects), ["ConfigMap/dev-config"]);
    assert_eq!(objects[0]["metadata"]["labels"]["env"], "dev");
}

#[test]
fn a_plain_tree_builds_nested_kustomizations_with_kustomize() {
    let kustomize = real_kustomize();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "a.yaml", &cm("plain"));
    write(root, "app/cm.yaml", &cm("app"));
    write(root, "app/ignored-by-kustomize.yaml", &cm("not-listed"));
    write(
        root,
        "app/Kustomization",
        "resources:\n- cm.yaml\nnameSuffix: -k\n",
    );
    let objects = read(root, &kustomize).unwrap();
    assert_eq!(names(&objects), ["ConfigMap/plain", "ConfigMap/app-k"]);
}

#[test]
fn kustomize_errors_are_surfaced() {
    let kustomize = real_kustomize();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "kustomization.yaml",
        "resources:\n- missing-file.yaml\n",
    );
    let err = read(dir.path(), &kustomize).unwrap_err();
    let BuildError::KustomizeFailed { stderr, .. } = &err else {
        panic!("expected KustomizeFailed, got {err}");
    };
    assert!(stderr.contains("missing-file.yaml"), "{stderr}");
    assert!(
        err.to_string().starts_with("kustomize build failed for"),
        "{err}"
    );
}

#[test]
fn missing_kustomize_binary_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "kustomization.yaml", "resources: []\n");
    let err = read(dir.path(), &no_kustomize()).unwrap_err();
    assert!(matches!(err, BuildError::KustomizeSpawn { .. }), "{err}");
}

#[test]
fn slow_kustomize_is_killed_at_the_timeout() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("kustomize");
    fs::write(&fake, "#!/bin/sh\nexec sleep 30\n").unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    write(dir.path(), "app/kustomization.yaml", "resources: []\n");
    let kustomize = Kustomize {
        binary: Some(fake),
        timeout: Duration::from_millis(300),
        ..Kustomize::default()
    };
    let started = std::time::Instant::now();
    let err = read(&dir.path().join("app"), &kustomize).unwrap_err();
    assert!(matches!(err, BuildError::KustomizeTimeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

fn spec() -> KustomizationSpec {
    KustomizationSpec {
        interval: "10m".into(),
        ..Default::default()
    }
}

const APP: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: ${replicas:=1}
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      serviceAccountName: web
      containers:
      - name: web
        image: nginx:1.0
        env:
        - {name: CLUSTER, value: '${cluster}'}
        - {name: LITERAL, value: '$${cluster}'}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web}
---
apiVersion: v1
kind: Namespace
metadata: {name: apps}
";

#[test]
fn the_spec_transforms_and_substitution_apply_in_flux_order() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "app.yaml", APP);
    let mut spec = spec();
    spec.target_namespace = Some("prod".into());
    spec.name_prefix = Some("p-".into());
    spec.common_metadata = Some(CommonMetadata {
        labels: BTreeMap::from([("team".into(), "blue".into())]),
        annotations: BTreeMap::from([("owner".into(), "ops".into())]),
    });
    spec.images = vec![Image {
        name: "nginx".into(),
        new_tag: Some("1.27".into()),
        ..Default::default()
    }];
    spec.patches = vec![
        // A strategic merge patch finds its object by the name in git, before the prefix.
        Patch {
            patch: "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers:\n      - name: web\n        env:\n        - {name: EXTRA, value: x}\n".into(),
            target: None,
        },
        Patch {
            patch: "- op: add\n  path: /metadata/labels/patched\n  value: 'yes'\n".into(),
            target: Some(Selector {
                kind: Some("Deployment".into()),
                label_selector: Some("app=web".into()),
                ..Default::default()
            }),
        },
    ];
    spec.post_build = Some(PostBuild {
        substitute: BTreeMap::from([("cluster".into(), "eu-1".into())]),
        ..Default::default()
    });
    let vars = BTreeMap::from([
        ("replicas".into(), "3".into()),
        ("cluster".into(), "overridden".into()),
    ]);
    let objects = build(dir.path(), &spec, &vars, &no_kustomize(), true).unwrap();
    let deploy = &objects[0];
    assert_eq!(deploy["metadata"]["name"], "p-web");
    assert_eq!(deploy["metadata"]["namespace"], "prod");
    assert_eq!(
        deploy["metadata"]["labels"],
        json!({"app": "web", "team": "blue", "patched": "yes"})
    );
    assert_eq!(deploy["metadata"]["annotations"], json!({"owner": "ops"}));
    assert_eq!(
        deploy["spec"]["selector"],
        json!({"matchLabels": {"app": "web"}})
    );
    assert_eq!(deploy["spec"]["replicas"], 3);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "p-web");
    assert_eq!(pod["containers"][0]["image"], "nginx:1.27");
    assert_eq!(
        pod["containers"][0]["env"],
        json!([
            {"name": "CLUSTER", "value": "eu-1"},
            {"name": "LITERAL", "value": "${cluster}"},
            {"name": "EXTRA", "value": "x"},
        ])
    );
    assert_eq!(
        objects[1]["metadata"],
        json!({"name": "p-web", "namespace": "prod",
        "labels": {"team": "blue"}, "annotations": {"owner": "ops"}})
    );
    assert_eq!(objects[2]["metadata"]["name"], "apps");
    assert!(objects[2]["metadata"].get("namespace").is_none());
}

#[test]
fn strict_substitution_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "app.yaml", APP);
    let mut spec = spec();
    spec.post_build = Some(PostBuild {
        substitute: BTreeMap::from([("unrelated".into(), "x".into())]),
        ..Default::default()
    });
    let err = build(dir.path(), &spec, &BTreeMap::new(), &no_kustomize(), true).unwrap_err();
    assert!(matches!(err, BuildError::Substitute(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("\"cluster\""), "{msg}");
    assert!(msg.contains("Deployment/web"), "{msg}");
    assert!(
        msg.contains("spec.template.spec.containers[0].env[0].value"),
        "{msg}"
    );

    // Not strict: unset variables become empty, and an empty plain scalar is YAML's null (as in
    // Flux, which re-reads the substituted text).
    let objects = build(dir.path(), &spec, &BTreeMap::new(), &no_kustomize(), false).unwrap();
    assert_eq!(
        objects[0]["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        Value::Null
    );
}

#[test]
fn substitution_needs_post_build_and_a_variable_unless_always() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "app.yaml", APP);
    // No postBuild: expressions stay as they are.
    let objects = build(dir.path(), &spec(), &BTreeMap::new(), &no_kustomize(), true).unwrap();
    assert_eq!(objects[0]["spec"]["replicas"], "${replicas:=1}");
    // postBuild without variables: Flux skips substitution...
    let mut s = spec();
    s.post_build = Some(PostBuild::default());
    let objects = build(dir.path(), &s, &BTreeMap::new(), &no_kustomize(), true).unwrap();
    assert_eq!(objects[0]["spec"]["replicas"], "${replicas:=1}");
    // ...unless the strategy is Always (and then strict mode applies).
    s.post_build = Some(PostBuild {
        substitute_strategy: Some(SubstituteStrategy::Always),
        ..Default::default()
    });
    let err = build(dir.path(), &s, &BTreeMap::new(), &no_kustomize(), true).unwrap_err();
    assert!(err.to_string().contains("\"cluster\""), "{err}");
}

#[test]
fn substitution_can_be_disabled_per_object() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: raw\n  annotations:\n    kustomize.toolkit.fluxcd.io/substitute: disabled\ndata:\n  script: echo ${HOME}\n",
    );
    let mut s = spec();
    s.post_build = Some(PostBuild {
        substitute: BTreeMap::from([("x".into(), "y".into())]),
        ..Default::default()
    });
    let objects = build(dir.path(), &s, &BTreeMap::new(), &no_kustomize(), true).unwrap();
    assert_eq!(objects[0]["data"]["script"], "echo ${HOME}");
}

#[test]
fn patch_errors_name_the_patch() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "app.yaml", APP);
    let mut s = spec();
    s.patches = vec![Patch {
        patch: "- op: add\n  path: [unclosed\n".into(),
        target: Some(Selector::default()),
    }];
    let err = build(dir.path(), &s, &BTreeMap::new(), &no_kustomize(), true).unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::PatchYaml {
                index: 0,
                line: 2..=3,
                ..
            }
        ),
        "{err}"
    );

    s.patches = vec![Patch {
        patch: "- {op: remove, path: /spec/nope}\n".into(),
        target: Some(Selector {
            kind: Some("Deployment".into()),
            ..Default::default()
        }),
    }];
    let err = build(dir.path(), &s, &BTreeMap::new(), &no_kustomize(), true).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("spec.patches[0]: applying to Deployment/web failed"),
        "{err}"
    );
}

#[test]
fn components_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &cm("a"));
    let mut s = spec();
    s.components = vec!["../c".into()];
    let err = build(dir.path(), &s, &BTreeMap::new(), &no_kustomize(), true).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("spec.components is not supported"),
        "{err}"
    );
}

#[test]
fn duplicate_keys_are_yaml_errors_on_their_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "dup.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata:\n  a: 1\n  a: 2\n",
    );
    let err = read(dir.path(), &no_kustomize()).unwrap_err();
    assert!(matches!(&err, BuildError::Yaml { line: 6, .. }), "{err}");
    assert!(
        err.to_string().ends_with("duplicate mapping key: a"),
        "{err}"
    );
}

#[test]
fn symlinks_may_not_leave_the_path() {
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret.yaml", &cm("stolen"));
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "real.yaml", &cm("real"));
    std::os::unix::fs::symlink(dir.path().join("real.yaml"), dir.path().join("inside.yaml"))
        .unwrap();
    let objects = read(dir.path(), &no_kustomize());
    // A link to a file of the path is read (and is then a duplicate, like a copy would be).
    assert!(
        matches!(objects, Err(BuildError::Duplicate { .. })),
        "{objects:?}"
    );
    fs::remove_file(dir.path().join("inside.yaml")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.yaml"),
        dir.path().join("link.yaml"),
    )
    .unwrap();
    let err = read(dir.path(), &no_kustomize()).unwrap_err();
    assert!(matches!(err, BuildError::OutsidePath { .. }), "{err}");
}

#[test]
fn files_outside_a_kustomization_need_the_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "shared/extra.yaml", &cm("extra"));
    write(
        dir.path(),
        "app/kustomization.yaml",
        "resources:\n- ../shared/extra.yaml\n",
    );
    let app = dir.path().join("app");
    let err = read(&app, &real_kustomize()).unwrap_err();
    assert!(matches!(err, BuildError::KustomizeFailed { .. }), "{err}");
    let open = Kustomize {
        load_files_outside: true,
        ..real_kustomize()
    };
    assert_eq!(names(&read(&app, &open).unwrap()), ["ConfigMap/extra"]);
}

#[test]
fn common_metadata_is_set_after_substitution() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  labels: {tier: '${tier}'}\n",
    );
    let mut s = spec();
    s.common_metadata = Some(CommonMetadata {
        labels: BTreeMap::from([("team".into(), "${team}".into())]),
        annotations: BTreeMap::new(),
    });
    s.post_build = Some(PostBuild {
        substitute: BTreeMap::from([("tier".into(), "web".into())]),
        ..Default::default()
    });
    let objects = build(dir.path(), &s, &BTreeMap::new(), &no_kustomize(), true).unwrap();
    assert_eq!(
        objects[0]["metadata"]["labels"],
        json!({"tier": "web", "team": "${team}"})
    );
}

const WEB: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      containers:
      - name: web
        image: nginx:1.0
";

/// A base, an overlay with its own prefix and image, and a component, as Flux repos have them.
fn overlay_tree(root: &Path) {
    write(root, "base/web.yaml", WEB);
    write(root, "base/kustomization.yaml", "resources:\n- web.yaml\n");
    write(
        root,
        "app/kustomization.yaml",
        "resources:\n- ../base\nnamePrefix: a-\nimages:\n- name: nginx\n  newName: mirror/nginx\n",
    );
    write(
        root,
        "components/annotate/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\ncommonAnnotations:\n  component: applied\n",
    );
}

fn flux_spec() -> KustomizationSpec {
    let mut s = spec();
    s.target_namespace = Some("prod".into());
    s.name_prefix = Some("p-".into());
    s.images = vec![Image {
        name: "nginx".into(),
        new_tag: Some("2".into()),
        ..Default::default()
    }];
    // Without a target: matches the Deployment by its name in git, before any prefix.
    s.patches = vec![Patch {
        patch:
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 4\n"
                .into(),
        target: None,
    }];
    s
}

#[test]
fn an_editable_kustomization_gets_the_spec_written_into_it_like_flux() {
    let dir = tempfile::tempdir().unwrap();
    overlay_tree(dir.path());
    let mut s = flux_spec();
    s.components = vec![
        "../components/annotate".into(),
        "../components/missing".into(),
    ];
    s.ignore_missing_components = true;
    let kustomize = Kustomize {
        edit_in_place: true,
        ..real_kustomize()
    };
    let objects = build(
        &dir.path().join("app"),
        &s,
        &BTreeMap::new(),
        &kustomize,
        true,
    )
    .unwrap();
    let web = &objects[0];
    // The spec's prefix replaces the file's, the image merges with the file's entry.
    assert_eq!(web["metadata"]["name"], "p-web");
    assert_eq!(web["metadata"]["namespace"], "prod");
    assert_eq!(web["spec"]["replicas"], 4);
    assert_eq!(
        web["spec"]["template"]["spec"]["containers"][0]["image"],
        "mirror/nginx:2"
    );
    assert_eq!(web["metadata"]["annotations"]["component"], "applied");
    let written = fs::read_to_string(dir.path().join("app/kustomization.yaml")).unwrap();
    assert!(written.contains("namespace: prod"), "{written}");
}

#[test]
fn a_read_only_kustomization_is_left_alone_and_transformed_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    overlay_tree(dir.path());
    let before = fs::read_to_string(dir.path().join("app/kustomization.yaml")).unwrap();
    let mut s = flux_spec();
    s.patches.clear();
    let objects = build(
        &dir.path().join("app"),
        &s,
        &BTreeMap::new(),
        &real_kustomize(),
        true,
    )
    .unwrap();
    // Documented difference: the prefixes stack and the image override sees the renamed image.
    assert_eq!(objects[0]["metadata"]["name"], "p-a-web");
    assert_eq!(
        objects[0]["spec"]["template"]["spec"]["containers"][0]["image"],
        "mirror/nginx:1.0"
    );
    let after = fs::read_to_string(dir.path().join("app/kustomization.yaml")).unwrap();
    assert_eq!(before, after);

    s.components = vec!["../components/annotate".into()];
    let err = build(
        &dir.path().join("app"),
        &s,
        &BTreeMap::new(),
        &real_kustomize(),
        true,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("spec.components is not supported"),
        "{err}"
    );
}

#[test]
fn an_editable_plain_directory_with_components_gets_a_generated_kustomization() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "plain/web.yaml", WEB);
    write(dir.path(), "plain/more/cm.yaml", &cm("settings"));
    write(dir.path(), "plain/notes.txt", "not a manifest");
    write(
        dir.path(),
        "components/annotate/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\ncommonAnnotations:\n  component: applied\n",
    );
    let mut s = spec();
    s.components = vec!["../components/annotate".into()];
    let kustomize = Kustomize {
        edit_in_place: true,
        load_files_outside: true,
        ..real_kustomize()
    };
    let objects = build(
        &dir.path().join("plain"),
        &s,
        &BTreeMap::new(),
        &kustomize,
        true,
    )
    .unwrap();
    let mut got = names(&objects);
    got.sort();
    assert_eq!(got, ["ConfigMap/settings", "Deployment/web"]);
    assert!(
        objects
            .iter()
            .all(|o| o["metadata"]["annotations"]["component"] == "applied")
    );
    let generated = fs::read_to_string(dir.path().join("plain/kustomization.yaml")).unwrap();
    assert!(
        generated.contains("./more/cm.yaml") && generated.contains("./web.yaml"),
        "{generated}"
    );
}
