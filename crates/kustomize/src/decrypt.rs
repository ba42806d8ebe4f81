//! SOPS decryption for `spec.decryption` (`provider: sops`), as kustomize-controller's
//! `internal/decryptor` does it:
//!
//! - **Keys** ([`Keys::from_secret`]) come from the `spec.decryption.secretRef` Secret: every
//!   entry whose name ends in `.agekey` holds age X25519 identities (`AGE-SECRET-KEY-1…` lines,
//!   `#` comments allowed), every entry ending in `.asc` armored OpenPGP private keys without a
//!   passphrase (rpgp). Flux's other entries (`sops.vault-token`, `sops.aws-kms`,
//!   `sops.azure-kv`, `sops.gcp-kms`) are refused by name: Gantry has no Vault or cloud KMS
//!   client.
//! - **Files before the build** ([`decrypt_sources`]): in the build's private copy of the
//!   artifact, the manifests the build reads (every `*.yaml`/`*.yml` of a plain directory; a
//!   kustomization's `resources`, followed recursively with its `components`), its
//!   `secretGenerator` `files` and `envs` (dotenv, or by extension) and its `patches` paths are
//!   decrypted in place when they carry SOPS metadata. Decrypting whole files (not objects after
//!   kustomize) lets the MAC be verified exactly as `sops --decrypt` does: a changed value fails
//!   with the file's name. Files outside the artifact, irregular files and files over 5 MiB are
//!   refused, as Flux does.
//! - **Objects after the build** ([`decrypt_objects`]): an object that still carries SOPS
//!   metadata, and a Secret data entry that is a whole SOPS file (a generator entry from outside
//!   the files above), are decrypted too (format by content, output by the key's extension;
//!   `.dockerconfigjson` is JSON).
//!
//! Decrypted data lives only in the private build directory and in memory; nothing here logs a
//! value or puts one in an error.

use std::collections::{BTreeMap, HashSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use base64::Engine as _;
use gantry_core::kustomize::sops::{self, Document, Format, Node, SopsError, WrappedKey};
use serde_json::Value;

/// Largest file decrypted (kustomize-controller's limit).
pub const MAX_FILE_SIZE: u64 = 5 << 20;

/// The Secret entries Flux reads that Gantry refuses, with what they are.
const UNSUPPORTED_ENTRIES: [(&str, &str); 4] = [
    ("sops.vault-token", "HashiCorp Vault transit token"),
    ("sops.aws-kms", "AWS KMS credentials"),
    ("sops.azure-kv", "Azure Key Vault credentials"),
    ("sops.gcp-kms", "GCP KMS credentials"),
];

/// What the message says which keys the decryption Secret may hold.
const SUPPORTED: &str = "use age keys ('*.agekey' entries) or OpenPGP keys ('*.asc' entries)";

/// Why decryption failed. Never contains a decrypted value.
#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    /// The decryption Secret does not exist.
    #[error("sops decryption Secret '{secret}' not found")]
    SecretNotFound {
        /// `namespace/name`.
        secret: String,
    },
    /// An entry of the decryption Secret is not a valid key.
    #[error("failed to import '{entry}' data from sops decryption Secret '{secret}': {message}")]
    Import {
        /// The Secret's key.
        entry: String,
        /// `namespace/name`.
        secret: String,
        /// What is wrong (never the key).
        message: String,
    },
    /// A key type Gantry does not implement.
    #[error(
        "sops decryption Secret '{secret}' has '{entry}' ({kind}), which Gantry does not \
         support: {SUPPORTED}"
    )]
    UnsupportedKey {
        /// The Secret's key.
        entry: String,
        /// `namespace/name`.
        secret: String,
        /// What it is.
        kind: &'static str,
    },
    /// A file or object could not be decrypted.
    #[error("failed to decrypt {what}: {source}")]
    Sops {
        /// The file (relative to the artifact) or the object.
        what: String,
        /// Why.
        #[source]
        source: SopsError,
    },
    /// None of the keys unwraps the file's data key.
    #[error("failed to decrypt {what}: cannot get sops data key: {detail}")]
    NoKey {
        /// The file or object.
        what: String,
        /// Which keys the file is encrypted for and what was tried.
        detail: String,
    },
    /// A file the build needs could not be read or written.
    #[error("{what}: {message}")]
    File {
        /// The file, relative to the artifact.
        what: String,
        /// Why.
        message: String,
    },
}

