//! SOPS decryption of builds, with files encrypted at test time by the real `sops` CLI (built
//! from the Go module proxy by `cargo xtask test`, path in `GANTRY_SOPS`) for age keys made here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use age::secrecy::ExposeSecret as _;
use base64::Engine as _;
use gantry_api::kustomize::v1::{KustomizationSpec, PostBuild};
use gantry_kustomize::build::{self, Kustomize};
use gantry_kustomize::decrypt::{self, DecryptError, Keys};
use serde_json::Value;

fn sops_bin() -> PathBuf {
    match std::env::var_os("GANTRY_SOPS") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "GANTRY_SOPS is not set: run the suite with `cargo xtask test`, which builds sops, or \
             set GANTRY_SOPS to a sops binary (`cargo xtask tool sops` prints one)"
        ),
    }
}

fn kustomize() -> Kustomize {
    let binary = std::env::var_os(build::KUSTOMIZE_ENV)
        .map(PathBuf::from)
        .expect("GANTRY_KUSTOMIZE: run with `cargo xtask test`, which builds kustomize");
    Kustomize {
        binary: Some(binary),
        edit_in_place: true,
        ..Kustomize::default()
    }
}

/// An age key pair: the Secret data entry and the recipient.
struct AgeKey {
    identity: age::x25519::Identity,
}

impl AgeKey {
    fn new() -> Self {
        Self {
            identity: age::x25519::Identity::generate(),
        }
    }
    fn recipient(&self) -> String {
        self.identity.to_public().to_string()
    }
    fn secret_data(&self) -> BTreeMap<String, Vec<u8>> {
        let text = format!(
            "# created: by the test\n# public key: {}\n{}\n",
            self.recipient(),
            self.identity.to_string().expose_secret()
        );
        BTreeMap::from([("identity.agekey".to_string(), text.into_bytes())])
    }
    fn keys(&self) -> Keys {
        Keys::from_secret("ns/sops-keys", &self.secret_data()).unwrap()
    }
}

/// `sops --encrypt` of `plain` (named `name`, which sets the format) for `key`, with extra flags.
fn sops_encrypt(key: &AgeKey, name: &str, plain: &[u8], flags: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, plain).unwrap();
    let out = Command::new(sops_bin())
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env_remove("SOPS_AGE_KEY_FILE")
        .args(["--encrypt", "--age", &key.recipient()])
        .args(flags)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sops --encrypt failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

const SECRET: &str = "apiVersion: v1
kind: Secret
metadata:
  name: db
  namespace: apps
type: Opaque
stringData:
  password: hunter2
  port: \"5432\"
";

fn spec() -> KustomizationSpec {
    KustomizationSpec {
        interval: "1h".into(),
        ..Default::default()
    }
}

