//! `gantry build kustomization` as a process: output, warnings and exit codes as users see them.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn gantry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple(yaml).unwrap()
}

const APP: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: ${replicas:=1}
  template:
    spec:
      containers:
      - name: web
        image: nginx:1.0
        env:
        - {name: REGION, value: '${region}'}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  region: ${region}
";

const KS: &str = "\
apiVersion: source.toolkit.fluxcd.io/v1
kind: GitRepository
metadata: {name: repo, namespace: apps}
spec: {interval: 1m, url: https://example.com/repo}
---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata:
  name: web
  namespace: apps
spec:
  interval: 10m
  prune: true
  path: ./deploy
  sourceRef: {kind: GitRepository, name: repo}
  targetNamespace: prod
  namePrefix: eu-
  images:
  - name: nginx
    newTag: '1.27'
  patches:
  - target: {kind: Deployment}
    patch: |
      - op: replace
        path: /spec/template/spec/containers/0/name
        value: app
  postBuild:
    substitute:
      region: eu-west-1
";

#[test]
fn prints_the_manifests_as_applied_with_owner_labels() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "deploy/app.yaml", APP);
    write(dir.path(), "ks.yaml", KS);
    let path = dir.path().join("deploy");
    let file = dir.path().join("ks.yaml");
    let out = gantry(&[
        "build",
        "kustomization",
        "web",
        "--path",
        path.to_str().unwrap(),
        "--kustomization-file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("---\n"), "{text}");
    let docs = documents(&text);
    assert_eq!(docs.len(), 2);
    let deploy = &docs[0];
    assert_eq!(deploy["metadata"]["name"], "eu-web");
    assert_eq!(deploy["metadata"]["namespace"], "prod");
    assert_eq!(
        deploy["metadata"]["labels"]["kustomize.toolkit.fluxcd.io/name"],
        "web"
    );
    assert_eq!(
        deploy["metadata"]["labels"]["kustomize.toolkit.fluxcd.io/namespace"],
        "apps"
    );
    assert_eq!(deploy["spec"]["replicas"], 1);
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["name"], "app");
    assert_eq!(container["image"], "nginx:1.27");
    assert_eq!(container["env"][0]["value"], "eu-west-1");
    assert_eq!(docs[1]["data"]["region"], "eu-west-1");
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn without_a_file_the_spec_is_empty_and_the_namespace_flux_system() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {k: '${x}'}\n",
    );
    let out = gantry(&[
        "build",
        "kustomization",
        "infra",
        "--path",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let docs = documents(&stdout(&out));
    assert_eq!(
        docs[0]["metadata"]["labels"]["kustomize.toolkit.fluxcd.io/namespace"],
        "flux-system"
    );
    // No postBuild: nothing is substituted.
    assert_eq!(docs[0]["data"]["k"], "${x}");
    assert!(docs[0]["metadata"].get("namespace").is_none());

    let out = gantry(&[
        "build",
        "kustomization",
        "infra",
        "-n",
        "ops",
        "--path",
        dir.path().to_str().unwrap(),
    ]);
    let docs = documents(&stdout(&out));
    assert_eq!(
        docs[0]["metadata"]["labels"]["kustomize.toolkit.fluxcd.io/namespace"],
        "ops"
    );
}

#[test]
fn malformed_yaml_exits_non_zero_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "ok.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n",
    );
    write(
        dir.path(),
        "broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [x\n",
    );
    let out = gantry(&[
        "build",
        "kustomization",
        "x",
        "--path",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).is_empty(),
        "nothing printed on failure: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(err.starts_with("gantry: "), "{err}");
    assert!(err.contains("broken.yaml:"), "{err}");
    let line: u64 = err
        .split("broken.yaml:")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no line number in {err}"));
    assert!((4..=5).contains(&line), "{err}");
}

