//! `gantry image tags` against a real registry (Debian's docker-registry on loopback).

use std::process::Command;

use gantry_testkit::registry::{Registry, RegistryAuth};

fn gantry(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .output()
        .expect("run gantry");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sorted(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn lists_tags_with_credentials_and_the_default_exclusions() {
    let registry = Registry::start(RegistryAuth::htpasswd("ci", "pw"));
    let tags: Vec<String> = ["1.0.0", "1.1.0", "sha256-abcd.sig", "latest"]
        .iter()
        .map(|t| t.to_string())
        .collect();
    registry.push_tags("team/app", &tags).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, registry.docker_config("ci", "pw")).unwrap();
    let image = registry.image("team/app");
    let config = config.to_str().unwrap();

    let (code, out, err) = gantry(&[
        "image",
        "tags",
        &image,
        "--insecure",
        "--docker-config",
        config,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(sorted(&out), ["1.0.0", "1.1.0", "latest"]);

    let (code, out, _) = gantry(&[
        "image",
        "tags",
        &image,
        "--insecure",
        "--docker-config",
        config,
        "--exclude",
        "^1\\.",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        sorted(&out),
        ["latest", "sha256-abcd.sig"],
        "--exclude replaces the default"
    );

    let (code, out, err) = gantry(&["image", "tags", &image, "--insecure"]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(
        err.contains("requires credentials and none were given"),
        "{err}"
    );

    let (code, _, err) = gantry(&["image", "tags", &format!("{image}:1.0.0"), "--insecure"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("should not contain a tag; remove ':1.0.0'"),
        "{err}"
    );
}

#[tokio::test]
async fn tls_registries_need_the_ca_file() {
    let registry = Registry::start_tls(RegistryAuth::Anonymous);
    registry.push("app", "v1").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, registry.ca_pem().unwrap()).unwrap();
    let image = registry.image("app");

    let (code, out, err) = gantry(&["image", "tags", &image, "--ca-file", ca.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (0, "v1\n"), "{err}");
    let (code, _, err) = gantry(&["image", "tags", &image]);
    assert_eq!(code, 1);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}
