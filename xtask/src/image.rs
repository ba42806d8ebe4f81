//! `cargo xtask image`: Gantry's container image, built without Docker and reproducibly.
//!
//! The root is distroless-style, three layers so an upgrade pulls only what changed:
//! 1. base: `/etc/passwd` and `/etc/group` with `nonroot` (65532), the CA bundle of Debian's
//!    `ca-certificates`, `/etc/nsswitch.conf`, and the directories a pod writes to (`/tmp`,
//!    `/data`, `/home/nonroot`);
//! 2. `kustomize`, the pinned release built from the Go module proxy (static, CGO off);
//! 3. `gantry`, a release build linked statically against glibc (`+crt-static`): the musl
//!    target is not installable here. glibc's static `getaddrinfo` still reads `/etc/hosts` and
//!    `/etc/resolv.conf` (files and dns are built into libc since 2.34); nothing else needs NSS
//!    or `dlopen`.
//!
//! Reproducible: entries sorted, mtime 0, uid/gid/mode fixed, no user or group names, gzip
//! without a name or timestamp, no `created` time, build paths remapped in the binary. The same
//! inputs give the same layer, config and manifest digests (see the tests below).
//!
//! Written as an OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`) and
//! optionally pushed with Gantry's own registry client.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Debian's bundle (package `ca-certificates`): every CA Mozilla trusts, as one PEM file.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// distroless's `nonroot`, and what `gantry install` runs as.
const NON_ROOT: u64 = 65532;
/// Where the binaries live in the image (the only entry of `PATH`).
const BIN_DIR: &str = "usr/local/bin";

/// What to put into the image.
pub struct Inputs {
    pub gantry: PathBuf,
    pub kustomize: PathBuf,
    pub ca_bundle: PathBuf,
    /// `amd64`, `arm64`: the OCI architecture.
    pub architecture: String,
    pub version: String,
    /// The repository URL of the workspace manifest (`org.opencontainers.image.source`).
    pub source: String,
}

/// A built image: its blobs by digest, and the manifest that ties them together.
pub struct Image {
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub layers: Vec<Layer>,
}

/// One gzip'd tar layer.
pub struct Layer {
    pub name: &'static str,
    pub gzip: Vec<u8>,
    pub digest: String,
    /// Digest and size of the uncompressed tar (the config's `diff_ids`).
    pub diff_id: String,
    pub tar_size: u64,
}

/// One entry of a layer.
enum Entry {
    Dir {
        path: String,
        mode: u32,
        owner: u64,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } => path,
        }
    }
}

fn dir(path: &str, mode: u32, owner: u64) -> Entry {
    Entry::Dir {
        path: path.into(),
        mode,
        owner,
    }
}