impl DecryptError {
    /// Only a change of the Secret or the repository fixes it (no use retrying).
    pub fn is_terminal(&self) -> bool {
        matches!(self, DecryptError::UnsupportedKey { .. })
    }
}

/// The private keys of a decryption Secret.
#[derive(Default)]
pub struct Keys {
    age: Vec<age::x25519::Identity>,
    pgp: Vec<pgp::composed::SignedSecretKey>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        write!(
            f,
            "Keys {{ age: {} identities, pgp: {} keys }}",
            self.age.len(),
            self.pgp.len()
        )
    }
}

impl Keys {
    /// Reads the keys of a decryption Secret's `data` as kustomize-controller does (see the
    /// module docs); `secret` (`namespace/name`) is for messages.
    pub fn from_secret(
        secret: &str,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Keys, DecryptError> {
        let mut keys = Keys::default();
        for (entry, value) in data {
            if let Some((_, kind)) = UNSUPPORTED_ENTRIES.iter().find(|(n, _)| n == entry) {
                return Err(DecryptError::UnsupportedKey {
                    entry: entry.clone(),
                    secret: secret.to_owned(),
                    kind,
                });
            }
            let import = |message: String| DecryptError::Import {
                entry: entry.clone(),
                secret: secret.to_owned(),
                message,
            };
            if entry.ends_with(".asc") {
                keys.pgp.extend(read_pgp_keys(value).map_err(import)?);
                continue;
            }
            if !entry.ends_with(".agekey") {
                continue;
            }
            let text = std::str::from_utf8(value).map_err(|_| import("not UTF-8".into()))?;
            let before = keys.age.len();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let identity = age::x25519::Identity::from_str(line)
                    .map_err(|_| import(format!("line {}: not an age X25519 identity", n + 1)))?;
                keys.age.push(identity);
            }
            if keys.age.len() == before {
                return Err(import("no age identity found".into()));
            }
        }
        Ok(keys)
    }

    /// Keys from age identities (for `gantry` commands and tests).
    pub fn from_age(identities: Vec<age::x25519::Identity>) -> Keys {
        Keys {
            age: identities,
            pgp: Vec::new(),
        }
    }

    /// The file's data key, unwrapped with one of these keys.
    fn data_key(&self, document: &Document, what: &str) -> Result<Vec<u8>, DecryptError> {
        let mut wrapped_for = Vec::new();
        let mut failures = Vec::new();
        for key in &document.metadata.keys {
            match key {
                WrappedKey::Age { recipient, enc } => {
                    wrapped_for.push(format!("age {recipient}"));
                    match self.unwrap_age(enc) {
                        Ok(key) => return Ok(key),
                        Err(why) => failures.push(why),
                    }
                }
                WrappedKey::Pgp { fingerprint, enc } => {
                    wrapped_for.push(format!("OpenPGP {fingerprint}"));
                    match self.unwrap_pgp(enc) {
                        Ok(key) => return Ok(key),
                        Err(why) => failures.push(why),
                    }
                }
                WrappedKey::Other(field) => {
                    wrapped_for.push(format!("{field} (not supported by Gantry)"));
                }
            }
        }
        let mut detail = if wrapped_for.is_empty() {
            "the file names no key".to_string()
        } else {
            format!("encrypted for {}", wrapped_for.join(", "))
        };
        if self.age.is_empty() && self.pgp.is_empty() {
            detail.push_str("; the decryption Secret has no age or OpenPGP key");
        } else if !failures.is_empty() {
            failures.dedup();
            detail.push_str(&format!("; {}", failures.join("; ")));
        }
        Err(DecryptError::NoKey {
            what: what.to_owned(),
            detail,
        })
    }

    fn unwrap_age(&self, enc: &str) -> Result<Vec<u8>, String> {
        if self.age.is_empty() {
            return Err("no age identity".into());
        }
        let reader = age::armor::ArmoredReader::new(enc.as_bytes());
        let decryptor =
            age::Decryptor::new(reader).map_err(|e| format!("reading the age stanza: {e}"))?;
        let identities = self.age.iter().map(|i| i as &dyn age::Identity);
        let mut stream = decryptor
            .decrypt(identities)
            .map_err(|_| "no age identity of the decryption Secret matches".to_string())?;
        let mut key = Vec::new();
        stream
            .read_to_end(&mut key)
            .map_err(|e| format!("reading the age payload: {e}"))?;
        Ok(key)
    }

