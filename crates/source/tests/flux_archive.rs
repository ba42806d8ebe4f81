//! Artifact parity with Flux: `fixtures/flux-archive/repo` archived by Flux's own
//! `storage.Archive` (github.com/fluxcd/pkg/artifact v0.18.0, the code source-controller stores
//! artifacts with, called from a one-off Go program built from the Go module proxy) gave
//! `fixtures/flux-archive/flux.tar.gz`, digest `FLUX_DIGEST`, whose tar stream has sha256
//! `FLUX_TAR_SHA256`. Gantry's artifact for the same tree must be those bytes exactly: the tar
//! stream (walk order, `.` root entry, names, modes 0600/0700/0750, USTAR headers and the prefix
//! split of long names) and the gzip around it (Go's deflate, ported as `goflate`), so
//! `status.artifact.digest` is the same whichever of the two stored the revision.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::read::GzDecoder;
use gantry_source::artifact::{digest_of, write_tar, write_tarball};
use gantry_source::sourceignore::SourceIgnore;

/// `status.artifact.digest` Flux computes for the fixture repository.
const FLUX_DIGEST: &str = "sha256:0bf6ba17717136176fa4356b39a24c2c1335adad78ff7a7d5018ae767da8d623";
/// sha256 of the uncompressed tar stream inside Flux's artifact.
const FLUX_TAR_SHA256: &str =
    "sha256:8cd4cfa091b82a682ad9289680c7da1c8dad67f810c2a694db3630bf455db726";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flux-archive")
}

// The fixture copied to a scratch directory with the modes git gives it (run.sh executable),
// so the result does not depend on the checkout's umask or mtimes.
fn checkout() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    fn copy(from: &Path, to: &Path) {
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                std::fs::create_dir(&target).unwrap();
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
                let executable = entry.file_name() == "run.sh";
                let mode = if executable { 0o755 } else { 0o644 };
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&fixtures().join("repo"), dir.path());
    dir
}

#[test]
fn the_fixture_is_flux_s_artifact() {
    let bytes = std::fs::read(fixtures().join("flux.tar.gz")).unwrap();
    assert_eq!(digest_of(&bytes), FLUX_DIGEST);
    let mut tar = Vec::new();
    GzDecoder::new(&bytes[..]).read_to_end(&mut tar).unwrap();
    assert_eq!(digest_of(&tar), FLUX_TAR_SHA256);
}

#[test]
fn the_tar_stream_is_flux_s() {
    let dir = checkout();
    let rules = SourceIgnore::load(dir.path(), None).unwrap();
    let ours = write_tar(dir.path(), &rules, Vec::new()).unwrap();
    let mut flux = Vec::new();
    GzDecoder::new(&std::fs::read(fixtures().join("flux.tar.gz")).unwrap()[..])
        .read_to_end(&mut flux)
        .unwrap();
    // On a mismatch, name the first differing 512-byte block (a header or file data).
    if let Some(at) = ours.iter().zip(&flux).position(|(a, b)| a != b) {
        panic!(
            "tar streams differ at byte {at} (block {}): ours {:?} flux {:?}",
            at / 512,
            String::from_utf8_lossy(&ours[at / 512 * 512..(at / 512 * 512 + 160).min(ours.len())]),
            String::from_utf8_lossy(&flux[at / 512 * 512..(at / 512 * 512 + 160).min(flux.len())]),
        );
    }
    assert_eq!(ours.len(), flux.len());
    assert_eq!(digest_of(&ours), FLUX_TAR_SHA256);
}

#[test]
fn the_artifact_is_flux_s() {
    let dir = checkout();
    let rules = SourceIgnore::load(dir.path(), None).unwrap();
    let mut ours = Vec::new();
    write_tarball(dir.path(), &rules, &mut ours).unwrap();
    let flux = std::fs::read(fixtures().join("flux.tar.gz")).unwrap();
    if let Some(at) = ours.iter().zip(&flux).position(|(a, b)| a != b) {
        panic!(
            "gzip streams differ at byte {at} of {} (ours) / {} (Flux)",
            ours.len(),
            flux.len()
        );
    }
    assert_eq!(ours.len(), flux.len());
    assert_eq!(digest_of(&ours), FLUX_DIGEST);
}

// Flux's own `storage.Archive` (pkg/artifact v0.18.0, as in the fixture's note) in a one-off Go
// program: `ref STORAGE DIR` archives DIR with Flux's default ignore rules and prints the digest.
const FLUX_ARCHIVE_PROGRAM: &str = r#"package main

import (
	"fmt"
	"os"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/artifact/storage"
)

func main() {
	st := &storage.Storage{BasePath: os.Args[1], Hostname: "localhost"}
	a := meta.Artifact{Path: "gitrepository/ns/name/artifact.tar.gz", Revision: "r"}
	if err := st.MkdirAll(a); err != nil {
		panic(err)
	}
	if err := st.Archive(&a, os.Args[2], storage.SourceIgnoreFilter(nil, nil)); err != nil {
		panic(err)
	}
	fmt.Println(a.Digest)
}
"#;

// The versions source-controller v1.9.6 builds with (its go.mod replaces go-digest likewise).
const FLUX_ARCHIVE_GO_MOD: &str = "module fluxarchive

go 1.26.0

require (
	github.com/fluxcd/pkg/apis/meta v1.30.0
	github.com/fluxcd/pkg/artifact v0.18.0
)

replace github.com/opencontainers/go-digest => github.com/opencontainers/go-digest v1.0.1-0.20220411205349-bde1400a84be
";

fn cache_dir() -> PathBuf {
    std::env::var_os("GANTRY_CACHE_DIR").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/gantry"),
        PathBuf::from,
    )
}

