//! Incoming webhooks (Flux's `Receiver`): the secret path a Receiver is served on, and whether a
//! call is authentic and well formed for the Receiver's type.
//!
//! Everything here is pure: the server hands in the headers and the body it read, and gets back
//! what to do ([`Verdict`]) or why to refuse ([`Rejection`], answered 400 as Flux does). Secrets
//! are compared in constant time (`hmac`'s `verify_slice`, `subtle` for plain tokens), so the
//! time a refusal takes says nothing about how much of a guess was right.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// `status.webhookPath`: `/hook/` + hex(sha256(token + name + namespace)), as Flux computes it,
/// so a URL pasted into GitHub for Flux keeps working with Gantry.
pub fn webhook_path(token: &str, name: &str, namespace: &str) -> String {
    let digest = Sha256::digest(format!("{token}{name}{namespace}").as_bytes());
    format!("/hook/{}", hex::encode(digest))
}

/// Request headers by lower-case name (HTTP header names are case-insensitive).
#[derive(Debug, Clone, Default)]
pub struct Headers(BTreeMap<String, String>);

impl Headers {
    /// Builds from (name, value) pairs; later duplicates win.
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Headers(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect(),
        )
    }

    /// The value of `name`, any case.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

/// What to do with an authentic call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Request a reconcile of the Receiver's resources.
    Reconcile,
    /// Authentic, but nothing to do (GitHub's `ping` when a webhook is created). Answered 200.
    Ping,
}