    fn unwrap_pgp(&self, enc: &str) -> Result<Vec<u8>, String> {
        if self.pgp.is_empty() {
            return Err("no OpenPGP key".into());
        }
        let (message, _) = pgp::composed::Message::from_armor(enc.as_bytes())
            .map_err(|e| format!("reading the OpenPGP message: {e}"))?;
        let password = pgp::types::Password::empty();
        let mut message = message
            .decrypt_with_keys(vec![&password; self.pgp.len()], self.pgp.iter().collect())
            .map_err(|_| "no OpenPGP key of the decryption Secret matches".to_string())?;
        if message.is_compressed() {
            message = message
                .decompress()
                .map_err(|e| format!("decompressing the OpenPGP message: {e}"))?;
        }
        message
            .as_data_vec()
            .map_err(|e| format!("reading the OpenPGP message: {e}"))
    }

    /// Decrypts a whole SOPS file read as `input` and writes it as `output`, verifying its MAC.
    pub fn decrypt_file(
        &self,
        data: &[u8],
        input: Format,
        output: Format,
        what: &str,
    ) -> Result<Vec<u8>, DecryptError> {
        let sops_err = |source| DecryptError::Sops {
            what: what.to_owned(),
            source,
        };
        let mut document = Document::parse(data, input).map_err(sops_err)?;
        let key = self.data_key(&document, what)?;
        document.decrypt(&key).map_err(sops_err)?;
        document.emit(output).map_err(sops_err)
    }

    /// Decrypts parsed YAML documents: one SOPS tree for the whole stream when only the first
    /// carries metadata (what `sops` writes), else each document with metadata on its own
    /// (separately encrypted Secrets concatenated in one file, which Flux decrypts per object).
    fn decrypt_documents(&self, docs: Vec<Node>, what: &str) -> Result<Vec<Node>, DecryptError> {
        let sops_err = |source| DecryptError::Sops {
            what: what.to_owned(),
            source,
        };
        let with_metadata = docs.iter().filter(|d| sops::has_metadata(d)).count();
        let whole = |docs: Vec<Node>| -> Result<Vec<Node>, DecryptError> {
            let mut document = Document::from_branches(docs, Format::Yaml).map_err(sops_err)?;
            let key = self.data_key(&document, what)?;
            document.decrypt(&key).map_err(sops_err)?;
            Ok(document.branches)
        };
        if with_metadata <= 1 && docs.first().is_some_and(sops::has_metadata) {
            return whole(docs);
        }
        let mut out = Vec::with_capacity(docs.len());
        for (i, doc) in docs.into_iter().enumerate() {
            if sops::has_metadata(&doc) {
                let what = format!("{what} (document {})", i + 1);
                let mut document =
                    Document::from_branches(vec![doc], Format::Yaml).map_err(|source| {
                        DecryptError::Sops {
                            what: what.clone(),
                            source,
                        }
                    })?;
                let key = self.data_key(&document, &what)?;
                document
                    .decrypt(&key)
                    .map_err(|source| DecryptError::Sops { what, source })?;
                out.extend(document.branches);
            } else {
                out.push(doc);
            }
        }
        Ok(out)
    }
}

/// The OpenPGP private keys of an armored `.asc` entry (one or more keys).
fn read_pgp_keys(armored: &[u8]) -> Result<Vec<pgp::composed::SignedSecretKey>, String> {
    use pgp::composed::Deserializable as _;
    let (keys, _) = pgp::composed::SignedSecretKey::from_armor_many(armored)
        .map_err(|e| format!("not an armored OpenPGP private key: {e}"))?;
    let keys = keys
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not an armored OpenPGP private key: {e}"))?;
    if keys.is_empty() {
        return Err("no OpenPGP private key found".into());
    }
    Ok(keys)
}