fn file(path: &str, mode: u32, data: Vec<u8>) -> Entry {
    Entry::File {
        path: path.into(),
        mode,
        data,
    }
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A tar of `entries` (sorted by path, parents first), then gzip'd, both without anything that
/// varies between builds.
fn layer(name: &'static str, mut entries: Vec<Entry>) -> Result<Layer> {
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    let mut builder = tar::Builder::new(Vec::new());
    for entry in &entries {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(0);
        match entry {
            Entry::Dir { path, mode, owner } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_uid(*owner);
                header.set_gid(*owner);
                header.set_size(0);
                builder.append_data(&mut header, format!("{path}/"), std::io::empty())?;
            }
            Entry::File { path, mode, data } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_uid(0);
                header.set_gid(0);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_slice())?;
            }
        }
    }
    let tar = builder.into_inner()?;
    // No file name, mtime 0 (GzBuilder's defaults), and the OS byte is fixed by flate2.
    let mut gz = GzBuilder::new().write(Vec::new(), Compression::default());
    gz.write_all(&tar)?;
    let gzip = gz.finish()?;
    Ok(Layer {
        name,
        digest: sha256(&gzip),
        diff_id: sha256(&tar),
        tar_size: tar.len() as u64,
        gzip,
    })
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Assembles the image from `inputs`; nothing here depends on time, paths or the machine.
pub fn assemble(inputs: &Inputs) -> Result<Image> {
    let passwd = format!(
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NON_ROOT}:{NON_ROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
    );
    let group = format!("root:x:0:\nnonroot:x:{NON_ROOT}:\n");
    let base = layer(
        "base: passwd, group, CA certificates",
        vec![
            dir("etc", 0o755, 0),
            dir("etc/ssl", 0o755, 0),
            dir("etc/ssl/certs", 0o755, 0),
            file("etc/passwd", 0o644, passwd.into_bytes()),
            file("etc/group", 0o644, group.into_bytes()),
            file("etc/nsswitch.conf", 0o644, b"hosts: files dns\n".to_vec()),
            file(
                "etc/ssl/certs/ca-certificates.crt",
                0o644,
                read(&inputs.ca_bundle)?,
            ),
            dir("home", 0o755, 0),
            dir("home/nonroot", 0o700, NON_ROOT),
            // Written by `gantry run` (artifacts, tag stores, checkouts); a volume in a pod.
            dir("data", 0o755, NON_ROOT),
            dir("tmp", 0o1777, 0),
            dir("usr", 0o755, 0),
            dir("usr/local", 0o755, 0),
            dir(BIN_DIR, 0o755, 0),
        ],
    )?;
    let kustomize = layer(
        "kustomize",
        vec![file(
            &format!("{BIN_DIR}/kustomize"),
            0o755,
            read(&inputs.kustomize)?,
        )],
    )?;
    let gantry = layer(
        "gantry",
        vec![file(
            &format!("{BIN_DIR}/gantry"),
            0o755,
            read(&inputs.gantry)?,
        )],
    )?;
    let layers = vec![base, kustomize, gantry];

    let config = serde_json::json!({
        "architecture": inputs.architecture,
        "os": "linux",
        "config": {
            "User": format!("{NON_ROOT}:{NON_ROOT}"),
            "Entrypoint": [format!("/{BIN_DIR}/gantry")],
            "Cmd": ["run"],
            "Env": [
                format!("PATH=/{BIN_DIR}"),
                format!("SSL_CERT_FILE={CA_BUNDLE}"),
                "HOME=/home/nonroot",
            ],
            "WorkingDir": "/",
            "Labels": {
                "org.opencontainers.image.source": inputs.source,
                "org.opencontainers.image.version": inputs.version,
                "org.opencontainers.image.licenses": "Apache-2.0",
            },
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        },
        "history": layers.iter().map(|l| serde_json::json!({
            "created_by": format!("cargo xtask image: {}", l.name),
        })).collect::<Vec<_>>(),
    });
    let config = serde_json::to_vec(&config)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": LAYER_MEDIA_TYPE,
            "digest": l.digest,
            "size": l.gzip.len(),
        })).collect::<Vec<_>>(),
        "annotations": {
            "org.opencontainers.image.source": inputs.source,
            "org.opencontainers.image.version": inputs.version,
        },
    });
    let manifest = serde_json::to_vec(&manifest)?;
    Ok(Image {
        manifest_digest: sha256(&manifest),
        manifest,
        config,
        layers,
    })
}

impl Image {
    /// Compressed size: what a pull transfers.
    pub fn compressed_size(&self) -> u64 {
        self.layers.iter().map(|l| l.gzip.len() as u64).sum::<u64>()
            + self.config.len() as u64
            + self.manifest.len() as u64
    }

    /// Uncompressed size: the layers as tars, what the node stores unpacked (about).
    pub fn uncompressed_size(&self) -> u64 {
        self.layers.iter().map(|l| l.tar_size).sum()
    }

    /// Writes an OCI image layout into `dir` (replacing an earlier one), tagged `tag`.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> Result<()> {
        if dir.exists() {
            if !dir.join("oci-layout").is_file() {
                bail!(
                    "{} exists and is not an OCI image layout; not overwriting it",
                    dir.display()
                );
            }
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        let write_blob = |digest: &str, data: &[u8]| -> Result<()> {
            let hex = digest.trim_start_matches("sha256:");
            fs::write(blobs.join(hex), data).with_context(|| format!("writing blob {digest}"))
        };
        for layer in &self.layers {
            write_blob(&layer.digest, &layer.gzip)?;
        }
        write_blob(&sha256(&self.config), &self.config)?;
        write_blob(&self.manifest_digest, &self.manifest)?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [{
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": self.manifest_digest,
                "size": self.manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        });
        fs::write(dir.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(())
    }

    /// Pushes every blob and then the manifest as `image` (`registry/repository:tag`) with the
    /// registry client image automation uses; credentials from the docker config, if any.
    pub fn push(&self, image: &str, insecure: bool) -> Result<String> {
        use gantry_image::registry::{ClientConfig, Credentials, Reference, RegistryClient};
        let (reference, tag, digest) =
            Reference::parse_with_tag(image).with_context(|| format!("parsing {image}"))?;
        if digest.is_some() {
            bail!("push to a tag, not a digest: {image}");
        }
        let tag = tag.with_context(|| format!("{image} has no tag"))?;
        let credentials = match docker_config() {
            Some(json) => Credentials::from_docker_config(&json, &reference.registry)
                .context("reading the docker config")?,
            None => None,
        };
        let client = RegistryClient::new(
            &reference,
            ClientConfig {
                insecure,
                credentials,
                request_timeout: std::time::Duration::from_secs(300),
                ..ClientConfig::default()
            },
        )?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime
            .block_on(async {
                for layer in &self.layers {
                    let uploaded = client.push_blob(&layer.digest, &layer.gzip).await?;
                    eprintln!(
                        "  layer {} {}: {}",
                        layer.name,
                        layer.digest,
                        if uploaded { "pushed" } else { "already there" }
                    );
                }
                client
                    .push_blob(&sha256(&self.config), &self.config)
                    .await?;
                let digest = client
                    .push_manifest(&tag, MANIFEST_MEDIA_TYPE, &self.manifest)
                    .await?;
                anyhow::Ok(digest)
            })
            .with_context(|| format!("pushing {image}"))
    }
}

/// `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, if there is one.
fn docker_config() -> Option<Vec<u8>> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?;
    fs::read(dir.join("config.json")).ok()
}