/// Why a call is refused (HTTP 400, the message is the response body and the log line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("missing signature header {0}")]
    MissingSignature(&'static str),
    #[error("malformed signature header {header}: {reason}")]
    MalformedSignature {
        header: &'static str,
        reason: String,
    },
    #[error("unsupported signature algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("the signature does not match the payload")]
    SignatureMismatch,
    #[error("missing token header {0}")]
    MissingToken(&'static str),
    #[error("the token in {0} does not match")]
    TokenMismatch(&'static str),
    #[error("missing event header {0}")]
    MissingEvent(&'static str),
    #[error("event {0:?} is not in the Receiver's events")]
    EventNotAccepted(String),
    #[error("invalid {kind} payload: {reason}")]
    InvalidPayload { kind: &'static str, reason: String },
    #[error("receiver type {0:?} is not supported by Gantry")]
    UnsupportedType(String),
}

/// Receiver types this module verifies.
pub const SUPPORTED_TYPES: &[&str] = &[
    "generic",
    "generic-hmac",
    "github",
    "gitlab",
    "bitbucket",
    "harbor",
    "dockerhub",
    "quay",
    "nexus",
    "acr",
];

/// Whether calls for a Receiver of `type_` can be verified.
pub fn is_supported(type_: &str) -> bool {
    SUPPORTED_TYPES.contains(&type_)
}

/// Checks one call to a Receiver of `type_` whose secret token is `token` and whose `spec.events`
/// is `events` (empty: all). `body` is the raw request body.
pub fn verify(
    type_: &str,
    token: &str,
    events: &[String],
    headers: &Headers,
    body: &[u8],
) -> Result<Verdict, Rejection> {
    match type_ {
        // The secret path is the only protection (as in Flux).
        "generic" => Ok(Verdict::Reconcile),
        "generic-hmac" => {
            let header = "X-Signature";
            let value = headers
                .get(header)
                .filter(|v| !v.is_empty())
                .ok_or(Rejection::MissingSignature(header))?;
            verify_hmac(header, value, token, body)?;
            Ok(Verdict::Reconcile)
        }
        "github" => verify_github(token, events, headers, body),
        "gitlab" => {
            check_token(headers, "X-Gitlab-Token", token)?;
            let event = event_header(headers, "X-Gitlab-Event")?;
            let payload = json_object("GitLab", body)?;
            check_gitlab_shape(&event, &payload)?;
            accept_event(events, &event)?;
            Ok(Verdict::Reconcile)
        }
        "bitbucket" => {
            // Bitbucket Server signs like GitHub (HMAC-SHA256 in X-Hub-Signature).
            let header = "X-Hub-Signature";
            let value = headers
                .get(header)
                .ok_or(Rejection::MissingSignature(header))?;
            verify_hmac(header, value, token, body)?;
            let event = event_header(headers, "X-Event-Key")?;
            let payload = json_object("Bitbucket", body)?;
            check_bitbucket_shape(&event, &payload)?;
            if event == BITBUCKET_PING {
                return Ok(Verdict::Ping);
            }
            accept_event(events, &event)?;
            Ok(Verdict::Reconcile)
        }
        "harbor" => {
            check_token(headers, "Authorization", token)?;
            let payload = json_object("Harbor", body)?;
            require_string(&payload, "Harbor", &["type"])?;
            Ok(Verdict::Reconcile)
        }
        "dockerhub" => {
            let payload = json_object("Docker Hub", body)?;
            require_string(&payload, "Docker Hub", &["push_data", "tag"])?;
            require_string(&payload, "Docker Hub", &["repository", "repo_name"])?;
            Ok(Verdict::Reconcile)
        }
        "quay" => {
            let payload = json_object("Quay", body)?;
            require_string(&payload, "Quay", &["docker_url"])?;
            if !payload.get("updated_tags").is_some_and(|t| t.is_array()) {
                return Err(Rejection::InvalidPayload {
                    kind: "Quay",
                    reason: "updated_tags is not a list".into(),
                });
            }
            Ok(Verdict::Reconcile)
        }
        "nexus" => {
            let header = "X-Nexus-Webhook-Signature";
            let value = headers
                .get(header)
                .ok_or(Rejection::MissingSignature(header))?;
            // Nexus sends the bare hex HMAC-SHA1 of the body.
            verify_hmac(header, &format!("sha1={value}"), token, body)?;
            json_object("Nexus", body)?;
            Ok(Verdict::Reconcile)
        }
        "acr" => {
            let payload = json_object("ACR", body)?;
            require_string(&payload, "ACR", &["target", "repository"])?;
            Ok(Verdict::Reconcile)
        }
        other => Err(Rejection::UnsupportedType(other.to_string())),
    }
}

fn verify_github(
    token: &str,
    events: &[String],
    headers: &Headers,
    body: &[u8],
) -> Result<Verdict, Rejection> {
    // GitHub sends both when the hook has a secret; the SHA-256 one is preferred, SHA-1 is for
    // old GitHub Enterprise servers.
    let signature = match headers.get("X-Hub-Signature-256") {
        Some(value) => ("X-Hub-Signature-256", value),
        None => match headers.get("X-Hub-Signature") {
            Some(value) => ("X-Hub-Signature", value),
            None => return Err(Rejection::MissingSignature("X-Hub-Signature-256")),
        },
    };
    verify_hmac(signature.0, signature.1, token, body)?;
    let event = event_header(headers, "X-GitHub-Event")?;
    // The event is not covered by the signature: checking it against the payload's shape stops
    // a signed body from being replayed as another event type. The shape check, the ping test
    // and the `events` filter all see the same normalised name.
    let payload = github_payload(headers, body)?;
    check_github_shape(&event, &payload)?;
    if event == "ping" {
        return Ok(Verdict::Ping);
    }
    accept_event(events, &event)?;
    Ok(Verdict::Reconcile)
}

/// An event type as Gantry compares it: surrounding whitespace dropped, ASCII lower case.
///
/// Flux matches `spec.events` case-insensitively (`strings.EqualFold`), so `Push` and `push`
/// must mean one event everywhere; normalising once, before the payload check and the filter,
/// keeps a signed body from passing one check under one spelling and the other under another.
pub fn normalize_event(name: &str) -> String {
    name.trim().to_ascii_lowercase()
}

fn event_header(headers: &Headers, header: &'static str) -> Result<String, Rejection> {
    headers
        .get(header)
        .map(normalize_event)
        .filter(|e| !e.is_empty())
        .ok_or(Rejection::MissingEvent(header))
}

// GitHub posts JSON, or a form with the JSON in `payload` when the hook's content type says so.
fn github_payload(headers: &Headers, body: &[u8]) -> Result<serde_json::Value, Rejection> {
    let form = headers
        .get("Content-Type")
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return json_object("GitHub", body);
    }
    let text = std::str::from_utf8(body).map_err(|_| Rejection::InvalidPayload {
        kind: "GitHub",
        reason: "the form body is not UTF-8".into(),
    })?;
    let json = text
        .split('&')
        .find_map(|pair| pair.strip_prefix("payload="))
        .ok_or(Rejection::InvalidPayload {
            kind: "GitHub",
            reason: "the form has no payload field".into(),
        })?;
    let decoded = percent_decode(json).ok_or(Rejection::InvalidPayload {
        kind: "GitHub",
        reason: "the payload field is not valid URL encoding".into(),
    })?;
    json_object("GitHub", &decoded)
}

// Fields every payload of these GitHub event types carries (GitHub's webhook documentation).
fn check_github_shape(event: &str, payload: &serde_json::Value) -> Result<(), Rejection> {
    let required: &[&[&str]] = match event {
        "ping" => &[&["zen"], &["hook_id"]],
        "push" => &[&["ref"], &["before"], &["after"], &["repository"]],
        "create" | "delete" => &[&["ref"], &["ref_type"], &["repository"]],
        "release" => &[&["action"], &["release"], &["repository"]],
        "pull_request" => &[&["action"], &["number"], &["pull_request"]],
        "package" | "registry_package" => &[&["action"], &["repository"]],
        _ => &[],
    };
    require_fields("GitHub", event, payload, required)?;
    // A ping body carries no change: it is accepted as a ping and nothing else, also under
    // event names whose shape is not checked above.
    let is_ping_body =
        lookup(payload, &["zen"]).is_some() && lookup(payload, &["hook_id"]).is_some();
    if is_ping_body && event != "ping" {
        return Err(Rejection::InvalidPayload {
            kind: "GitHub",
            reason: format!("a ping payload sent as a {event:?} event"),
        });
    }
    Ok(())
}

// GitLab names the event in the body too (`object_kind`); both must agree. Names are normalised.
fn check_gitlab_shape(event: &str, payload: &serde_json::Value) -> Result<(), Rejection> {
    let kind = match event {
        "push hook" => "push",
        "tag push hook" => "tag_push",
        "issue hook" | "confidential issue hook" => "issue",
        "note hook" | "confidential note hook" => "note",
        "merge request hook" => "merge_request",
        "wiki page hook" => "wiki_page",
        "pipeline hook" => "pipeline",
        "job hook" => "build",
        "deployment hook" => "deployment",
        "release hook" => "release",
        "feature flag hook" => "feature_flag",
        "emoji hook" => "emoji",
        _ => return Ok(()),
    };
    match payload.get("object_kind").and_then(|k| k.as_str()) {
        Some(k) if k.eq_ignore_ascii_case(kind) => Ok(()),
        other => Err(Rejection::InvalidPayload {
            kind: "GitLab",
            reason: format!(
                "a {event:?} event must have object_kind {kind:?}, not {:?}",
                other.unwrap_or("")
            ),
        }),
    }
}

/// Bitbucket Server's "Test connection" event: authentic, nothing to reconcile.
const BITBUCKET_PING: &str = "diagnostics:ping";

// Bitbucket Server repeats the event in the body (`eventKey`); Bitbucket Cloud does not, so
// its push is checked by shape. Names are normalised.
fn check_bitbucket_shape(event: &str, payload: &serde_json::Value) -> Result<(), Rejection> {
    let required: &[&[&str]] = match event {
        BITBUCKET_PING => &[&["test"]],
        "repo:refs_changed" => &[&["eventKey"], &["changes"], &["repository"]],
        "repo:push" => &[&["push"], &["repository"]],
        _ => &[],
    };
    require_fields("Bitbucket", event, payload, required)?;
    let in_body = payload.get("eventKey").and_then(|k| k.as_str());
    let ping_body = lookup(payload, &["test"]).is_some() && in_body.is_none();
    match in_body {
        Some(key) if normalize_event(key) != event => Err(Rejection::InvalidPayload {
            kind: "Bitbucket",
            reason: format!("the payload's eventKey {key:?} is not the event {event:?}"),
        }),
        _ if ping_body && event != BITBUCKET_PING => Err(Rejection::InvalidPayload {
            kind: "Bitbucket",
            reason: format!("a {BITBUCKET_PING} payload sent as a {event:?} event"),
        }),
        _ => Ok(()),
    }
}

fn require_fields(
    kind: &'static str,
    event: &str,
    payload: &serde_json::Value,
    required: &[&[&str]],
) -> Result<(), Rejection> {
    for path in required {
        if lookup(payload, path).is_none() {
            return Err(Rejection::InvalidPayload {
                kind,
                reason: format!("a {event:?} event must have {:?}", path.join(".")),
            });
        }
    }
    Ok(())
}

// `event` is normalised; so is each entry of `spec.events` before comparing.
fn accept_event(events: &[String], event: &str) -> Result<(), Rejection> {
    if events.is_empty() || events.iter().any(|e| normalize_event(e) == event) {
        Ok(())
    } else {
        Err(Rejection::EventNotAccepted(event.to_string()))
    }
}

/// Verifies `<algorithm>=<hex>` (sha1, sha256, sha512) as HMAC of `body` keyed with `token`.
fn verify_hmac(
    header: &'static str,
    value: &str,
    token: &str,
    body: &[u8],
) -> Result<(), Rejection> {
    let (algorithm, hex_mac) =
        value
            .split_once('=')
            .ok_or_else(|| Rejection::MalformedSignature {
                header,
                reason: "expected <algorithm>=<hex>".into(),
            })?;
    let mac = hex::decode(hex_mac.trim()).map_err(|e| Rejection::MalformedSignature {
        header,
        reason: e.to_string(),
    })?;
    let key = token.as_bytes();
    let ok = match algorithm.to_ascii_lowercase().as_str() {
        "sha1" => mac_of::<Hmac<sha1::Sha1>>(key, body)
            .verify_slice(&mac)
            .is_ok(),
        "sha256" => mac_of::<Hmac<Sha256>>(key, body).verify_slice(&mac).is_ok(),
        "sha512" => mac_of::<Hmac<Sha512>>(key, body).verify_slice(&mac).is_ok(),
        other => return Err(Rejection::UnsupportedAlgorithm(other.to_string())),
    };
    if ok {
        Ok(())
    } else {
        Err(Rejection::SignatureMismatch)
    }
}

fn mac_of<M: Mac + KeyInit>(key: &[u8], body: &[u8]) -> M {
    let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(body);
    mac
}

/// `sha256=<hex>` HMAC of `body` keyed with `key`: what GitHub sends in `X-Hub-Signature-256`
/// and what a `generic-hmac` Provider sends in `X-Signature`.
pub fn sign_sha256(key: &[u8], body: &[u8]) -> String {
    let mac = mac_of::<Hmac<Sha256>>(key, body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn check_token(headers: &Headers, header: &'static str, token: &str) -> Result<(), Rejection> {
    let given = headers.get(header).ok_or(Rejection::MissingToken(header))?;
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(Rejection::TokenMismatch(header))
    }
}

fn json_object(kind: &'static str, body: &[u8]) -> Result<serde_json::Value, Rejection> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) if value.is_object() => Ok(value),
        Ok(_) => Err(Rejection::InvalidPayload {
            kind,
            reason: "not a JSON object".into(),
        }),
        Err(e) => Err(Rejection::InvalidPayload {
            kind,
            reason: e.to_string(),
        }),
    }
}

fn lookup<'a>(value: &'a serde_json::Value, path: &[&str]) -> Option<&'a serde_json::Value> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .filter(|v| !v.is_null())
}

fn require_string(
    payload: &serde_json::Value,
    kind: &'static str,
    path: &[&str],
) -> Result<(), Rejection> {
    match lookup(payload, path) {
        Some(v) if v.is_string() => Ok(()),
        _ => Err(Rejection::InvalidPayload {
            kind,
            reason: format!("{} is missing or not a string", path.join(".")),
        }),
    }
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "It's a Secret to Everybody";
    // GitHub's documented example: this secret and body give this signature.
    const GITHUB_BODY: &[u8] = b"Hello, World!";
    const GITHUB_SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn push() -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "ref": "refs/heads/main", "before": "0".repeat(40), "after": "a".repeat(40),
            "repository": {"full_name": "org/app"}
        }))
        .unwrap()
    }

    fn github(event: &str, body: &[u8], token: &str) -> Headers {
        let signature = sign_sha256(token.as_bytes(), body);
        Headers::new([
            ("X-GitHub-Event", event),
            ("X-Hub-Signature-256", signature.as_str()),
            ("Content-Type", "application/json"),
        ])
    }

    #[test]
    fn path_is_fluxs() {
        // echo -n 'tokenappflux-system' | sha256sum
        let expected = hex::encode(Sha256::digest(b"tokenappflux-system"));
        assert_eq!(
            webhook_path("token", "app", "flux-system"),
            format!("/hook/{expected}")
        );
        assert_ne!(
            webhook_path("token", "app", "default"),
            webhook_path("token", "app", "flux-system")
        );
    }

    #[test]
    fn signature_matches_githubs_documented_example() {
        assert_eq!(sign_sha256(TOKEN.as_bytes(), GITHUB_BODY), GITHUB_SIGNATURE);
        let headers = Headers::new([("X-Hub-Signature-256", GITHUB_SIGNATURE)]);
        verify_hmac(
            "X-Hub-Signature-256",
            headers.get("x-hub-signature-256").unwrap(),
            TOKEN,
            GITHUB_BODY,
        )
        .unwrap();
    }

    #[test]
    fn github_push_is_accepted_and_filtered_by_events() {
        let body = push();
        let h = github("push", &body, TOKEN);
        assert_eq!(
            verify("github", TOKEN, &[], &h, &body),
            Ok(Verdict::Reconcile)
        );
        assert_eq!(
            verify("github", TOKEN, &["push".into()], &h, &body),
            Ok(Verdict::Reconcile)
        );
        assert_eq!(
            verify("github", TOKEN, &["release".into()], &h, &body),
            Err(Rejection::EventNotAccepted("push".into()))
        );
    }

    #[test]
    fn github_faults_are_refused() {
        let body = push();
        // Wrong secret.
        let h = github("push", &body, "another secret");
        assert_eq!(
            verify("github", TOKEN, &[], &h, &body),
            Err(Rejection::SignatureMismatch)
        );
        // No signature.
        let h = Headers::new([("X-GitHub-Event", "push")]);
        assert_eq!(
            verify("github", TOKEN, &[], &h, &body),
            Err(Rejection::MissingSignature("X-Hub-Signature-256"))
        );
        // Signature over a different body.
        let h = github("push", b"{}", TOKEN);
        assert_eq!(
            verify("github", TOKEN, &[], &h, &body),
            Err(Rejection::SignatureMismatch)
        );
        // The signed push body replayed as a release event.
        let h = github("release", &body, TOKEN);
        assert!(matches!(
            verify("github", TOKEN, &[], &h, &body),
            Err(Rejection::InvalidPayload { .. })
        ));
        // Signed garbage.
        let h = github("push", b"not json", TOKEN);
        assert!(matches!(
            verify("github", TOKEN, &[], &h, b"not json"),
            Err(Rejection::InvalidPayload { .. })
        ));
        // Malformed header.
        let h = Headers::new([("X-GitHub-Event", "push"), ("X-Hub-Signature-256", "zz")]);
        assert!(matches!(
            verify("github", TOKEN, &[], &h, &body),
            Err(Rejection::MalformedSignature { .. })
        ));
    }

    #[test]
    fn github_legacy_sha1_and_ping() {
        let body = push();
        let mac = mac_of::<Hmac<sha1::Sha1>>(TOKEN.as_bytes(), &body);
        let sig = format!("sha1={}", hex::encode(mac.finalize().into_bytes()));
        let h = Headers::new([
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature", sig.as_str()),
        ]);
        assert_eq!(
            verify("github", TOKEN, &[], &h, &body),
            Ok(Verdict::Reconcile)
        );

        let ping = br#"{"zen":"Design for failure.","hook_id":1}"#;
        let h = github("ping", ping, TOKEN);
        assert_eq!(
            verify("github", TOKEN, &["push".into()], &h, ping),
            Ok(Verdict::Ping)
        );
    }

    #[test]
    fn github_form_encoded_payload() {
        let json = String::from_utf8(push()).unwrap();
        let encoded: String = json
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let body = format!("payload={encoded}");
        let sig = sign_sha256(TOKEN.as_bytes(), body.as_bytes());
        let h = Headers::new([
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", sig.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ]);
        assert_eq!(
            verify("github", TOKEN, &[], &h, body.as_bytes()),
            Ok(Verdict::Reconcile)
        );
    }

    #[test]
    fn generic_hmac_accepts_flux_algorithms() {
        let body = b"{\"anything\":true}";
        for (algorithm, mac) in [
            (
                "sha1",
                hex::encode(
                    mac_of::<Hmac<sha1::Sha1>>(TOKEN.as_bytes(), body)
                        .finalize()
                        .into_bytes(),
                ),
            ),
            (
                "sha256",
                hex::encode(
                    mac_of::<Hmac<Sha256>>(TOKEN.as_bytes(), body)
                        .finalize()
                        .into_bytes(),
                ),
            ),
            (
                "sha512",
                hex::encode(
                    mac_of::<Hmac<Sha512>>(TOKEN.as_bytes(), body)
                        .finalize()
                        .into_bytes(),
                ),
            ),
        ] {
            let value = format!("{algorithm}={mac}");
            let h = Headers::new([("X-Signature", value.as_str())]);
            assert_eq!(
                verify("generic-hmac", TOKEN, &[], &h, body),
                Ok(Verdict::Reconcile),
                "{algorithm}"
            );
        }
        let h = Headers::new([("X-Signature", "md5=00")]);
        assert_eq!(
            verify("generic-hmac", TOKEN, &[], &h, body),
            Err(Rejection::UnsupportedAlgorithm("md5".into()))
        );
        assert_eq!(
            verify("generic-hmac", TOKEN, &[], &Headers::default(), body),
            Err(Rejection::MissingSignature("X-Signature"))
        );
    }

    #[test]
    fn gitlab_and_harbor_tokens() {
        let body = br#"{"object_kind":"push"}"#;
        let h = Headers::new([("X-Gitlab-Token", TOKEN), ("X-Gitlab-Event", "Push Hook")]);
        assert_eq!(
            verify("gitlab", TOKEN, &["Push Hook".into()], &h, body),
            Ok(Verdict::Reconcile)
        );
        let h = Headers::new([("X-Gitlab-Token", "nope"), ("X-Gitlab-Event", "Push Hook")]);
        assert_eq!(
            verify("gitlab", TOKEN, &[], &h, body),
            Err(Rejection::TokenMismatch("X-Gitlab-Token"))
        );
        let harbor = br#"{"type":"PUSH_ARTIFACT","event_data":{}}"#;
        let h = Headers::new([("Authorization", TOKEN)]);
        assert_eq!(
            verify("harbor", TOKEN, &[], &h, harbor),
            Ok(Verdict::Reconcile)
        );
        assert_eq!(
            verify("harbor", TOKEN, &[], &Headers::default(), harbor),
            Err(Rejection::MissingToken("Authorization"))
        );
    }

    /// Every spelling a sender (or an attacker) might use for `name`.
    fn spellings(name: &str) -> Vec<String> {
        let mut capitalised = name.to_string();
        if let Some(first) = capitalised.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        let alternating: String = name
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        vec![
            name.to_string(),
            name.to_ascii_uppercase(),
            capitalised,
            alternating,
            format!(" {name}"),
            format!("{name} "),
            format!("\t{name}\t"),
            format!("  {}  ", name.to_ascii_uppercase()),
        ]
    }

    fn signed(header: &'static str, event: &str, body: &[u8]) -> Headers {
        let signature = sign_sha256(TOKEN.as_bytes(), body);
        let event_header = match header {
            "github" => "X-GitHub-Event",
            _ => "X-Event-Key",
        };
        let signature_header = match header {
            "github" => "X-Hub-Signature-256",
            _ => "X-Hub-Signature",
        };
        Headers::new([
            (event_header, event),
            (signature_header, signature.as_str()),
            ("Content-Type", "application/json"),
        ])
    }

    #[test]
    fn github_event_is_normalised_once_for_shape_ping_and_filter() {
        let push = push();
        let ping = br#"{"zen":"x","hook_id":1,"hook":{}}"#;
        for spelling in spellings("push") {
            let h = signed("github", &spelling, &push);
            for events in [vec![], vec!["push".into()], vec![" PUSH ".into()]] {
                assert_eq!(
                    verify("github", TOKEN, &events, &h, &push),
                    Ok(Verdict::Reconcile),
                    "push as {spelling:?}, events {events:?}"
                );
            }
            assert_eq!(
                verify("github", TOKEN, &["release".into()], &h, &push),
                Err(Rejection::EventNotAccepted("push".into())),
                "{spelling:?}"
            );
            // The issue's reproduction: a captured signed ping replayed as a push.
            let h = signed("github", &spelling, ping);
            assert!(
                matches!(
                    verify("github", TOKEN, &[], &h, ping),
                    Err(Rejection::InvalidPayload { .. })
                ),
                "ping body as {spelling:?}"
            );
        }
        for spelling in spellings("ping") {
            let h = signed("github", &spelling, ping);
            assert_eq!(
                verify("github", TOKEN, &["push".into()], &h, ping),
                Ok(Verdict::Ping),
                "{spelling:?}"
            );
            let h = signed("github", &spelling, &push);
            assert!(
                matches!(
                    verify("github", TOKEN, &[], &h, &push),
                    Err(Rejection::InvalidPayload { .. })
                ),
                "push body as {spelling:?}"
            );
        }
        // Event types without a checked shape still refuse a ping body.
        for spelling in spellings("issues") {
            let h = signed("github", &spelling, ping);
            assert!(
                matches!(
                    verify("github", TOKEN, &[], &h, ping),
                    Err(Rejection::InvalidPayload { .. })
                ),
                "ping body as {spelling:?}"
            );
        }
        for blank in ["", " ", "\t"] {
            let h = signed("github", blank, &push);
            assert_eq!(
                verify("github", TOKEN, &[], &h, &push),
                Err(Rejection::MissingEvent("X-GitHub-Event"))
            );
        }
    }

    #[test]
    fn gitlab_event_is_normalised_once_for_shape_and_filter() {
        let push = br#"{"object_kind":"push","ref":"refs/heads/main"}"#;
        let tag = br#"{"object_kind":"tag_push","ref":"refs/tags/v1"}"#;
        let gitlab =
            |event: &str| Headers::new([("X-Gitlab-Token", TOKEN), ("X-Gitlab-Event", event)]);
        for spelling in spellings("Push Hook") {
            let h = gitlab(&spelling);
            for events in [vec![], vec!["Push Hook".into()], vec!["push hook ".into()]] {
                assert_eq!(
                    verify("gitlab", TOKEN, &events, &h, push),
                    Ok(Verdict::Reconcile),
                    "{spelling:?}, events {events:?}"
                );
            }
            assert_eq!(
                verify("gitlab", TOKEN, &["Tag Push Hook".into()], &h, push),
                Err(Rejection::EventNotAccepted("push hook".into()))
            );
            assert!(
                matches!(
                    verify("gitlab", TOKEN, &[], &h, tag),
                    Err(Rejection::InvalidPayload { .. })
                ),
                "tag push body as {spelling:?}"
            );
        }
        for spelling in spellings("Tag Push Hook") {
            assert_eq!(
                verify(
                    "gitlab",
                    TOKEN,
                    &["tag push hook".into()],
                    &gitlab(&spelling),
                    tag
                ),
                Ok(Verdict::Reconcile),
                "{spelling:?}"
            );
        }
    }

    #[test]
    fn bitbucket_event_is_normalised_once_for_shape_ping_and_filter() {
        let refs = serde_json::to_vec(&serde_json::json!({
            "eventKey": "repo:refs_changed", "date": "2026-01-01T00:00:00+0000",
            "repository": {"slug": "app"}, "changes": [{"ref": {"id": "refs/heads/main"}}]
        }))
        .unwrap();
        let opened = serde_json::to_vec(&serde_json::json!({
            "eventKey": "pr:opened", "pullRequest": {"id": 1}
        }))
        .unwrap();
        let ping = br#"{"test":true}"#;
        for spelling in spellings("repo:refs_changed") {
            let h = signed("bitbucket", &spelling, &refs);
            for events in [
                vec![],
                vec!["repo:refs_changed".into()],
                vec!["REPO:REFS_CHANGED".into()],
            ] {
                assert_eq!(
                    verify("bitbucket", TOKEN, &events, &h, &refs),
                    Ok(Verdict::Reconcile),
                    "{spelling:?}, events {events:?}"
                );
            }
            assert_eq!(
                verify("bitbucket", TOKEN, &["pr:opened".into()], &h, &refs),
                Err(Rejection::EventNotAccepted("repo:refs_changed".into()))
            );
            for replayed in [&opened[..], &ping[..]] {
                let h = signed("bitbucket", &spelling, replayed);
                assert!(
                    matches!(
                        verify("bitbucket", TOKEN, &[], &h, replayed),
                        Err(Rejection::InvalidPayload { .. })
                    ),
                    "{} as {spelling:?}",
                    String::from_utf8_lossy(replayed)
                );
            }
        }
        for spelling in spellings("diagnostics:ping") {
            let h = signed("bitbucket", &spelling, ping);
            assert_eq!(
                verify("bitbucket", TOKEN, &["repo:refs_changed".into()], &h, ping),
                Ok(Verdict::Ping),
                "{spelling:?}"
            );
            let h = signed("bitbucket", &spelling, &refs);
            assert!(matches!(
                verify("bitbucket", TOKEN, &[], &h, &refs),
                Err(Rejection::InvalidPayload { .. })
            ));
        }
    }

    #[test]
    fn registry_payload_shapes() {
        // Docker Hub's documented example payload (trimmed to the fields that matter).
        let dockerhub = br#"{"callback_url":"https://registry.hub.docker.com/u/svendowideit/testhook/hook/2141b5bi5i5b02bec211i4eeih0242eg11000a/","push_data":{"pushed_at":1417566161,"pusher":"trustedbuilder","tag":"latest"},"repository":{"name":"testhook","namespace":"svendowideit","repo_name":"svendowideit/testhook","repo_url":"https://registry.hub.docker.com/u/svendowideit/testhook/"}}"#;
        let none = Headers::default();
        assert_eq!(
            verify("dockerhub", "", &[], &none, dockerhub),
            Ok(Verdict::Reconcile)
        );
        assert!(matches!(
            verify("dockerhub", "", &[], &none, br#"{"push_data":{}}"#),
            Err(Rejection::InvalidPayload { .. })
        ));
        let quay =
            br#"{"repository":"org/app","docker_url":"quay.io/org/app","updated_tags":["v1"]}"#;
        assert_eq!(verify("quay", "", &[], &none, quay), Ok(Verdict::Reconcile));
        assert!(matches!(
            verify("quay", "", &[], &none, br#"{"docker_url":"x"}"#),
            Err(Rejection::InvalidPayload { .. })
        ));
        assert_eq!(
            verify("cdevents", "", &[], &none, b"{}"),
            Err(Rejection::UnsupportedType("cdevents".into()))
        );
    }
}