/// Decrypts the private copy at `root` and builds it, as the controller does.
fn build_decrypted(
    root: &Path,
    keys: &Keys,
    spec: &KustomizationSpec,
) -> Result<Vec<Value>, String> {
    decrypt::decrypt_sources(root, root, keys).map_err(|e| e.to_string())?;
    let mut objects = build::build(root, spec, &BTreeMap::new(), &kustomize(), true)
        .map_err(|e| e.to_string())?;
    decrypt::decrypt_objects(&mut objects, keys).map_err(|e| e.to_string())?;
    Ok(objects)
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {objects:#?}"))
}

fn secret_data(secret: &Value, key: &str) -> Vec<u8> {
    let value = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no data.{key} in {secret}"));
    base64::engine::general_purpose::STANDARD
        .decode(value)
        .unwrap()
}

#[test]
fn an_encrypted_secret_in_a_plain_directory_is_decrypted() {
    let key = AgeKey::new();
    let root = tempfile::tempdir().unwrap();
    let encrypted = sops_encrypt(&key, "secret.yaml", SECRET.as_bytes(), &[]);
    assert!(!String::from_utf8_lossy(&encrypted).contains("hunter2"));
    write(root.path(), "secret.yaml", &encrypted);
    write(
        root.path(),
        "cm.yaml",
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: plain\ndata:\n  a: b\n",
    );
    let objects = build_decrypted(root.path(), &key.keys(), &spec()).unwrap();
    let secret = find(&objects, "Secret", "db");
    assert_eq!(secret["stringData"]["password"], "hunter2");
    assert_eq!(secret["stringData"]["port"], "5432");
    assert!(secret.get("sops").is_none(), "{secret}");
    assert_eq!(find(&objects, "ConfigMap", "plain")["data"]["a"], "b");
    // The decrypted file is readable by this user only.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(root.path().join("secret.yaml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn generators_read_decrypted_json_dotenv_and_binary_files() {
    let key = AgeKey::new();
    let root = tempfile::tempdir().unwrap();
    let json = b"{\n  \"user\": \"admin\",\n  \"token\": \"s3cr3t\"\n}";
    let dotenv = b"DB_USER=app\nDB_PASSWORD=pa55\n";
    let binary: Vec<u8> = b"\x00\x01binary key\xff\n".to_vec();
    write(
        root.path(),
        "config.json",
        &sops_encrypt(&key, "config.json", json, &[]),
    );
    write(
        root.path(),
        "app.env",
        &sops_encrypt(&key, "app.env", dotenv, &[]),
    );
    write(
        root.path(),
        "tls.key",
        &sops_encrypt(&key, "tls.key", &binary, &[]),
    );
    write(
        root.path(),
        "secret.yaml",
        &sops_encrypt(&key, "secret.yaml", SECRET.as_bytes(), &[]),
    );
    write(
        root.path(),
        "kustomization.yaml",
        b"resources:\n- secret.yaml\nsecretGenerator:\n- name: gen\n  files:\n  - config.json\n  - tls.key\n  envs:\n  - app.env\ngeneratorOptions:\n  disableNameSuffixHash: true\n",
    );
    let objects = build_decrypted(root.path(), &key.keys(), &spec()).unwrap();
    let generated = find(&objects, "Secret", "gen");
    let config: Value = serde_json::from_slice(&secret_data(generated, "config.json")).unwrap();
    assert_eq!(config["token"], "s3cr3t");
    assert_eq!(secret_data(generated, "DB_PASSWORD"), b"pa55");
    assert_eq!(secret_data(generated, "DB_USER"), b"app");
    assert_eq!(secret_data(generated, "tls.key"), binary);
    assert_eq!(
        find(&objects, "Secret", "db")["stringData"]["password"],
        "hunter2"
    );
}

#[test]
fn encryption_rules_written_by_sops_are_honoured() {
    for flags in [
        &["--encrypted-regex", "^(data|stringData)$"][..],
        &["--unencrypted-regex", "^(apiVersion|kind|metadata|type)$"][..],
        &["--encrypted-suffix", "Data"][..],
        &["--unencrypted-suffix", "_plain"][..],
        &["--encrypted-regex", "^stringData$", "--mac-only-encrypted"][..],
    ] {
        let key = AgeKey::new();
        let root = tempfile::tempdir().unwrap();
        let encrypted = sops_encrypt(&key, "secret.yaml", SECRET.as_bytes(), flags);
        write(root.path(), "secret.yaml", &encrypted);
        let objects = build_decrypted(root.path(), &key.keys(), &spec())
            .unwrap_or_else(|e| panic!("{flags:?}: {e}"));
        assert_eq!(
            find(&objects, "Secret", "db")["stringData"]["password"],
            "hunter2",
            "{flags:?}"
        );
    }
}

#[test]
fn a_tampered_value_fails_the_mac_and_names_the_file() {
    let key = AgeKey::new();
    let root = tempfile::tempdir().unwrap();
    let encrypted = sops_encrypt(
        &key,
        "secret.yaml",
        SECRET.as_bytes(),
        &["--encrypted-regex", "^stringData$"],
    );
    let text = String::from_utf8(encrypted).unwrap();
    assert!(text.contains("name: db"));
    write(
        root.path(),
        "apps/secret.yaml",
        text.replace("name: db", "name: other").as_bytes(),
    );
    let err = build_decrypted(root.path(), &key.keys(), &spec()).unwrap_err();
    assert!(err.contains("apps/secret.yaml"), "{err}");
    assert!(
        err.contains("failed to verify sops data integrity"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn a_swapped_encrypted_value_fails() {
    let key = AgeKey::new();
    let root = tempfile::tempdir().unwrap();
    let text =
        String::from_utf8(sops_encrypt(&key, "secret.yaml", SECRET.as_bytes(), &[])).unwrap();
    // Each value is bound to its path: moving a ciphertext to another key is detected.
    let line = |k: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(k))
            .unwrap()
            .to_string()
    };
    let (password, port) = (line("password:"), line("port:"));
    let swapped = text
        .replace(&password, "PLACEHOLDER")
        .replace(&port, &password.replace("password:", "port:"))
        .replace("PLACEHOLDER", &port.replace("port:", "password:"));
    write(root.path(), "secret.yaml", swapped.as_bytes());
    let err = build_decrypted(root.path(), &key.keys(), &spec()).unwrap_err();
    assert!(err.contains("secret.yaml"), "{err}");
    assert!(err.contains("value at 'stringData:password'"), "{err}");
}

#[test]
fn a_wrong_key_is_reported_with_the_recipient() {
    let key = AgeKey::new();
    let other = AgeKey::new();
    let root = tempfile::tempdir().unwrap();
    write(
        root.path(),
        "secret.yaml",
        &sops_encrypt(&key, "secret.yaml", SECRET.as_bytes(), &[]),
    );
    let err = build_decrypted(root.path(), &other.keys(), &spec()).unwrap_err();
    assert!(err.contains("secret.yaml"), "{err}");
    assert!(err.contains(&key.recipient()), "{err}");
    assert!(
        err.contains("no age identity of the decryption Secret matches"),
        "{err}"
    );
    // Nothing was decrypted on disk.
    let on_disk = std::fs::read_to_string(root.path().join("secret.yaml")).unwrap();
    assert!(!on_disk.contains("hunter2"));
}

#[test]
fn decrypted_values_are_substituted_after_decryption() {
    let key = AgeKey::new();
    let root = tempfile::tempdir().unwrap();
    let plain = SECRET.replace("hunter2", "pw-${cluster}");
    write(
        root.path(),
        "secret.yaml",
        &sops_encrypt(&key, "secret.yaml", plain.as_bytes(), &[]),
    );
    let mut spec = spec();
    spec.post_build = Some(PostBuild {
        substitute: BTreeMap::from([("cluster".to_string(), "prod".to_string())]),
        ..Default::default()
    });
    let objects = build_decrypted(root.path(), &key.keys(), &spec).unwrap();
    assert_eq!(
        find(&objects, "Secret", "db")["stringData"]["password"],
        "pw-prod"
    );
}

#[test]
fn unsupported_and_invalid_key_entries_are_refused_by_name() {
    for (entry, kind) in [
        ("sops.aws-kms", "AWS KMS credentials"),
        ("sops.vault-token", "HashiCorp Vault transit token"),
        ("sops.azure-kv", "Azure Key Vault credentials"),
        ("sops.gcp-kms", "GCP KMS credentials"),
    ] {
        let data = BTreeMap::from([(entry.to_string(), b"x".to_vec())]);
        let err = Keys::from_secret("ns/keys", &data).unwrap_err();
        assert!(err.is_terminal());
        let message = err.to_string();
        assert!(
            message.contains(entry) && message.contains(kind),
            "{message}"
        );
    }
    let bad = BTreeMap::from([("a.agekey".to_string(), b"AGE-SECRET-KEY-1NOPE\n".to_vec())]);
    let err = Keys::from_secret("ns/keys", &bad).unwrap_err();
    assert!(matches!(err, DecryptError::Import { .. }), "{err}");
    assert!(!err.is_terminal());
    assert!(!err.to_string().contains("NOPE"), "{err}");
    let bad_pgp = BTreeMap::from([("key.asc".to_string(), b"not a key".to_vec())]);
    let err = Keys::from_secret("ns/keys", &bad_pgp).unwrap_err();
    assert!(err.to_string().contains("'key.asc'"), "{err}");
    assert!(!err.is_terminal());
    // Entries Flux ignores are ignored.
    let other = BTreeMap::from([("README".to_string(), b"notes".to_vec())]);
    assert!(Keys::from_secret("ns/keys", &other).is_ok());
}

#[test]
fn an_encrypted_secret_data_entry_is_decrypted_after_the_build() {
    // A generator entry from outside the files the build follows arrives as an encrypted file in
    // a Secret's data: it is decrypted by content, as kustomize-controller does.
    let key = AgeKey::new();
    let encrypted = sops_encrypt(&key, "app.env", b"A=1\n", &[]);
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut objects = vec![serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
        "data": {"app.env": b64.encode(&encrypted), "plain": b64.encode("x")}
    })];
    decrypt::decrypt_objects(&mut objects, &key.keys()).unwrap();
    assert_eq!(secret_data(&objects[0], "app.env"), b"A=1\n");
    assert_eq!(secret_data(&objects[0], "plain"), b"x");
}