/// Decrypts, in place, the SOPS-encrypted files the build of `dir` reads (see the module docs).
/// `root` is the artifact's private copy, which every file must stay inside.
pub fn decrypt_sources(root: &Path, dir: &Path, keys: &Keys) -> Result<(), DecryptError> {
    let root = root.canonicalize().map_err(|e| DecryptError::File {
        what: root.display().to_string(),
        message: e.to_string(),
    })?;
    let mut walk = Walk {
        root: &root,
        keys,
        done: HashSet::new(),
        visited: HashSet::new(),
    };
    walk.directory(dir)
}

struct Walk<'a> {
    root: &'a Path,
    keys: &'a Keys,
    /// Files already decrypted.
    done: HashSet<PathBuf>,
    /// Kustomization directories already visited.
    visited: HashSet<PathBuf>,
}

impl Walk<'_> {
    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// `path` inside the root, or `None` when it leaves it or does not exist.
    fn confine(&self, path: &Path) -> Option<PathBuf> {
        let real = path.canonicalize().ok()?;
        real.starts_with(self.root).then_some(real)
    }

    fn directory(&mut self, dir: &Path) -> Result<(), DecryptError> {
        let Some(dir) = self.confine(dir) else {
            return Ok(());
        };
        if !dir.is_dir() || !self.visited.insert(dir.clone()) {
            return Ok(());
        }
        match crate::build::kustomization_file(&dir) {
            Some(file) => self.kustomization(&dir, &file),
            None => self.plain(&dir),
        }
    }

    /// A directory without a kustomization file: its YAML files, recursively (Flux generates a
    /// kustomization listing them).
    fn plain(&mut self, dir: &Path) -> Result<(), DecryptError> {
        let read_err = |e: std::io::Error| DecryptError::File {
            what: self.relative(dir),
            message: e.to_string(),
        };
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(read_err)?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                self.directory(&path)?;
            } else if is_manifest(&path) {
                self.file(&path, None)?;
            }
        }
        Ok(())
    }

    fn kustomization(&mut self, dir: &Path, file: &Path) -> Result<(), DecryptError> {
        let text = std::fs::read_to_string(file).map_err(|e| DecryptError::File {
            what: self.relative(file),
            message: e.to_string(),
        })?;
        let kus: Value = serde_saphyr::from_str(&text).unwrap_or(Value::Null);
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        for generator in kus
            .get("secretGenerator")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for source in strings(generator.get("files")) {
                let (key, path) = source.split_once('=').unwrap_or((&source, &source));
                self.file(&dir.join(path), Some(Format::for_path(key)))?;
            }
            let mut envs = strings(generator.get("envs"));
            envs.extend(
                generator
                    .get("env")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            );
            for env in envs {
                let format = match Format::for_path(&env) {
                    Format::Binary => Format::Dotenv,
                    other => other,
                };
                self.file(&dir.join(&env), Some(format))?;
            }
        }
        for patch in kus
            .get("patches")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(path) = patch.get("path").and_then(Value::as_str)
                && !path.contains("://")
            {
                self.file(&dir.join(path), None)?;
            }
        }
        let mut children = strings(kus.get("resources"));
        children.extend(strings(kus.get("components")));
        for child in children {
            if child.contains("://") {
                continue;
            }
            let path = dir.join(&child);
            if path.is_dir() {
                self.directory(&path)?;
            } else if is_manifest(&path) {
                self.file(&path, None)?;
            }
        }
        Ok(())
    }

    /// Decrypts one file in place when it carries SOPS metadata. `format` is the generator's
    /// (input and output alike); `None` means a manifest (YAML or JSON by extension).
    fn file(&mut self, path: &Path, format: Option<Format>) -> Result<(), DecryptError> {
        let what = self.relative(path);
        let file_err = |message: String| DecryptError::File {
            what: what.clone(),
            message,
        };
        if std::fs::symlink_metadata(path).is_err() {
            // A missing file is kustomize's to report.
            return Ok(());
        }
        let Some(real) = self.confine(path) else {
            return Err(file_err("refers to a file outside the artifact".into()));
        };
        if self.done.contains(&real) {
            return Ok(());
        }
        // A symlink may point at a regular file inside the artifact (confined above).
        if !real.is_file() {
            return Err(file_err(
                "cannot decrypt irregular file as it has file mode type bits set".into(),
            ));
        }
        let size = std::fs::metadata(&real).map(|m| m.len()).unwrap_or(0);
        if size > MAX_FILE_SIZE {
            return Err(file_err(format!(
                "cannot decrypt file with size ({size} bytes) exceeding limit ({MAX_FILE_SIZE})"
            )));
        }
        let data = std::fs::read(&real).map_err(|e| file_err(e.to_string()))?;
        let Some(detected) = Format::detect(&data) else {
            return Ok(());
        };
        let plain = match format {
            Some(format) => {
                // Flux reads a generator file in the format of its key and writes it back so.
                let input = if format == Format::Binary {
                    detected
                } else {
                    format
                };
                let mut out = self.keys.decrypt_file(&data, input, format, &what)?;
                if format == Format::Binary && input != Format::Binary {
                    // A binary file is a JSON envelope whose `data` is the file.
                    out = self
                        .keys
                        .decrypt_file(&data, Format::Binary, Format::Binary, &what)?;
                }
                out
            }
            None if path.extension().is_some_and(|e| e == "json") => {
                self.keys
                    .decrypt_file(&data, Format::Json, Format::Json, &what)?
            }
            None => {
                let text = std::str::from_utf8(&data).map_err(|e| file_err(e.to_string()))?;
                let docs =
                    sops::parse_yaml_documents(text).map_err(|source| DecryptError::Sops {
                        what: what.clone(),
                        source,
                    })?;
                if !docs.iter().any(sops::has_metadata) {
                    return Ok(());
                }
                let docs = self.keys.decrypt_documents(docs, &what)?;
                let mut out = String::new();
                for doc in &docs {
                    out.push_str("---\n");
                    out.push_str(
                        &serde_saphyr::to_string(doc).map_err(|e| file_err(e.to_string()))?,
                    );
                }
                out.into_bytes()
            }
        };
        write_private(&real, &plain).map_err(|e| file_err(e.to_string()))?;
        self.done.insert(real);
        Ok(())
    }
}

