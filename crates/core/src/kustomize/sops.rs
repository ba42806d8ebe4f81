//! SOPS files as the `sops` CLI writes them: parsing (YAML, JSON, dotenv, binary), the metadata
//! under `sops`, which values are encrypted (`encrypted_regex`, `unencrypted_suffix`, …),
//! decrypting `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]` values with the data key, and the MAC.
//!
//! The MAC is SHA-512 over every leaf value in file order (map keys as written, sequence items in
//! order, nulls and comments skipped), after decryption, each value as sops' `ToBytes` writes it
//! (`True`/`False` for booleans, Go's shortest decimal for floats); with `mac_only_encrypted` only
//! the encrypted values count, after a fixed prefix. It is stored encrypted with the data key,
//! the file's `lastmodified` as additional data. Each value's additional data is its path of map
//! keys joined by `:` plus a trailing `:` (sequence indices are not part of it).
//!
//! Getting the data key (age, OpenPGP) needs key material and is the caller's job: [`Document`]
//! names the wrapped keys. Nothing here logs or formats a decrypted value into an error.

use std::fmt;

use aes_gcm::AesGcm;
use aes_gcm::aead::consts::U32;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes256;
use base64::Engine as _;
use regex::Regex;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use sha2::{Digest, Sha512};

/// sops' AES-256-GCM with the 32-byte nonces it writes.
type Cipher = AesGcm<Aes256, U32>;

/// What `mac_only_encrypted` hashes before the values, so such a MAC never equals a full one.
const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
    0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

/// The suffix sops assumes when a file names no encryption rule.
pub const DEFAULT_UNENCRYPTED_SUFFIX: &str = "_unencrypted";

/// Why a SOPS file could not be read or decrypted. Messages never contain a secret value.
#[derive(Debug, thiserror::Error)]
pub enum SopsError {
    /// The file does not parse in its format.
    #[error("failed to load encrypted {format} data: {message}")]
    Parse {
        /// The format tried.
        format: Format,
        /// What the parser said.
        message: String,
    },
    /// The `sops` metadata is missing or malformed.
    #[error("invalid sops metadata: {0}")]
    Metadata(String),
    /// A feature of the file Gantry does not implement.
    #[error("unsupported sops file: {0}")]
    Unsupported(String),
    /// A value that should be encrypted could not be decrypted.
    #[error("error decrypting sops tree: value at '{path}': {reason}")]
    Value {
        /// The value's path (`data:password`).
        path: String,
        /// Why (wrong key, not sops' format, bad type); never the value.
        reason: String,
    },
    /// The MAC does not match the decrypted content: the file was changed after encryption.
    #[error(
        "failed to verify sops data integrity: the MAC does not match the content \
         (the file was modified after it was encrypted)"
    )]
    MacMismatch,
    /// The decrypted tree cannot be written in the requested format.
    #[error("failed to emit decrypted {format} data: {message}")]
    Emit {
        /// The output format.
        format: Format,
        /// Why.
        message: String,
    },
}

/// The formats sops reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// YAML, one branch per document.
    Yaml,
    /// JSON.
    Json,
    /// `KEY=VALUE` lines.
    Dotenv,
    /// Any other file: a JSON envelope `{"data": …, "sops": …}`.
    Binary,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Yaml => "YAML",
            Format::Json => "JSON",
            Format::Dotenv => "dotenv",
            Format::Binary => "binary",
        })
    }
}

impl Format {
    /// The format sops assumes for a file name, with Flux's exception: a name ending in
    /// `.dockerconfigjson` is JSON.
    pub fn for_path(path: &str) -> Format {
        if path.ends_with(".dockerconfigjson") {
            return Format::Json;
        }
        let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
        match ext {
            "yaml" | "yml" => Format::Yaml,
            "json" => Format::Json,
            "env" => Format::Dotenv,
            _ => Format::Binary,
        }
    }