/// A throwaway GnuPG home with one key (ed25519 + cv25519, no passphrase); its agent is stopped
/// on drop so no process is left behind.
struct GnuPg {
    home: tempfile::TempDir,
    fingerprint: String,
}

impl GnuPg {
    fn new() -> Self {
        let home = tempfile::tempdir().unwrap();
        let gpg = |args: &[&str]| {
            let out = Command::new("gpg")
                .env("GNUPGHOME", home.path())
                .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
                .args(args)
                .output()
                .expect("gpg (Debian gnupg, installed by `cargo xtask prerequisites`)");
            assert!(
                out.status.success(),
                "gpg {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        gpg(&[
            "--quick-gen-key",
            "Gantry Test <test@gantry.invalid>",
            "future-default",
            "default",
            "never",
        ]);
        let listing = gpg(&["--with-colons", "--list-secret-keys"]);
        let fingerprint = listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.trim_matches(':').split(':').next_back())
            .unwrap()
            .to_string();
        Self { home, fingerprint }
    }

    fn export_secret(&self) -> Vec<u8> {
        let out = Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(["--armor", "--export-secret-keys", &self.fingerprint])
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    }

    fn encrypt(&self, name: &str, plain: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(name);
        std::fs::write(&file, plain).unwrap();
        let out = Command::new(sops_bin())
            .current_dir(dir.path())
            .env("HOME", dir.path())
            .env("GNUPGHOME", self.home.path())
            .args(["--encrypt", "--pgp", &self.fingerprint])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sops --encrypt --pgp: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

impl Drop for GnuPg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "all"])
            .status();
    }
}

#[test]
fn openpgp_keys_from_asc_entries_decrypt() {
    let gnupg = GnuPg::new();
    let root = tempfile::tempdir().unwrap();
    let encrypted = gnupg.encrypt("secret.yaml", SECRET.as_bytes());
    assert!(String::from_utf8_lossy(&encrypted).contains(&gnupg.fingerprint));
    write(root.path(), "secret.yaml", &encrypted);
    let data = BTreeMap::from([("pgp.asc".to_string(), gnupg.export_secret())]);
    let keys = Keys::from_secret("ns/sops-gpg", &data).unwrap();
    let objects = build_decrypted(root.path(), &keys, &spec()).unwrap();
    assert_eq!(
        find(&objects, "Secret", "db")["stringData"]["password"],
        "hunter2"
    );

    // An age key alone cannot open it: the message names the OpenPGP fingerprint.
    let root = tempfile::tempdir().unwrap();
    write(root.path(), "secret.yaml", &encrypted);
    let err = build_decrypted(root.path(), &AgeKey::new().keys(), &spec()).unwrap_err();
    assert!(
        err.contains(&format!("OpenPGP {}", gnupg.fingerprint)),
        "{err}"
    );
}