#[test]
fn missing_path_and_missing_variables_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let out = gantry(&[
        "build",
        "kustomization",
        "x",
        "--path",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("kustomization path not found"),
        "{}",
        stderr(&out)
    );

    // substituteFrom is skipped with a warning; the variable it would have supplied is then
    // missing and strict substitution names it. --var supplies it.
    write(dir.path(), "deploy/app.yaml", APP);
    let ks = KS.replace(
        "    substitute:\n      region: eu-west-1\n",
        "    substituteFrom:\n    - {kind: ConfigMap, name: cluster-vars}\n    - {kind: Secret, name: cluster-secrets, optional: true}\n",
    );
    write(dir.path(), "ks.yaml", &ks);
    let args = |extra: &[&str]| {
        let mut a = vec![
            "build".to_string(),
            "kustomization".into(),
            "web".into(),
            "--path".into(),
            dir.path().join("deploy").display().to_string(),
            "--kustomization-file".into(),
            dir.path().join("ks.yaml").display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        gantry(&a)
    };
    let out = run(args(&[]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("substituteFrom needs a cluster"), "{err}");
    assert!(
        err.contains("ConfigMap/cluster-vars, Secret/cluster-secrets"),
        "{err}"
    );
    assert!(
        err.contains("variable not set (strict mode): \"region\""),
        "{err}"
    );

    let out = run(args(&["--var", "region=us-east-1"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(documents(&stdout(&out))[1]["data"]["region"], "us-east-1");
}

#[test]
fn a_file_without_that_kustomization_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
    );
    write(dir.path(), "ks.yaml", KS);
    let out = gantry(&[
        "build",
        "kustomization",
        "other",
        "--path",
        dir.path().to_str().unwrap(),
        "--kustomization-file",
        dir.path().join("ks.yaml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("no Kustomization named \"other\""), "{err}");
    assert!(
        err.contains("GitRepository/repo, Kustomization/web"),
        "{err}"
    );
}

#[test]
fn kustomize_directories_and_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
    );
    write(
        dir.path(),
        "kustomization.yaml",
        "resources: [cm.yaml]\nnamePrefix: k-\n",
    );
    // Without any kustomize: a clear error, not a crash.
    let out = gantry(&[
        "build",
        "kustomization",
        "x",
        "--path",
        dir.path().to_str().unwrap(),
        "--kustomize",
        "/nonexistent/kustomize",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/kustomize"),
        "{}",
        stderr(&out)
    );

    // With the real one (GANTRY_KUSTOMIZE, kustomize or kubectl): the overlay is built.
    let out = gantry(&[
        "build",
        "kustomization",
        "x",
        "--path",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "needs kustomize or kubectl: run via `cargo xtask test` or set GANTRY_KUSTOMIZE; {}",
        stderr(&out)
    );
    assert_eq!(documents(&stdout(&out))[0]["metadata"]["name"], "k-c");

    write(dir.path(), "kustomization.yaml", "resources: [gone.yaml]\n");
    let out = gantry(&[
        "build",
        "kustomization",
        "x",
        "--path",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("kustomize build failed") && err.contains("gone.yaml"),
        "{err}"
    );
}

#[test]
fn help_lists_build_as_available() {
    let out = gantry(&["--help"]);
    let text = stdout(&out);
    let planned = text
        .split("Planned, not yet available:")
        .nth(1)
        .unwrap_or("");
    assert!(!planned.contains("  build "), "{text}");
    assert!(text.contains("build"), "{text}");
}

#[test]
fn kustomizations_get_the_spec_like_flux_without_touching_the_checkout() {
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    fs::create_dir_all(root.join(".git")).unwrap();
    write(
        root,
        "base/web.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\n",
    );
    write(root, "base/kustomization.yaml", "resources: [web.yaml]\n");
    write(
        root,
        "apps/prod/kustomization.yaml",
        "resources: [../../base]\nnamePrefix: file-\n",
    );
    write(
        root,
        "ks.yaml",
        concat!(
            "apiVersion: kustomize.toolkit.fluxcd.io/v1\n",
            "kind: Kustomization\n",
            "metadata: {name: web, namespace: apps}\n",
            "spec:\n",
            "  interval: 1m\n",
            "  prune: true\n",
            "  sourceRef: {kind: GitRepository, name: repo}\n",
            "  namePrefix: spec-\n",
            "  patches:\n",
            "  - patch: |\n",
            "      apiVersion: v1\n",
            "      kind: ConfigMap\n",
            "      metadata: {name: web}\n",
            "      data: {patched: 'true'}\n",
        ),
    );
    let before = fs::read_to_string(root.join("apps/prod/kustomization.yaml")).unwrap();
    let out = gantry(&[
        "build",
        "kustomization",
        "web",
        "--path",
        root.join("apps/prod").to_str().unwrap(),
        "--kustomization-file",
        root.join("ks.yaml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let docs = documents(&stdout(&out));
    // Flux's generator replaces the file's prefix, and the patch names the object as in git.
    assert_eq!(docs[0]["metadata"]["name"], "spec-web");
    assert_eq!(docs[0]["data"]["patched"], "true");
    let after = fs::read_to_string(root.join("apps/prod/kustomization.yaml")).unwrap();
    assert_eq!(before, after, "the checkout is never written to");
    assert!(!root.join("apps/prod/kustomization.yaml.original").exists());

    // Errors name the user's files, not the scratch copy.
    write(root, "base/kustomization.yaml", "resources: [gone.yaml]\n");
    let out = gantry(&[
        "build",
        "kustomization",
        "web",
        "--path",
        root.join("apps/prod").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let canonical = root.canonicalize().unwrap();
    assert!(err.contains(&canonical.display().to_string()), "{err}");
    assert!(!err.contains("/src/"), "{err}");
}
