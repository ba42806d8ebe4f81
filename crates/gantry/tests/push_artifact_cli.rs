//! `gantry push artifact` against a real registry (Debian's `docker-registry`): the manifest is
//! the one `flux push artifact` writes (media types, config blob, annotations), and the real
//! `flux pull artifact` (`GANTRY_FLUX`) unpacks it; bad arguments are refused with a message.

use std::path::PathBuf;
use std::process::Command;

use gantry_testkit::registry::{Registry, RegistryAuth};

fn gantry(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .output()
        .unwrap()
}

fn flux_bin() -> PathBuf {
    std::env::var_os("GANTRY_FLUX").map(PathBuf::from).expect(
        "GANTRY_FLUX is not set: run the suite with `cargo xtask test`, which builds the flux CLI",
    )
}

#[tokio::test]
async fn gantry_pushes_what_flux_pulls() {
    let registry = Registry::start(RegistryAuth::htpasswd("ci", "pw"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("deploy")).unwrap();
    std::fs::write(dir.path().join("deploy/app.yaml"), "kind: ConfigMap\n").unwrap();
    std::fs::write(dir.path().join("deploy/skip.txt"), "left out\n").unwrap();
    let url = format!("oci://{}:v1", registry.image("team/app"));
    let out = gantry(&[
        "push",
        "artifact",
        &url,
        "--path",
        dir.path().to_str().unwrap(),
        "--source=https://git.example/team/app",
        "--revision=main@sha1:0123456789abcdef0123456789abcdef01234567",
        "--annotations=org.example/team=a",
        "--ignore-paths=*.txt",
        "--creds=ci:pw",
        "--insecure-registry",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let digest = printed.trim().rsplit_once('@').unwrap().1.to_owned();

    // The manifest, byte for byte in the shape flux writes.
    let reference = gantry_source::registry::Reference::parse(&registry.image("team/app")).unwrap();
    let client = gantry_source::registry::RegistryClient::new(
        &reference,
        gantry_source::registry::ClientConfig {
            insecure: true,
            credentials: Some(gantry_source::registry::Credentials {
                username: "ci".into(),
                password: "pw".into(),
            }),
            ..Default::default()
        },
    )
    .unwrap();
    let (bytes, fetched) = client.manifest("v1").await.unwrap();
    assert_eq!(fetched, digest);
    let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.cncf.flux.config.v1+json"
    );
    assert_eq!(
        manifest["config"]["digest"],
        "sha256:5b943e2b943f6c81dbbd4e2eca5121f4fcc39139e3d1219d6d89bd925b77d9fe",
        "the config blob flux push artifact uploads"
    );
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.cncf.flux.content.v1.tar+gzip"
    );
    let annotations = &manifest["annotations"];
    assert_eq!(
        annotations["org.opencontainers.image.source"],
        "https://git.example/team/app"
    );
    assert_eq!(
        annotations["org.opencontainers.image.revision"],
        "main@sha1:0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(annotations["org.example/team"], "a");
    let created = annotations["org.opencontainers.image.created"]
        .as_str()
        .unwrap();
    assert!(
        created.ends_with('Z') && created.parse::<jiff::Timestamp>().is_ok(),
        "RFC 3339 UTC: {created}"
    );

    // The real flux CLI pulls and unpacks it.
    let home = tempfile::tempdir().unwrap();
    let docker = home.path().join(".docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        registry.docker_config("ci", "pw"),
    )
    .unwrap();
    let output = tempfile::tempdir().unwrap();
    let nowhere = "http://127.0.0.1:9";
    let pulled = Command::new(flux_bin())
        .args(["pull", "artifact", &url, "--insecure-registry", "--output"])
        .arg(output.path())
        .env("HOME", home.path())
        .env("DOCKER_CONFIG", &docker)
        .env("HTTPS_PROXY", nowhere)
        .env("HTTP_PROXY", nowhere)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&pulled.stderr).to_string();
    assert!(pulled.status.success(), "flux pull artifact: {text}");
    assert!(
        text.contains("main@sha1:0123456789abcdef0123456789abcdef01234567"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(output.path().join("deploy/app.yaml")).unwrap(),
        "kind: ConfigMap\n"
    );
    assert!(
        !output.path().join("deploy/skip.txt").exists(),
        "--ignore-paths"
    );
}

#[test]
fn bad_urls_and_paths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let base = ["--source=s", "--revision=r", "--path"];
    for (url, expected) in [
        ("127.0.0.1:1/app:v1", "URL must be in format"),
        ("oci://127.0.0.1:1/app", "URL must name a tag"),
        ("oci://127.0.0.1:1/App:v1", "invalid image reference"),
    ] {
        let mut args = vec!["push", "artifact", url];
        args.extend(base);
        args.push(path);
        let out = gantry(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "{url}: {stderr}"
        );
    }
    let out = gantry(&[
        "push",
        "artifact",
        "oci://127.0.0.1:1/app:v1",
        "--source=s",
        "--revision=r",
        "--path",
        "/nonexistent/dir",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
}