    /// The format of SOPS-encrypted data by the marker of its MAC (as kustomize-controller
    /// detects encrypted Secret data entries; a quoted YAML MAC, as other YAML writers leave it,
    /// counts too), or `None` when it carries no SOPS MAC.
    pub fn detect(data: &[u8]) -> Option<Format> {
        let has = |marker: &[u8]| data.windows(marker.len()).any(|w| w == marker);
        if has(b"sops_mac=ENC[") {
            Some(Format::Dotenv)
        } else if has(b"\"mac\": \"ENC[") {
            Some(Format::Json)
        } else if has(b"mac: ENC[") || has(b"mac: \"ENC[") || has(b"mac: 'ENC[") {
            Some(Format::Yaml)
        } else {
            None
        }
    }
}

/// A value of a SOPS tree; maps keep the file's key order, which the MAC depends on.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `null` (never encrypted, never hashed).
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string (encrypted values are strings).
    Str(String),
    /// A decrypted value that is not UTF-8 (a binary file's content; Go strings hold any bytes).
    Bytes(Vec<u8>),
    /// A sequence.
    Seq(Vec<Node>),
    /// A map in file order.
    Map(Vec<(String, Node)>),
}

impl Node {
    /// The value under `key` of a map.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes sops hashes for a leaf (`ToBytes`), `None` for what it skips.
    fn mac_bytes(&self) -> Option<Vec<u8>> {
        match self {
            Node::Str(s) => Some(s.as_bytes().to_vec()),
            Node::Bytes(b) => Some(b.clone()),
            Node::Int(i) => Some(i.to_string().into_bytes()),
            Node::Float(f) => Some(go_float(*f).into_bytes()),
            Node::Bool(b) => Some(if *b {
                b"True".to_vec()
            } else {
                b"False".to_vec()
            }),
            Node::Null | Node::Seq(_) | Node::Map(_) => None,
        }
    }

