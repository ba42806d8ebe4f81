//! Decryption time for N SOPS-encrypted Secrets in one build (default 100): each file parsed,
//! its data key unwrapped with an age identity, every value decrypted, the MAC verified, and the
//! plain file emitted — the work `spec.decryption` adds to a build, in-process (kustomize and the
//! file system not included).
//!
//! Run through `cargo xtask bench sops` (which builds the real `sops` CLI and this in release
//! mode), or directly:
//! `cargo run --release -p gantry-core --example sops_bench -- SOPS_BINARY [COUNT] [RUNS]`.
//! The files are encrypted by the real `sops` CLI for a fresh age key before timing.

use std::io::Read as _;
use std::process::Command;
use std::time::{Duration, Instant};

use gantry_core::kustomize::sops::{Document, Format, WrappedKey};

fn secret(i: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: app-{i}\n  namespace: apps\n  labels:\n    app: app-{i}\ntype: Opaque\nstringData:\n  username: user-{i}\n  password: pw-{i}-0123456789abcdef\n  url: postgres://db-{i}.apps.svc:5432/app\n  token: {}\n",
        "x".repeat(64)
    )
}

fn decrypt(identity: &age::x25519::Identity, file: &[u8]) -> usize {
    let mut doc = Document::parse(file, Format::Yaml).expect("parse");
    let enc = doc
        .metadata
        .keys
        .iter()
        .find_map(|k| match k {
            WrappedKey::Age { enc, .. } => Some(enc.clone()),
            _ => None,
        })
        .expect("an age key");
    let decryptor =
        age::Decryptor::new(age::armor::ArmoredReader::new(enc.as_bytes())).expect("age");
    let mut key = Vec::new();
    decryptor
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .expect("unwrap")
        .read_to_end(&mut key)
        .expect("read");
    doc.decrypt(&key).expect("decrypt");
    doc.emit(Format::Yaml).expect("emit").len()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let sops = args
        .next()
        .expect("usage: sops_bench SOPS_BINARY [COUNT] [RUNS]");
    let count: usize = args.next().map_or(100, |a| a.parse().expect("COUNT"));
    let runs: usize = args.next().map_or(7, |a| a.parse().expect("RUNS"));
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    eprintln!("Encrypting {count} Secrets with {sops}...");
    let files: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let path = dir.path().join(format!("secret-{i}.yaml"));
            std::fs::write(&path, secret(i)).expect("write");
            let out = Command::new(&sops)
                .current_dir(dir.path())
                .env("HOME", dir.path())
                .args(["--encrypt", "--age", &recipient])
                .arg(&path)
                .output()
                .expect("running sops");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        })
        .collect();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let bytes: usize = files.iter().map(|f| decrypt(&identity, f)).sum();
            assert!(bytes > 0);
            started.elapsed()
        })
        .collect();
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "sops: {count} encrypted Secrets decrypted (age unwrap, AES-256-GCM, MAC) in {:.1} ms \
         (median of {runs}; min {:.1} ms, max {:.1} ms; {:.0} µs per Secret)",
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e6 / count as f64
    );
}
