//! `gantry build kustomization` against the real `flux build kustomization` (v2.9.5, built from
//! the Go module proxy by `cargo xtask test`, `GANTRY_FLUX`), object for object, on fixtures with
//! Secrets encrypted at test time by the real `sops` CLI (`GANTRY_SOPS`): masking of SOPS data
//! (Opaque and `.dockerconfigjson`), `--ignore-paths`, `--recursive` with `--local-sources`, and
//! `--dry-run`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn tool(var: &str, task: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "{var} is not set: run the suite with `cargo xtask test`, or set it to the binary \
             `cargo xtask tool {task}` prints"
        ),
    }
}

fn run(program: &Path, args: &[&str], home: &Path) -> Output {
    Command::new(program)
        .args(args)
        .env("HOME", home)
        // No cluster: a kubeconfig that does not exist, and nothing but loopback.
        .env("KUBECONFIG", home.join("no-kubeconfig"))
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .output()
        .unwrap()
}

/// `sops --encrypt` of the Secret's values only, as Flux's guide recommends (kustomize must still
/// read `kind` and `metadata`).
fn encrypt(recipient: &str, name: &str, plain: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, plain).unwrap();
    let out = Command::new(tool("GANTRY_SOPS", "sops"))
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .args(["--encrypt", "--age", recipient])
        .args(["--encrypted-regex", "^(data|stringData)$"])
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

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The objects of a YAML stream, sorted by kind, namespace and name.
fn objects(out: &Output, who: &str) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{who} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    let mut docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    docs.retain(|d| !d.is_null());
    let key = |v: &Value| {
        let get = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        (
            get("/kind"),
            get("/metadata/namespace"),
            get("/metadata/name"),
        )
    };
    docs.sort_by_key(key);
    docs
}

/// Runs both CLIs with the same arguments and returns Gantry's objects after checking that they
/// equal Flux's.
fn same_as_flux(args: &[&str]) -> Vec<Value> {
    let home = tempfile::tempdir().unwrap();
    let mut full = vec!["build", "kustomization"];
    full.extend_from_slice(args);
    let flux = objects(
        &run(&tool("GANTRY_FLUX", "flux"), &full, home.path()),
        "flux",
    );
    let gantry = objects(
        &run(Path::new(env!("CARGO_BIN_EXE_gantry")), &full, home.path()),
        "gantry",
    );
    assert_eq!(
        gantry.len(),
        flux.len(),
        "gantry: {gantry:#?}\nflux: {flux:#?}"
    );
    for (g, f) in gantry.iter().zip(&flux) {
        assert_eq!(g, f, "gantry and flux differ");
    }
    gantry
}

const KS: &str = "apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata:
  name: apps
  namespace: flux-system
spec:
  interval: 10m
  path: ./
  prune: true
  sourceRef:
    kind: GitRepository
    name: flux-system
";

#[test]
fn encrypted_secrets_are_masked_like_flux() {
    let key = age::x25519::Identity::generate();
    let recipient = key.to_public().to_string();
    let repo = tempfile::tempdir().unwrap();
    let dir = repo.path();
    let opaque = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: apps\nstringData:\n  password: hunter2\ndata:\n  token: c2VjcmV0\n";
    let docker = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: pull\n  namespace: apps\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: eyJhdXRocyI6e319\n";
    write(
        dir,
        "deploy/db.yaml",
        &encrypt(&recipient, "db.yaml", opaque),
    );
    write(
        dir,
        "deploy/pull.yaml",
        &encrypt(&recipient, "pull.yaml", docker),
    );
    write(
        dir,
        "deploy/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: plain\n  namespace: apps\ndata:\n  a: b\n",
    );
    write(dir, "ks.yaml", KS);
    let path = dir.join("deploy");
    let ks = dir.join("ks.yaml");
    let objects = same_as_flux(&[
        "apps",
        "--path",
        path.to_str().unwrap(),
        "--kustomization-file",
        ks.to_str().unwrap(),
        "--dry-run",
    ]);
    let text = serde_json::to_string(&objects).unwrap();
    assert!(
        !text.contains("ENC[") && !text.contains("\"sops\""),
        "{text}"
    );
    let db = objects
        .iter()
        .find(|o| o["metadata"]["name"] == "db")
        .unwrap();
    assert_eq!(db["stringData"]["password"], "**SOPS**");
    assert_eq!(db["data"]["token"], "KipTT1BTKio=");
    let pull = objects
        .iter()
        .find(|o| o["metadata"]["name"] == "pull")
        .unwrap();
    // base64 of {"mask":"**SOPS**"}
    assert_eq!(
        pull["data"][".dockerconfigjson"],
        "eyJtYXNrIjoiKipTT1BTKioifQ=="
    );
}

#[test]
fn ignore_paths_and_recursive_builds_match_flux() {
    let repo = tempfile::tempdir().unwrap();
    let dir = repo.path();
    let cm = |name: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: apps\ndata:\n  a: b\n"
        )
    };
    // The root Kustomization's path holds a nested Kustomization for ./apps.
    write(
        dir,
        "clusters/prod/apps.yaml",
        &KS.replace("path: ./", "path: ./apps"),
    );
    write(dir, "clusters/prod/infra.yaml", &cm("infra"));
    write(dir, "clusters/prod/drafts/skip.yaml", &cm("draft"));
    write(dir, "apps/web.yaml", &cm("web"));
    write(dir, "apps/extra.yaml", &cm("extra"));
    write(
        dir,
        "root.yaml",
        &KS.replace("name: apps", "name: flux-system")
            .replace("path: ./", "path: ./clusters/prod"),
    );
    let path = dir.join("clusters/prod");
    let root = dir.join("root.yaml");
    let sources = format!("GitRepository/flux-system/flux-system={}", dir.display());
    let objects = same_as_flux(&[
        "flux-system",
        "--path",
        path.to_str().unwrap(),
        "--kustomization-file",
        root.to_str().unwrap(),
        "--dry-run",
        "--ignore-paths",
        "drafts/,extra.yaml",
        "--recursive",
        "--local-sources",
        &sources,
    ]);
    let names: Vec<&str> = objects
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["infra", "web", "apps"]);
    let web = objects
        .iter()
        .find(|o| o["metadata"]["name"] == "web")
        .unwrap();
    assert_eq!(
        web["metadata"]["labels"]["kustomize.toolkit.fluxcd.io/name"],
        "apps"
    );
}

#[test]
fn dry_run_needs_a_kustomization_file_like_flux() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n",
    );
    let args = [
        "build",
        "kustomization",
        "x",
        "--path",
        dir.path().to_str().unwrap(),
        "--dry-run",
    ];
    for program in [
        tool("GANTRY_FLUX", "flux"),
        PathBuf::from(env!("CARGO_BIN_EXE_gantry")),
    ] {
        let out = run(&program, &args, dir.path());
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("dry-run mode requires a kustomization file"),
            "{stderr}"
        );
    }
}