    /// The value as a scalar string (dotenv output); `None` for maps and sequences.
    fn scalar_text(&self) -> Option<String> {
        match self {
            Node::Null => Some(String::new()),
            Node::Str(s) => Some(s.clone()),
            Node::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Node::Int(i) => Some(i.to_string()),
            Node::Float(f) => Some(go_float(*f)),
            Node::Bool(b) => Some(b.to_string()),
            Node::Seq(_) | Node::Map(_) => None,
        }
    }
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`: the shortest decimal that round-trips, never an
/// exponent. Rust's `Display` for `f64` is exactly that.
fn go_float(f: f64) -> String {
    format!("{f}")
}

impl<'de> serde::Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a YAML or JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
                Ok(i64::try_from(v).map_or(Node::Float(v as f64), Node::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Node, E> {
                Ok(Node::Str(v))
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                serde::Deserialize::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut items: Vec<(String, Node)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if items.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format!("duplicate key {key}")));
                    }
                    items.push((key, map.next_value()?));
                }
                Ok(Node::Map(items))
            }
        }
        deserializer.deserialize_any(NodeVisitor)
    }
}

impl serde::Serialize for Node {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => serializer.serialize_unit(),
            Node::Bool(b) => serializer.serialize_bool(*b),
            Node::Int(i) => serializer.serialize_i64(*i),
            Node::Float(f) => serializer.serialize_f64(*f),
            Node::Str(s) => serializer.serialize_str(s),
            Node::Bytes(b) => serializer.serialize_str(&String::from_utf8_lossy(b)),
            Node::Seq(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Node::Map(items) => {
                let mut map = serializer.serialize_map(Some(items.len()))?;
                for (k, v) in items {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Which values of a file are encrypted: the one rule its metadata names.
#[derive(Debug, Clone)]
enum Rule {
    UnencryptedSuffix(String),
    EncryptedSuffix(String),
    UnencryptedRegex(Regex),
    EncryptedRegex(Regex),
}

impl Rule {
    /// sops' `shouldBeEncrypted` for a value at `path` (map keys only).
    fn encrypts(&self, path: &[&str]) -> bool {
        match self {
            Rule::UnencryptedSuffix(s) => !path.iter().any(|k| k.ends_with(s.as_str())),
            Rule::EncryptedSuffix(s) => path.iter().any(|k| k.ends_with(s.as_str())),
            Rule::UnencryptedRegex(r) => !path.iter().any(|k| r.is_match(k)),
            Rule::EncryptedRegex(r) => path.iter().any(|k| r.is_match(k)),
        }
    }
}

/// One wrapped copy of the data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WrappedKey {
    /// age: the recipient and the armored age file holding the data key.
    Age {
        /// `age1…`.
        recipient: String,
        /// `-----BEGIN AGE ENCRYPTED FILE-----…`.
        enc: String,
    },
    /// OpenPGP: the key fingerprint and the armored message holding the data key.
    Pgp {
        /// Fingerprint as sops writes it.
        fingerprint: String,
        /// `-----BEGIN PGP MESSAGE-----…`.
        enc: String,
    },
    /// A key Gantry cannot use (cloud KMS, Vault transit): the metadata field naming it.
    Other(&'static str),
}

/// The `sops` metadata of a file.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// The wrapped data keys (one key group).
    pub keys: Vec<WrappedKey>,
    /// `lastmodified` as written.
    pub last_modified: String,
    /// The encrypted MAC.
    pub mac: String,
    /// `mac_only_encrypted`.
    pub mac_only_encrypted: bool,
    /// `version`.
    pub version: String,
    rule: Rule,
}

/// A parsed SOPS file: its branches (one per YAML document) without `sops`, and its metadata.
#[derive(Debug, Clone)]
pub struct Document {
    /// The branches, still encrypted until [`Document::decrypt`].
    pub branches: Vec<Node>,
    /// The metadata.
    pub metadata: Metadata,
    format: Format,
}

/// The metadata fields that name keys Gantry cannot use, as sops writes them.
const OTHER_KEY_FIELDS: [&str; 5] = ["kms", "gcp_kms", "azure_kv", "hc_vault", "hckms"];

impl Document {
    /// Parses an encrypted file in `format`.
    pub fn parse(data: &[u8], format: Format) -> Result<Document, SopsError> {
        let parse_err = |message: String| SopsError::Parse { format, message };
        let text = std::str::from_utf8(data).map_err(|e| parse_err(e.to_string()))?;
        match format {
            Format::Yaml => Document::from_branches(parse_yaml_documents(text)?, format),
            Format::Json | Format::Binary => {
                let doc: Node = serde_json::from_str(text).map_err(|e| parse_err(e.to_string()))?;
                Document::from_branches(vec![doc], format)
            }
            Format::Dotenv => {
                let (branch, meta) = parse_dotenv(text).map_err(parse_err)?;
                Document::with_metadata(vec![branch], Some(meta), format)
            }
        }
    }

    /// A document from parsed branches whose first holds the `sops` metadata (YAML, JSON,
    /// binary); `sops` is removed from every branch, as sops does.
    pub fn from_branches(branches: Vec<Node>, format: Format) -> Result<Document, SopsError> {
        let meta = branches.first().and_then(|d| d.get("sops")).cloned();
        Document::with_metadata(branches, meta, format)
    }

    fn with_metadata(
        mut branches: Vec<Node>,
        metadata_node: Option<Node>,
        format: Format,
    ) -> Result<Document, SopsError> {
        let metadata_node = metadata_node
            .filter(|m| *m != Node::Map(Vec::new()))
            .ok_or_else(|| SopsError::Metadata("no sops metadata found".into()))?;
        for branch in &mut branches {
            match branch {
                Node::Map(items) => items.retain(|(k, _)| k != "sops"),
                _ => {
                    return Err(SopsError::Parse {
                        format,
                        message: "a document is not a mapping".into(),
                    });
                }
            }
        }
        let metadata = Metadata::from_node(&metadata_node)?;
        Ok(Document {
            branches,
            metadata,
            format,
        })
    }

    /// Decrypts every value the metadata's rule selects with `data_key` and checks the MAC;
    /// on success the branches hold plain values.
    pub fn decrypt(&mut self, data_key: &[u8]) -> Result<(), SopsError> {
        if data_key.len() != 32 {
            return Err(SopsError::Metadata(format!(
                "data key has {} bytes, want 32",
                data_key.len()
            )));
        }
        let cipher = Cipher::new(GenericArray::from_slice(data_key));
        let mut hash = Sha512::new();
        if self.metadata.mac_only_encrypted {
            hash.update(MAC_ONLY_ENCRYPTED_INIT);
        }
        let mut walker = Walker {
            cipher: &cipher,
            rule: &self.metadata.rule,
            mac_only_encrypted: self.metadata.mac_only_encrypted,
            hash: &mut hash,
        };
        for branch in &mut self.branches {
            walker.walk(branch, &mut Vec::new())?;
        }
        let computed = hex::encode_upper(hash.finalize());
        let stored = decrypt_value(
            &cipher,
            &self.metadata.mac,
            &mac_additional_data(&self.metadata.last_modified),
        )
        .map_err(|_| SopsError::MacMismatch)?;
        match stored {
            Node::Str(s) if s == computed => Ok(()),
            _ => Err(SopsError::MacMismatch),
        }
    }

    /// The plain file in `format` (after [`Document::decrypt`]): YAML documents, JSON, dotenv
    /// lines, or a binary file's `data`.
    pub fn emit(&self, format: Format) -> Result<Vec<u8>, SopsError> {
        let emit_err = |message: String| SopsError::Emit { format, message };
        match format {
            Format::Yaml => {
                let mut out = String::new();
                for (i, branch) in self.branches.iter().enumerate() {
                    if i > 0 {
                        out.push_str("---\n");
                    }
                    out.push_str(
                        &serde_saphyr::to_string(branch).map_err(|e| emit_err(e.to_string()))?,
                    );
                }
                Ok(out.into_bytes())
            }
            Format::Json => {
                let branch = self.branches.first().unwrap_or(&Node::Null);
                serde_json::to_vec_pretty(branch).map_err(|e| emit_err(e.to_string()))
            }
            Format::Dotenv => {
                let mut out = String::new();
                if let Some(Node::Map(items)) = self.branches.first() {
                    for (k, v) in items {
                        let value = v
                            .scalar_text()
                            .ok_or_else(|| emit_err(format!("complex value for key {k}")))?;
                        out.push_str(&format!("{k}={}\n", value.replace('\n', "\\n")));
                    }
                }
                Ok(out.into_bytes())
            }
            Format::Binary => {
                let data = self.branches.first().and_then(|b| b.get("data"));
                match (data, self.format) {
                    (Some(Node::Str(s)), _) => Ok(s.clone().into_bytes()),
                    (Some(Node::Bytes(b)), _) => Ok(b.clone()),
                    _ => Err(emit_err(
                        "no string 'data' key (not a binary sops file)".into(),
                    )),
                }
            }
        }
    }
}

struct Walker<'a> {
    cipher: &'a Cipher,
    rule: &'a Rule,
    mac_only_encrypted: bool,
    hash: &'a mut Sha512,
}

impl Walker<'_> {
    fn walk(&mut self, node: &mut Node, path: &mut Vec<String>) -> Result<(), SopsError> {
        match node {
            Node::Map(items) => {
                for (key, value) in items.iter_mut() {
                    path.push(key.clone());
                    let result = self.walk(value, path);
                    path.pop();
                    result?;
                }
                Ok(())
            }
            Node::Seq(items) => {
                for item in items.iter_mut() {
                    self.walk(item, path)?;
                }
                Ok(())
            }
            Node::Null => Ok(()),
            leaf => {
                let keys: Vec<&str> = path.iter().map(String::as_str).collect();
                let encrypted = self.rule.encrypts(&keys);
                if encrypted {
                    let joined = format!("{}:", keys.join(":"));
                    let Node::Str(text) = &*leaf else {
                        return Err(SopsError::Value {
                            path: keys.join(":"),
                            reason: "expected an encrypted value (a string), found a plain \
                                     number or boolean"
                                .into(),
                        });
                    };
                    let plain = decrypt_value(self.cipher, text, &joined).map_err(|reason| {
                        SopsError::Value {
                            path: keys.join(":"),
                            reason,
                        }
                    })?;
                    *leaf = plain;
                }
                if (!self.mac_only_encrypted || encrypted)
                    && let Some(bytes) = leaf.mac_bytes()
                {
                    self.hash.update(&bytes);
                }
                Ok(())
            }
        }
    }
}

/// The MAC's additional data: `lastmodified` as Go's `time.Format(time.RFC3339)` writes it
/// again after parsing (no fractional seconds).
fn mac_additional_data(last_modified: &str) -> String {
    match last_modified.split_once('.') {
        Some((head, tail)) => {
            let zone = tail.trim_start_matches(|c: char| c.is_ascii_digit());
            format!("{head}{zone}")
        }
        None => last_modified.to_owned(),
    }
}

/// Decrypts one `ENC[AES256_GCM,…]` value. The error never contains the value.
fn decrypt_value(cipher: &Cipher, value: &str, additional_data: &str) -> Result<Node, String> {
    if value.is_empty() {
        return Ok(Node::Str(String::new()));
    }
    let parts = parse_enc(value).ok_or("not in sops' encrypted value format")?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let decode = |what: &str, s: &str| b64.decode(s).map_err(|e| format!("base64 of {what}: {e}"));
    let mut data = decode("data", parts.data)?;
    let iv = decode("iv", parts.iv)?;
    let tag = decode("tag", parts.tag)?;
    if iv.len() != 32 || tag.len() != 16 {
        return Err(format!(
            "iv of {} bytes or tag of {} bytes (want 32 and 16)",
            iv.len(),
            tag.len()
        ));
    }
    data.extend_from_slice(&tag);
    let plain = cipher
        .decrypt(
            GenericArray::from_slice(&iv),
            Payload {
                msg: &data,
                aad: additional_data.as_bytes(),
            },
        )
        .map_err(|_| "authentication failed (wrong data key or modified value)".to_string())?;
    let text = || String::from_utf8(plain.clone()).map_err(|_| "value is not UTF-8".to_string());
    match parts.kind {
        "str" | "bytes" => Ok(String::from_utf8(plain.clone())
            .map_or_else(|e| Node::Bytes(e.into_bytes()), Node::Str)),
        "time" | "comment" => Ok(Node::Str(text()?)),
        "int" => text()?
            .parse::<i64>()
            .map(Node::Int)
            .map_err(|_| "type int but not an integer".into()),
        "float" => text()?
            .parse::<f64>()
            .map(Node::Float)
            .map_err(|_| "type float but not a number".into()),
        "bool" => match text()?.as_str() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(Node::Bool(true)),
            "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(Node::Bool(false)),
            _ => Err("type bool but not a boolean".into()),
        },
        other => Err(format!("unknown datatype {other}")),
    }
}

struct EncParts<'a> {
    data: &'a str,
    iv: &'a str,
    tag: &'a str,
    kind: &'a str,
}

/// `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]`.
fn parse_enc(value: &str) -> Option<EncParts<'_>> {
    let inner = value.strip_prefix("ENC[AES256_GCM,")?.strip_suffix(']')?;
    let data = inner.strip_prefix("data:")?;
    let (data, rest) = data.split_once(",iv:")?;
    let (iv, rest) = rest.split_once(",tag:")?;
    let (tag, kind) = rest.split_once(",type:")?;
    Some(EncParts {
        data,
        iv,
        tag,
        kind,
    })
}

/// Whether `value` is a sops-encrypted value.
pub fn is_encrypted_value(value: &str) -> bool {
    parse_enc(value).is_some()
}

impl Metadata {
    fn from_node(node: &Node) -> Result<Metadata, SopsError> {
        let text = |key: &str| match node.get(key) {
            Some(Node::Str(s)) => s.clone(),
            Some(other) => other.scalar_text().unwrap_or_default(),
            None => String::new(),
        };
        let mut keys = Vec::new();
        let groups = match node.get("key_groups") {
            Some(Node::Seq(groups)) => groups.iter().collect::<Vec<_>>(),
            _ => vec![node],
        };
        if groups.len() > 1 {
            return Err(SopsError::Unsupported(format!(
                "{} key groups (Shamir secret sharing); use one key group",
                groups.len()
            )));
        }
        for group in groups {
            collect_keys(group, &mut keys);
        }
        let last_modified = text("lastmodified");
        let mac = text("mac");
        if mac.is_empty() || last_modified.is_empty() {
            return Err(SopsError::Metadata("missing mac or lastmodified".into()));
        }
        if !text("encrypted_comment_regex").is_empty()
            || !text("unencrypted_comment_regex").is_empty()
        {
            return Err(SopsError::Unsupported(
                "encrypted_comment_regex/unencrypted_comment_regex".into(),
            ));
        }
        let regex = |key: &str, s: String| {
            Regex::new(&s).map_err(|e| SopsError::Metadata(format!("{key}: {e}")))
        };
        let mut rules = Vec::new();
        for field in [
            "unencrypted_suffix",
            "encrypted_suffix",
            "unencrypted_regex",
            "encrypted_regex",
        ] {
            let value = text(field);
            if value.is_empty() {
                continue;
            }
            rules.push(match field {
                "unencrypted_suffix" => Rule::UnencryptedSuffix(value),
                "encrypted_suffix" => Rule::EncryptedSuffix(value),
                "unencrypted_regex" => Rule::UnencryptedRegex(regex(field, value)?),
                _ => Rule::EncryptedRegex(regex(field, value)?),
            });
        }
        if rules.len() > 1 {
            return Err(SopsError::Metadata(
                "more than one of encrypted_suffix, unencrypted_suffix, encrypted_regex, \
                 unencrypted_regex"
                    .into(),
            ));
        }
        let rule = rules
            .pop()
            .unwrap_or_else(|| Rule::UnencryptedSuffix(DEFAULT_UNENCRYPTED_SUFFIX.into()));
        let mac_only_encrypted = match node.get("mac_only_encrypted") {
            Some(Node::Bool(b)) => *b,
            Some(Node::Str(s)) => s == "true",
            _ => false,
        };
        Ok(Metadata {
            keys,
            last_modified,
            mac,
            mac_only_encrypted,
            version: text("version"),
            rule,
        })
    }
}

fn collect_keys(group: &Node, keys: &mut Vec<WrappedKey>) {
    let entries = |field: &str| match group.get(field) {
        Some(Node::Seq(items)) => items.clone(),
        _ => Vec::new(),
    };
    let field = |entry: &Node, key: &str| {
        entry
            .get(key)
            .and_then(Node::as_str)
            .unwrap_or("")
            .to_owned()
    };
    for entry in entries("age") {
        keys.push(WrappedKey::Age {
            recipient: field(&entry, "recipient"),
            enc: field(&entry, "enc"),
        });
    }
    for entry in entries("pgp") {
        keys.push(WrappedKey::Pgp {
            fingerprint: field(&entry, "fp"),
            enc: field(&entry, "enc"),
        });
    }
    for other in OTHER_KEY_FIELDS {
        if !entries(other).is_empty() {
            keys.push(WrappedKey::Other(other));
        }
    }
}

/// The documents of a YAML stream (empty ones dropped), as sops' YAML store reads them: only
/// `true`/`false` are booleans.
pub fn parse_yaml_documents(text: &str) -> Result<Vec<Node>, SopsError> {
    let options = serde_saphyr::options! { strict_booleans: true };
    let docs: Vec<Node> =
        serde_saphyr::from_multiple_with_options(text, options).map_err(|e| SopsError::Parse {
            format: Format::Yaml,
            message: e.to_string(),
        })?;
    Ok(docs.into_iter().filter(|d| *d != Node::Null).collect())
}

/// Whether a parsed document carries SOPS metadata with a MAC (kustomize-controller's test for
/// an encrypted resource).
pub fn has_metadata(doc: &Node) -> bool {
    doc.get("sops")
        .and_then(|s| s.get("mac"))
        .is_some_and(|m| *m != Node::Null && *m != Node::Str(String::new()))
}

/// A dotenv file's branch and its (unflattened) `sops_` metadata.
fn parse_dotenv(text: &str) -> Result<(Node, Node), String> {
    let mut items = Vec::new();
    let mut meta: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| {
            format!(
                "invalid dotenv input line (no '=') in line of {} bytes",
                line.len()
            )
        })?;
        let value = value.replace("\\n", "\n");
        match key.strip_prefix("sops_") {
            Some(meta_key) => meta.push((meta_key.to_owned(), value)),
            None => items.push((key.to_owned(), Node::Str(value))),
        }
    }
    Ok((Node::Map(items), unflatten(&meta)?))
}

/// sops' flattened metadata keys (`age__list_0__map_enc`) back into a tree.
fn unflatten(flat: &[(String, String)]) -> Result<Node, String> {
    let mut root = Node::Map(Vec::new());
    for (key, value) in flat {
        let mut tokens = Vec::new();
        let mut rest = key.as_str();
        let first_end = [rest.find("__map_"), rest.find("__list_")]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(rest.len());
        tokens.push(Token::Key(rest[..first_end].to_owned()));
        rest = &rest[first_end..];
        while !rest.is_empty() {
            let (is_map, body) = if let Some(b) = rest.strip_prefix("__map_") {
                (true, b)
            } else if let Some(b) = rest.strip_prefix("__list_") {
                (false, b)
            } else {
                return Err(format!("bad flattened metadata key {key}"));
            };
            let end = [body.find("__map_"), body.find("__list_")]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(body.len());
            let part = &body[..end];
            tokens.push(if is_map {
                Token::Key(part.to_owned())
            } else {
                Token::Index(
                    part.parse()
                        .map_err(|_| format!("bad list index in metadata key {key}"))?,
                )
            });
            rest = &body[end..];
        }
        place(&mut root, &tokens, Node::Str(value.clone()))
            .map_err(|e| format!("metadata key {key}: {e}"))?;
    }
    Ok(root)
}

enum Token {
    Key(String),
    Index(usize),
}

fn place(node: &mut Node, tokens: &[Token], value: Node) -> Result<(), String> {
    let Some((first, rest)) = tokens.split_first() else {
        *node = value;
        return Ok(());
    };
    match first {
        Token::Key(k) => {
            if *node == Node::Null {
                *node = Node::Map(Vec::new());
            }
            let Node::Map(items) = node else {
                return Err("type mismatch".into());
            };
            let pos = match items.iter().position(|(key, _)| key == k) {
                Some(p) => p,
                None => {
                    items.push((k.clone(), Node::Null));
                    items.len() - 1
                }
            };
            place(&mut items[pos].1, rest, value)
        }
        Token::Index(i) => {
            if *node == Node::Null {
                *node = Node::Seq(Vec::new());
            }
            let Node::Seq(items) = node else {
                return Err("type mismatch".into());
            };
            if items.len() <= *i {
                items.resize(*i + 1, Node::Null);
            }
            place(&mut items[*i], rest, value)
        }
    }
}

/// Encrypts `plain` as sops would at `path` (for tests and benchmarks that need a file without
/// the sops CLI): AES-256-GCM with the given 32-byte nonce.
pub fn encrypt_value(
    data_key: &[u8],
    nonce: &[u8; 32],
    plain: &Node,
    path: &[&str],
) -> Result<String, SopsError> {
    let (bytes, kind) = match plain {
        Node::Str(s) if s.is_empty() => return Ok(String::new()),
        Node::Str(s) => (s.as_bytes().to_vec(), "str"),
        Node::Int(i) => (i.to_string().into_bytes(), "int"),
        Node::Float(f) => (go_float(*f).into_bytes(), "float"),
        Node::Bool(_) => (plain.mac_bytes().unwrap_or_default(), "bool"),
        _ => return Err(SopsError::Unsupported("only scalars are encrypted".into())),
    };
    if data_key.len() != 32 {
        return Err(SopsError::Metadata("data key must be 32 bytes".into()));
    }
    let cipher = Cipher::new(GenericArray::from_slice(data_key));
    let aad = format!("{}:", path.join(":"));
    let sealed = cipher
        .encrypt(
            GenericArray::from_slice(nonce),
            Payload {
                msg: &bytes,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| SopsError::Unsupported("encryption failed".into()))?;
    let (data, tag) = sealed.split_at(sealed.len() - 16);
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{kind}]",
        b64.encode(data),
        b64.encode(nonce),
        b64.encode(tag)
    ))
}

/// The MAC of plain `branches` as sops computes it, encrypted for `lastmodified` (for tests and
/// benchmarks that build a file without the sops CLI). Uses the default rule.
pub fn encrypt_mac(
    data_key: &[u8],
    nonce: &[u8; 32],
    plain_branches: &[Node],
    last_modified: &str,
) -> Result<String, SopsError> {
    fn hash_all(node: &Node, hash: &mut Sha512) {
        match node {
            Node::Map(items) => items.iter().for_each(|(_, v)| hash_all(v, hash)),
            Node::Seq(items) => items.iter().for_each(|v| hash_all(v, hash)),
            leaf => {
                if let Some(b) = leaf.mac_bytes() {
                    hash.update(&b);
                }
            }
        }
    }
    let mut hash = Sha512::new();
    plain_branches.iter().for_each(|b| hash_all(b, &mut hash));
    let mac = hex::encode_upper(hash.finalize());
    let cipher = Cipher::new(GenericArray::from_slice(data_key));
    let aad = mac_additional_data(last_modified);
    let sealed = cipher
        .encrypt(
            GenericArray::from_slice(nonce),
            Payload {
                msg: mac.as_bytes(),
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| SopsError::Unsupported("encryption failed".into()))?;
    let (data, tag) = sealed.split_at(sealed.len() - 16);
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:str]",
        b64.encode(data),
        b64.encode(nonce),
        b64.encode(tag)
    ))
}

#[cfg(test)]
mod tests;

/// What `flux build kustomization` prints instead of an encrypted value.
pub const MASK: &str = "**SOPS**";

/// Masks a Secret's encrypted values as `flux build kustomization` does (other objects are left
/// alone): a Secret with SOPS metadata loses its `sops` key and has every `data` and
/// `stringData` value replaced by [`MASK`] (base64 in `data`; for a
/// `kubernetes.io/dockerconfigjson` Secret, by the JSON `{"mask":"**SOPS**"}` so the type's
/// validation still passes). Without metadata, only entries that hold a whole SOPS file are
/// masked, and (as Flux does) a `stringData` entry then gets the base64 form of the mask.
pub fn mask_secret(obj: &mut serde_json::Value) {
    use serde_json::Value;
    if obj.get("kind").and_then(Value::as_str) != Some("Secret") {
        return;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let encoded_mask = b64.encode(MASK);
    let looks_encrypted = |text: &[u8]| {
        let has = |m: &[u8]| text.windows(m.len()).any(|w| w == m);
        has(b"sops") && has(b"ENC[")
    };
    let metadata = obj
        .pointer("/sops/mac")
        .and_then(Value::as_str)
        .is_some_and(|m| m.starts_with("ENC["))
        || obj
            .get("stringData")
            .and_then(Value::as_object)
            .is_some_and(|m| {
                m.values()
                    .filter_map(Value::as_str)
                    .any(|v| v.contains("sops:") && v.contains("mac: ENC["))
            });
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    if metadata {
        map.remove("sops");
        let docker =
            map.get("type").and_then(Value::as_str) == Some("kubernetes.io/dockerconfigjson");
        let (data_mask, string_mask) = if docker {
            let json = format!("{{\"mask\":\"{MASK}\"}}");
            (b64.encode(&json), json)
        } else {
            (encoded_mask.clone(), MASK.to_string())
        };
        for (field, mask) in [("data", data_mask), ("stringData", string_mask)] {
            if let Some(values) = map.get_mut(field).and_then(Value::as_object_mut) {
                for value in values.values_mut() {
                    *value = Value::String(mask.clone());
                }
            }
        }
        return;
    }
    if let Some(values) = map.get_mut("data").and_then(Value::as_object_mut) {
        for value in values.values_mut() {
            let encrypted = value
                .as_str()
                .and_then(|v| b64.decode(v).ok())
                .is_some_and(|d| looks_encrypted(&d));
            if encrypted {
                *value = Value::String(encoded_mask.clone());
            }
        }
    }
    if let Some(values) = map.get_mut("stringData").and_then(Value::as_object_mut) {
        for value in values.values_mut() {
            if value
                .as_str()
                .is_some_and(|v| looks_encrypted(v.as_bytes()))
            {
                *value = Value::String(encoded_mask.clone());
            }
        }
    }
}
