//! Credentials from a GitRepository's `secretRef` and strict SSH host-key checking.
//!
//! Secret keys as Flux reads them: `username`/`password` (HTTP basic auth), `bearerToken`
//! (HTTP `Authorization: Bearer`), `identity` (PEM or OpenSSH private key), `known_hosts` and an
//! optional `password` (the key's passphrase) for SSH, `ca.crt` (PEM CA) for HTTPS servers with
//! a private CA.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

/// Credentials for one remote, taken from a Secret's data.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// HTTP basic auth user.
    pub username: Option<String>,
    /// HTTP basic auth password, or the SSH key's passphrase.
    pub password: Option<String>,
    /// HTTP bearer token.
    pub bearer_token: Option<String>,
    /// SSH private key (PEM or OpenSSH format).
    pub identity: Option<String>,
    /// OpenSSH known_hosts lines the server's host key must match.
    pub known_hosts: Option<String>,
    /// PEM CA certificate(s) the HTTPS server's certificate must chain to (`ca.crt`).
    pub ca_cert: Option<String>,
}

// Never print secrets, not even in debug logs.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .field("known_hosts", &self.known_hosts.is_some())
            .field("ca_cert", &self.ca_cert.is_some())
            .finish()
    }
}

impl Credentials {
    /// Reads the keys Flux understands from a Secret's (decoded) data; unknown keys are ignored.
    pub fn from_secret_data<V: AsRef<[u8]>>(data: &BTreeMap<String, V>) -> Self {
        let get = |k: &str| {
            data.get(k)
                .map(|v| String::from_utf8_lossy(v.as_ref()).into_owned())
                .filter(|v| !v.is_empty())
        };
        Credentials {
            username: get("username"),
            password: get("password"),
            bearer_token: get("bearerToken"),
            identity: get("identity"),
            known_hosts: get("known_hosts"),
            // `caFile` is the name Flux's older API used.
            ca_cert: get("ca.crt").or_else(|| get("caFile")),
        }
    }
}

/// The proxy URL from a `proxySecretRef` Secret's data (`address`, optional `username` and
/// `password`), with the credentials as URL user info, as libgit2 takes them.
pub fn proxy_url<V: AsRef<[u8]>>(data: &BTreeMap<String, V>) -> Result<String, String> {
    let get = |k: &str| {
        data.get(k)
            .map(|v| String::from_utf8_lossy(v.as_ref()).trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let address = get("address").ok_or("invalid proxy secret: 'address' field not found")?;
    let (scheme, rest) = address.split_once("://").ok_or_else(|| {
        format!("invalid proxy address '{address}': expected http(s)://host:port")
    })?;
    Ok(match get("username") {
        Some(user) => {
            let password = get("password").unwrap_or_default();
            format!("{scheme}://{}:{}@{rest}", encode(&user), encode(&password))
        }
        None => address,
    })
}

// Percent-encodes what cannot stand in URL user info.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One usable known_hosts entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownHost {
    hosts: HostPatterns,
    revoked: bool,
    /// Key type as written, e.g. `ssh-ed25519`.
    pub key_type: String,
    /// The public key blob (SSH wire format), as libssh2 reports the server's key.
    pub key: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPatterns {
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    Plain(Vec<String>),
}

/// Outcome of checking a server's host key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKeyCheck {
    /// A known_hosts entry for the host has exactly this key.
    Match,
    /// Entries for the host exist but none has this key (or the key is revoked).
    Mismatch,
    /// No entry names the host.
    Unknown,
}

/// Parses known_hosts text; comments, blank lines, `@cert-authority` lines and malformed lines
/// are skipped (certificates are not supported).
pub fn parse_known_hosts(text: &str) -> Vec<KnownHost> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next();
        let mut revoked = false;
        match first {
            Some("@cert-authority") => continue,
            Some("@revoked") => {
                revoked = true;
                first = fields.next();
            }
            _ => {}
        }
        let (Some(hosts), Some(key_type), Some(key)) = (first, fields.next(), fields.next()) else {
            continue;
        };
        let Ok(key) = STANDARD.decode(key) else {
            continue;
        };
        let hosts = if let Some(hashed) = hosts.strip_prefix("|1|") {
            let Some((salt, hash)) = hashed.split_once('|') else {
                continue;
            };
            match (STANDARD.decode(salt), STANDARD.decode(hash)) {
                (Ok(salt), Ok(hash)) => HostPatterns::Hashed { salt, hash },
                _ => continue,
            }
        } else {
            HostPatterns::Plain(hosts.split(',').map(str::to_owned).collect())
        };
        out.push(KnownHost {
            hosts,
            revoked,
            key_type: key_type.to_owned(),
            key,
        });
    }
    out
}

/// How known_hosts names a host: `host` on port 22, `[host]:port` otherwise.
pub fn host_entry_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