/// The OCI name of the architecture this xtask was built for (and builds for).
pub fn architecture() -> Result<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Ok("amd64"),
        "aarch64" => Ok("arm64"),
        other => bail!("no image for architecture {other}"),
    }
}

/// Builds the release `gantry`, statically linked, with no build path in it, and returns the
/// binary. Cargo's own target directory is the cache: an unchanged tree builds nothing.
pub fn build_gantry(workspace: &Path) -> Result<PathBuf> {
    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    // `--target` keeps these flags off build scripts and proc macros (they must stay dynamic).
    let rustflags = [
        "-Ctarget-feature=+crt-static".to_string(),
        format!("--remap-path-prefix={}=/gantry", workspace.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
    ]
    .join("\x1f");
    let cflags = format!(
        "-ffile-prefix-map={}=/gantry -ffile-prefix-map={}=/cargo",
        workspace.display(),
        cargo_home.display()
    );
    let started = Instant::now();
    eprintln!("[image] cargo build --release --bin gantry --target {target} (+crt-static)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args(["build", "--release", "--locked", "--bin", "gantry"])
        .args([
            "--target",
            &target,
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(workspace)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env(format!("CFLAGS_{}", target.replace('-', "_")), cflags)
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        // openssl-sys (under git2's https) links libssl.a when the target is crt-static.
        .env_remove("RUSTFLAGS")
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo build")?;
    let mut binary = None;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if message["reason"] == "compiler-artifact"
                && message["target"]["name"] == "gantry"
                && let Some(path) = message["executable"].as_str()
            {
                binary = Some(PathBuf::from(path));
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo build --release of gantry failed ({status})");
    }
    let binary = binary.context("cargo built no gantry executable")?;
    eprintln!(
        "[image] release gantry built in {:.1?}: {}",
        started.elapsed(),
        binary.display()
    );
    Ok(binary)
}

/// The `repository` and `version` of the workspace manifest.
pub fn workspace_package(workspace: &Path) -> Result<(String, String)> {
    let manifest = fs::read_to_string(workspace.join("Cargo.toml"))?;
    let manifest: toml::Table = manifest.parse().context("parsing Cargo.toml")?;
    let package = &manifest["workspace"]["package"];
    let field = |name: &str| {
        package
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .with_context(|| format!("workspace.package.{name} is missing"))
    };
    Ok((field("repository")?, field("version")?))
}

pub struct Options {
    pub out: PathBuf,
    pub push: Option<String>,
    pub insecure: bool,
}

/// `cargo xtask image`: build, assemble, write the layout, push if asked; prints sizes and
/// timings. Returns the manifest digest.
pub fn image(workspace: &Path, cache: &Path, options: &Options) -> Result<String> {
    let started = Instant::now();
    if !Path::new(CA_BUNDLE).is_file() {
        bail!("{CA_BUNDLE} is missing: install Debian's `ca-certificates` package");
    }
    let gantry = build_gantry(workspace)?;
    let kustomize = crate::kustomize::ensure(cache)?;
    let (source, version) = workspace_package(workspace)?;
    let assembling = Instant::now();
    let image = assemble(&Inputs {
        gantry,
        kustomize,
        ca_bundle: CA_BUNDLE.into(),
        architecture: architecture()?.into(),
        version: version.clone(),
        source,
    })?;
    image.write_layout(&options.out, &version)?;
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    for layer in &image.layers {
        eprintln!(
            "[image] layer {:<38} {:>7.2} MiB compressed, {:>7.2} MiB uncompressed",
            layer.name,
            mib(layer.gzip.len() as u64),
            mib(layer.tar_size)
        );
    }
    eprintln!(
        "[image] assembled in {:.1?}; total {:.2} MiB compressed, {:.2} MiB uncompressed",
        assembling.elapsed(),
        mib(image.compressed_size()),
        mib(image.uncompressed_size())
    );
    println!("{}", image.manifest_digest);
    eprintln!(
        "[image] OCI layout {} (tag {version}), manifest {}",
        options.out.display(),
        image.manifest_digest
    );
    if let Some(target) = &options.push {
        let digest = image.push(target, options.insecure)?;
        if digest != image.manifest_digest {
            bail!(
                "the registry reports {digest} for the manifest, not {}",
                image.manifest_digest
            );
        }
        eprintln!("[image] pushed {target}@{digest}");
    }
    eprintln!("[image] done in {:.1?}", started.elapsed());
    Ok(image.manifest_digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(dir: &Path) -> Inputs {
        let write = |name: &str, data: &[u8]| {
            let path = dir.join(name);
            fs::write(&path, data).unwrap();
            path
        };
        Inputs {
            gantry: write("gantry", b"\x7fELF gantry"),
            kustomize: write("kustomize", b"\x7fELF kustomize"),
            ca_bundle: write("ca.crt", b"-----BEGIN CERTIFICATE-----\n"),
            architecture: "amd64".into(),
            version: "0.1.0".into(),
            source: "https://example.invalid/gantry".into(),
        }
    }

    /// Same bytes in, same digests out, whatever the files' paths, times and owners.
    #[test]
    fn same_inputs_give_the_same_digest() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        let first = assemble(&inputs(one.path())).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let second = assemble(&inputs(two.path())).unwrap();
        assert_eq!(first.manifest_digest, second.manifest_digest);
        assert_eq!(first.manifest, second.manifest);
        let changed = Inputs {
            gantry: {
                let path = two.path().join("gantry");
                fs::write(&path, b"\x7fELF gantry 2").unwrap();
                path
            },
            ..inputs(one.path())
        };
        let third = assemble(&changed).unwrap();
        assert_ne!(third.manifest_digest, first.manifest_digest);
        // Only the gantry layer changed: the others are shared with the first image.
        assert_eq!(third.layers[0].digest, first.layers[0].digest);
        assert_eq!(third.layers[1].digest, first.layers[1].digest);
        assert_ne!(third.layers[2].digest, first.layers[2].digest);
    }

    #[test]
    fn layers_have_fixed_metadata_and_a_non_root_user() {
        let dir = tempfile::tempdir().unwrap();
        let image = assemble(&inputs(dir.path())).unwrap();
        let gzip = &image.layers[0].gzip;
        // gzip header: no timestamp (bytes 4..8), no file name (FLG has no FNAME bit).
        assert_eq!(&gzip[4..8], &[0, 0, 0, 0]);
        assert_eq!(gzip[3] & 0x08, 0);
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(gzip.as_slice()));
        let mut paths = Vec::new();
        for entry in tar.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            assert_eq!(header.mtime().unwrap(), 0);
            assert!(header.username().unwrap().unwrap_or("").is_empty());
            let path = entry.path().unwrap().display().to_string();
            if path == "etc/passwd" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut { entry }, &mut text).unwrap();
                assert!(text.contains("nonroot:x:65532:65532:"), "{text}");
            }
            paths.push(path);
        }
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted, "entries are in a fixed order");
        let config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/usr/local/bin/gantry"])
        );
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["run"]));
        assert!(config.get("created").is_none());
        assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn layout_has_the_manifest_and_every_blob() {
        let dir = tempfile::tempdir().unwrap();
        let image = assemble(&inputs(dir.path())).unwrap();
        let out = dir.path().join("layout");
        image.write_layout(&out, "0.1.0").unwrap();
        // A second write replaces the first (and refuses a directory that is not a layout).
        image.write_layout(&out, "0.1.0").unwrap();
        assert!(image.write_layout(dir.path(), "0.1.0").is_err());
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(out.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["digest"], image.manifest_digest);
        for layer in &image.layers {
            let blob = out.join("blobs/sha256").join(&layer.digest[7..]);
            assert_eq!(sha256(&fs::read(blob).unwrap()), layer.digest);
        }
    }
}