// Builds the program (modules from ~/.cache/gantry/go/mod, else the Go module proxy).
fn flux_archive_program(work: &Path) -> PathBuf {
    std::fs::write(work.join("main.go"), FLUX_ARCHIVE_PROGRAM).unwrap();
    std::fs::write(work.join("go.mod"), FLUX_ARCHIVE_GO_MOD).unwrap();
    let bin = work.join("flux-archive");
    let cache = cache_dir();
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(work)
        .env("GOMODCACHE", cache.join("go/mod"))
        .env("GOCACHE", cache.join("go/build"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .env_remove("GOPATH")
        .output()
        .expect("the `go` command is needed to build Flux's storage.Archive");
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

// Deterministic bytes: text-like when `text`, else noise (xorshift64).
fn content(len: usize, seed: u64, text: bool) -> Vec<u8> {
    const WORDS: &[&[u8]] = &[
        b"apiVersion: apps/v1\n",
        b"kind: Deployment\n",
        b"  replicas: 3\n",
        b"        image: ghcr.io/example/app:v1.2.3\n",
        b"  name: ",
        b"podinfo",
        b"---\n",
    ];
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        if text {
            out.extend_from_slice(WORDS[(next() % WORDS.len() as u64) as usize]);
        } else {
            out.push((next() >> 32) as u8);
        }
    }
    out.truncate(len);
    out
}

#[test]
fn a_larger_tree_is_archived_byte_for_byte_as_flux_does() {
    use std::os::unix::fs::PermissionsExt;
    // Files around Go's 32 KiB copy buffer, the 32 KiB window and 64 KiB stored-block limits,
    // empty and executable files, many small ones, a long path, a non-ASCII name (PAX) and a
    // file Flux's default rules ignore.
    let tree = tempfile::tempdir().unwrap();
    let mut files: Vec<(String, Vec<u8>, u32)> = vec![
        ("empty.yaml".into(), Vec::new(), 0o644),
        ("bin/run.sh".into(), b"#!/bin/sh\necho hi\n".to_vec(), 0o755),
        ("data/noise.bin".into(), content(70_000, 1, false), 0o644),
        (
            "data/exact-32k.yaml".into(),
            content(32_768, 2, true),
            0o644,
        ),
        (
            "data/exact-64k.bin".into(),
            content(65_536, 3, false),
            0o644,
        ),
        ("data/big.yaml".into(), content(1_500_000, 4, true), 0o644),
        (
            "data/mixed.bin".into(),
            {
                let mut v = content(40_000, 5, true);
                v.extend(content(40_000, 6, false));
                v.extend(content(40_000, 5, true));
                v
            },
            0o600,
        ),
        ("logo.png".into(), content(5000, 7, false), 0o644),
        (
            "d\u{e9}j\u{e0}-vu.yaml".into(),
            b"kind: ConfigMap\n".to_vec(),
            0o644,
        ),
        (
            format!("{}/deep.yaml", ["nested"; 15].join("/")),
            content(3000, 8, true),
            0o644,
        ),
        (
            "\u{fc}n\u{ef}c\u{f6}d\u{e9}/file.yaml".into(),
            b"a: 1\n".to_vec(),
            0o644,
        ),
        // Too long for USTAR either way: PAX, the block keeps the first 100 bytes (here ending
        // in `/`, which Go turns into the terminator).
        (
            format!("{}.yaml", "x".repeat(130)),
            b"b: 2\n".to_vec(),
            0o644,
        ),
        (
            format!("{}{}.yaml", "abcd/".repeat(20), "y".repeat(120)),
            b"c: 3\n".to_vec(),
            0o644,
        ),
    ];
    for i in 0..200 {
        files.push((
            format!("many/f{i:03}.yaml"),
            content(100 + i * 37, 100 + i as u64, true),
            0o644,
        ));
    }
    for (name, bytes, mode) in &files {
        let path = tree.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
    }

    let work = tempfile::tempdir().unwrap();
    let program = flux_archive_program(work.path());
    let storage = work.path().join("storage");
    std::fs::create_dir(&storage).unwrap();
    let out = Command::new(&program)
        .arg(&storage)
        .arg(tree.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flux_digest = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let flux = std::fs::read(storage.join("gitrepository/ns/name/artifact.tar.gz")).unwrap();
    assert_eq!(digest_of(&flux), flux_digest);
    assert!(
        flux.len() > 200_000,
        "the tree compresses to {} bytes",
        flux.len()
    );

    let rules = SourceIgnore::load(tree.path(), None).unwrap();
    let mut ours = Vec::new();
    write_tarball(tree.path(), &rules, &mut ours).unwrap();
    // Name the first difference in the tar streams before the gzip bytes.
    let (mut flux_tar, mut our_tar) = (Vec::new(), Vec::new());
    GzDecoder::new(&flux[..])
        .read_to_end(&mut flux_tar)
        .unwrap();
    GzDecoder::new(&ours[..]).read_to_end(&mut our_tar).unwrap();
    if let Some(at) = our_tar.iter().zip(&flux_tar).position(|(a, b)| a != b) {
        let block = |t: &[u8]| {
            let from = at / 512 * 512;
            String::from_utf8_lossy(&t[from..(from + 160).min(t.len())]).into_owned()
        };
        panic!(
            "tar streams differ at byte {at} (block {}): ours {:?} flux {:?}",
            at / 512,
            block(&our_tar),
            block(&flux_tar)
        );
    }
    assert_eq!(our_tar.len(), flux_tar.len(), "tar stream lengths");
    if let Some(at) = ours.iter().zip(&flux).position(|(a, b)| a != b) {
        panic!("gzip streams differ at byte {at} of {}", flux.len());
    }
    assert_eq!(ours.len(), flux.len());
    assert_eq!(digest_of(&ours), flux_digest);
}