impl KnownHost {
    /// Whether this entry names `host` on `port`.
    pub fn names(&self, host: &str, port: u16) -> bool {
        let name = host_entry_name(host, port);
        match &self.hosts {
            HostPatterns::Hashed { salt, hash } => {
                let Ok(mut mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(name.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
            HostPatterns::Plain(patterns) => {
                let mut matched = false;
                for p in patterns {
                    if let Some(negated) = p.strip_prefix('!') {
                        if glob(negated, &name) {
                            return false;
                        }
                    } else if glob(p, &name) {
                        matched = true;
                    }
                }
                matched
            }
        }
    }
}

/// Checks the server key `key` (wire-format blob) of `host`:`port` against `known`.
pub fn check_host_key(known: &[KnownHost], host: &str, port: u16, key: &[u8]) -> HostKeyCheck {
    let entries: Vec<&KnownHost> = known.iter().filter(|k| k.names(host, port)).collect();
    if entries.iter().any(|k| k.revoked && k.key == key) {
        return HostKeyCheck::Mismatch;
    }
    if entries.iter().any(|k| !k.revoked && k.key == key) {
        HostKeyCheck::Match
    } else if entries.is_empty() {
        HostKeyCheck::Unknown
    } else {
        HostKeyCheck::Mismatch
    }
}

/// A known_hosts line for `host`:`port` with a hashed host name (as `ssh-keyscan -H` writes).
pub fn hashed_known_hosts_line(
    host: &str,
    port: u16,
    key_type: &str,
    key: &[u8],
    salt: &[u8],
) -> String {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(salt).expect("HMAC takes any key length");
    mac.update(host_entry_name(host, port).as_bytes());
    format!(
        "|1|{}|{} {key_type} {}",
        STANDARD.encode(salt),
        STANDARD.encode(mac.finalize().into_bytes()),
        STANDARD.encode(key)
    )
}

// OpenSSH host pattern matching: `*` any run, `?` one character.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"\0\0\0\x0bssh-ed25519\0\0\0\x20abcdefghijklmnopqrstuvwxyz012345";
    const OTHER: &[u8] = b"\0\0\0\x0bssh-ed25519\0\0\0\x20ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

    fn line(hosts: &str, key: &[u8]) -> String {
        format!("{hosts} ssh-ed25519 {}", STANDARD.encode(key))
    }

    #[test]
    fn plain_entries_with_ports_and_patterns() {
        let text = format!(
            "# comment\n{}\n{}\n@cert-authority *.example.com ssh-rsa AAAA\ngarbage\n",
            line("[127.0.0.1]:2222,git.example.com", KEY),
            line("*.corp,!bad.corp", OTHER)
        );
        let known = parse_known_hosts(&text);
        assert_eq!(known.len(), 2);
        assert_eq!(
            check_host_key(&known, "127.0.0.1", 2222, KEY),
            HostKeyCheck::Match
        );
        assert_eq!(
            check_host_key(&known, "127.0.0.1", 2222, OTHER),
            HostKeyCheck::Mismatch
        );
        assert_eq!(
            check_host_key(&known, "127.0.0.1", 22, KEY),
            HostKeyCheck::Unknown
        );
        assert_eq!(
            check_host_key(&known, "git.example.com", 22, KEY),
            HostKeyCheck::Match
        );
        assert_eq!(
            check_host_key(&known, "a.corp", 22, OTHER),
            HostKeyCheck::Match
        );
        assert_eq!(
            check_host_key(&known, "bad.corp", 22, OTHER),
            HostKeyCheck::Unknown
        );
    }

    #[test]
    fn hashed_entries() {
        let text = hashed_known_hosts_line(
            "127.0.0.1",
            4022,
            "ssh-ed25519",
            KEY,
            b"0123456789abcdefghij",
        );
        let known = parse_known_hosts(&text);
        assert_eq!(
            check_host_key(&known, "127.0.0.1", 4022, KEY),
            HostKeyCheck::Match
        );
        assert_eq!(
            check_host_key(&known, "127.0.0.1", 4022, OTHER),
            HostKeyCheck::Mismatch
        );
        assert_eq!(
            check_host_key(&known, "127.0.0.2", 4022, KEY),
            HostKeyCheck::Unknown
        );
    }

    #[test]
    fn revoked_keys_never_match() {
        let text = format!("@revoked {}\n{}", line("h", KEY), line("h", KEY));
        assert_eq!(
            check_host_key(&parse_known_hosts(&text), "h", 22, KEY),
            HostKeyCheck::Mismatch
        );
    }

    #[test]
    fn proxy_urls_carry_encoded_credentials() {
        let data = |pairs: &[(&str, &str)]| -> BTreeMap<String, Vec<u8>> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        assert_eq!(
            proxy_url(&data(&[("address", "http://proxy:3128")])),
            Ok("http://proxy:3128".into())
        );
        assert_eq!(
            proxy_url(&data(&[
                ("address", "http://proxy:3128"),
                ("username", "me"),
                ("password", "p@ss:w/rd")
            ])),
            Ok("http://me:p%40ss%3Aw%2Frd@proxy:3128".into())
        );
        assert!(
            proxy_url(&data(&[("username", "me")]))
                .unwrap_err()
                .contains("'address'")
        );
        assert!(proxy_url(&data(&[("address", "proxy:3128")])).is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let data: BTreeMap<String, Vec<u8>> =
            [("password".to_string(), b"hunter2".to_vec())].into();
        let creds = Credentials::from_secret_data(&data);
        assert_eq!(creds.password.as_deref(), Some("hunter2"));
        assert!(!format!("{creds:?}").contains("hunter2"));
    }
}