fn is_manifest(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
}

/// Replaces a file of the private build copy, readable by this user only.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, data)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Decrypts built objects that still carry SOPS metadata, and Secret data entries that are whole
/// SOPS files (see the module docs). Objects annotated
/// `kustomize.toolkit.fluxcd.io/decrypt: disabled` are left alone, as in Flux.
pub fn decrypt_objects(objects: &mut [Value], keys: &Keys) -> Result<(), DecryptError> {
    for obj in objects.iter_mut() {
        let disabled = obj
            .pointer("/metadata/annotations/kustomize.toolkit.fluxcd.io~1decrypt")
            .and_then(Value::as_str)
            .is_some_and(|v| v.eq_ignore_ascii_case("disabled"));
        if disabled {
            continue;
        }
        let id = object_id(obj);
        let has_sops = obj
            .pointer("/sops/mac")
            .is_some_and(|m| !m.is_null() && m != "");
        if has_sops {
            let data = serde_json::to_vec(obj).map_err(|e| DecryptError::File {
                what: id.clone(),
                message: e.to_string(),
            })?;
            let plain = keys.decrypt_file(&data, Format::Json, Format::Json, &id)?;
            *obj = serde_json::from_slice(&plain).map_err(|e| DecryptError::File {
                what: id.clone(),
                message: e.to_string(),
            })?;
            continue;
        }
        if obj.get("kind").and_then(Value::as_str) != Some("Secret") {
            continue;
        }
        let Some(data) = obj.get_mut("data").and_then(Value::as_object_mut) else {
            continue;
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        for (key, value) in data.iter_mut() {
            let Some(bytes) = value.as_str().and_then(|v| b64.decode(v).ok()) else {
                continue;
            };
            let Some(input) = Format::detect(&bytes) else {
                continue;
            };
            let what = format!("{id} field '{key}'");
            let plain = keys.decrypt_file(&bytes, input, Format::for_path(key), &what)?;
            *value = Value::String(b64.encode(plain));
        }
    }
    Ok(())
}

fn object_id(obj: &Value) -> String {
    let get = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or("");
    format!(
        "'{}/{}' {}",
        get("/metadata/namespace"),
        get("/metadata/name"),
        get("/kind")
    )
}
