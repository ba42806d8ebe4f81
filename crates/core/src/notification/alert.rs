//! Outgoing alerts (Flux's `Alert` and `Provider`): which events an Alert selects, when an
//! event is a duplicate, and the request each Provider type expects.
//!
//! [`Event`] is Flux's event JSON (what a `generic` Provider receives verbatim). The dispatcher
//! turns it into an [`Outgoing`] request here and only sends it.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::source::revision::Revision;

/// The object an event is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvolvedObject {
    pub kind: String,
    #[serde(default)]
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// One event in Flux's JSON shape (`fluxcd/pkg/apis/event/v1beta1.Event`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub involved_object: InvolvedObject,
    /// `info` or `error`.
    pub severity: String,
    /// RFC 3339.
    pub timestamp: String,
    pub message: String,
    pub reason: String,
    /// Keys prefixed with the API group as controllers publish them, e.g.
    /// `kustomize.toolkit.fluxcd.io/revision`; `revision` after [`cleanup_metadata`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    pub reporting_controller: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporting_instance: Option<String>,
}

impl Event {
    /// The revision in the metadata (`<group>/revision` or `revision`), if any.
    pub fn revision(&self) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k.ends_with("/revision") || k.as_str() == "revision")
            .map(|(_, v)| v.as_str())
    }
}

/// An Alert's event source (`spec.eventSources[]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    pub kind: String,
    /// A name or `*`.
    pub name: String,
    /// Unset: the Alert's namespace.
    pub namespace: Option<String>,
    pub match_labels: BTreeMap<String, String>,
}

/// The parts of an Alert that decide what it sends.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub namespace: String,
    /// `info` or `error`.
    pub severity: String,
    pub sources: Vec<Source>,
    pub inclusion: Vec<Regex>,
    pub exclusion: Vec<Regex>,
}

/// A regular expression of `inclusionList`/`exclusionList` that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid regular expression {pattern:?}: {reason}")]
pub struct BadPattern {
    pub pattern: String,
    pub reason: String,
}

/// Compiles `inclusionList`/`exclusionList` entries.
pub fn compile(patterns: &[String]) -> Result<Vec<Regex>, BadPattern> {
    patterns
        .iter()
        .map(|p| {
            Regex::new(p).map_err(|e| BadPattern {
                pattern: p.clone(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Which source, if any, would select this event. `labels` are the involved object's labels;
/// `None` when not looked up (a source with `matchLabels` then does not match).
pub fn source_matches(
    filter: &Filter,
    event: &Event,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let object = &event.involved_object;
    filter.sources.iter().any(|source| {
        let namespace = source.namespace.as_deref().unwrap_or(&filter.namespace);
        if source.kind != object.kind || namespace != object.namespace {
            return false;
        }
        if source.name == "*" {
            source.match_labels.is_empty()
                || labels.is_some_and(|labels| {
                    source
                        .match_labels
                        .iter()
                        .all(|(k, v)| labels.get(k) == Some(v))
                })
        } else {
            source.name == object.name
        }
    })
}

/// Whether any source needs the involved object's labels to decide.
pub fn needs_labels(filter: &Filter, event: &Event) -> bool {
    filter.sources.iter().any(|s| {
        s.name == "*" && !s.match_labels.is_empty() && s.kind == event.involved_object.kind
    })
}

/// Severity, sources, then inclusion and exclusion lists, as Flux applies them.
pub fn selects(filter: &Filter, event: &Event, labels: Option<&BTreeMap<String, String>>) -> bool {
    if filter.severity == "error" && event.severity != "error" {
        return false;
    }
    if !source_matches(filter, event, labels) {
        return false;
    }
    if !filter.inclusion.is_empty() && !filter.inclusion.iter().any(|r| r.is_match(&event.message))
    {
        return false;
    }
    !filter.exclusion.iter().any(|r| r.is_match(&event.message))
}

/// What Flux's notification-controller does to an event it receives, before any Alert sees it:
/// keeps the metadata of the involved object's API group only, without that prefix
/// (`kustomize.toolkit.fluxcd.io/revision` reaches providers as `revision`), and drops the
/// checksum and digest keys.
pub fn cleanup_metadata(event: &mut Event) {
    let group = event
        .involved_object
        .api_version
        .as_deref()
        .and_then(|v| v.split_once('/'))
        .map_or("", |(group, _)| group);
    let prefix = format!("{group}/");
    let excluded = [format!("{group}/checksum"), format!("{group}/digest")];
    event.metadata = std::mem::take(&mut event.metadata)
        .into_iter()
        .filter(|(k, _)| {
            k.starts_with(group) && !excluded.iter().any(|e| e.eq_ignore_ascii_case(k))
        })
        .map(|(k, v)| match k.strip_prefix(&prefix) {
            Some(short) => (short.to_owned(), v),
            None => (k, v),
        })
        .collect();
}

/// Adds the Alert's `eventMetadata` (and `summary`) without overriding the event's own keys.
pub fn enrich(event: &mut Event, metadata: &BTreeMap<String, String>, summary: Option<&str>) {
    for (k, v) in metadata {
        event.metadata.entry(k.clone()).or_insert_with(|| v.clone());
    }
    if let Some(summary) = summary.filter(|s| !s.is_empty()) {
        event
            .metadata
            .entry("summary".into())
            .or_insert_with(|| summary.to_string());
    }
}

/// Events with the same key within the suppression window are sent once: same object, severity,
/// reason, message and revision (a new revision is news even when the message repeats).
pub fn duplicate_key(alert: &str, event: &Event) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    alert.hash(&mut h);
    let o = &event.involved_object;
    (&o.kind, &o.namespace, &o.name).hash(&mut h);
    (&event.severity, &event.reason, &event.message).hash(&mut h);
    event.revision().hash(&mut h);
    h.finish()
}

/// How long duplicates are suppressed (Flux's event rate limit).
pub const DUPLICATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// What a Provider needs to render a request.
#[derive(Debug, Clone, Default)]
pub struct ProviderConfig {
    pub type_: String,
    /// `spec.address`, or the secret's `address`.
    pub address: String,
    pub channel: Option<String>,
    pub username: Option<String>,
    /// The secret's `token`.
    pub token: Option<String>,
    /// Used to make commit status contexts unique per cluster (Flux uses the Provider's UID).
    pub uid: String,
}

/// One HTTP request to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why an event cannot be rendered for a Provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("provider type {0:?} is not supported by Gantry")]
    Unsupported(String),
    #[error("the provider has no address (spec.address or the secret's address)")]
    NoAddress,
    #[error("the {0} provider needs a token in its secret")]
    NoToken(&'static str),
    #[error("invalid repository address {0:?}: expected http(s)://<host>/<owner>/<repo>")]
    BadRepository(String),
}

/// Provider types [`render`] supports.
pub const SUPPORTED_PROVIDERS: &[&str] = &[
    "generic",
    "generic-hmac",
    "slack",
    "discord",
    "msteams",
    "github",
];

/// The request that delivers `event` to the provider. `Ok(None)`: nothing to send for this event
/// (a commit status provider and an event without a revision).
pub fn render(provider: &ProviderConfig, event: &Event) -> Result<Option<Outgoing>, RenderError> {
    let json = |value: &serde_json::Value| serde_json::to_vec(value).expect("JSON serialises");
    let content_type = ("Content-Type".to_string(), "application/json".to_string());
    match provider.type_.as_str() {
        "generic" | "generic-hmac" => {
            let url = address(provider)?;
            let body = serde_json::to_vec(event).expect("an event serialises");
            let mut headers = vec![content_type];
            if provider.type_ == "generic-hmac" {
                let key = provider
                    .token
                    .as_deref()
                    .ok_or(RenderError::NoToken("generic-hmac"))?;
                headers.push((
                    "X-Signature".into(),
                    crate::notification::webhook::sign_sha256(key.as_bytes(), &body),
                ));
            }
            Ok(Some(Outgoing { url, headers, body }))
        }
        "slack" => {
            let mut headers = vec![content_type];
            // With a token, Slack's Web API (chat.postMessage) is used instead of a webhook.
            let url = match (&provider.token, provider.address.is_empty()) {
                (Some(token), empty) => {
                    headers.push(("Authorization".into(), format!("Bearer {token}")));
                    if empty {
                        "https://slack.com/api/chat.postMessage".to_string()
                    } else {
                        provider.address.clone()
                    }
                }
                (None, _) => address(provider)?,
            };
            let body = json(&slack_payload(provider, event));
            Ok(Some(Outgoing { url, headers, body }))
        }
        "discord" => {
            // Discord accepts Slack's payload on the webhook URL + `/slack`, which is what Flux uses.
            let mut url = address(provider)?;
            if !url.trim_end_matches('/').ends_with("/slack") {
                url = format!("{}/slack", url.trim_end_matches('/'));
            }
            let body = json(&slack_payload(provider, event));
            Ok(Some(Outgoing {
                url,
                headers: vec![content_type],
                body,
            }))
        }
        "msteams" => {
            let url = address(provider)?;
            let body = json(&teams_payload(event));
            Ok(Some(Outgoing {
                url,
                headers: vec![content_type],
                body,
            }))
        }
        "github" => {
            let Some(revision) = event.revision() else {
                return Ok(None);
            };
            let Ok(revision) = Revision::parse(revision) else {
                return Ok(None);
            };
            let token = provider
                .token
                .as_deref()
                .ok_or(RenderError::NoToken("github"))?;
            let (api, owner, repo) = github_repository(&address(provider)?)?;
            let url = format!("{api}/repos/{owner}/{repo}/statuses/{}", revision.hash);
            let body = json(&serde_json::json!({
                "state": if event.severity == "error" { "failure" } else { "success" },
                "context": commit_status_context(&provider.uid, event),
                "description": truncate(&sentence(&event.reason), 140),
            }));
            Ok(Some(Outgoing {
                url,
                headers: vec![
                    content_type,
                    ("Accept".into(), "application/vnd.github+json".into()),
                    ("Authorization".into(), format!("Bearer {token}")),
                    ("X-GitHub-Api-Version".into(), "2022-11-28".into()),
                ],
                body,
            }))
        }
        other => Err(RenderError::Unsupported(other.to_string())),
    }
}

fn address(provider: &ProviderConfig) -> Result<String, RenderError> {
    if provider.address.is_empty() {
        Err(RenderError::NoAddress)
    } else {
        Ok(provider.address.clone())
    }
}

/// `kind/name.namespace`, the title Flux gives an event in chat messages.
fn title(event: &Event) -> String {
    let o = &event.involved_object;
    format!("{}/{}.{}", o.kind.to_lowercase(), o.name, o.namespace)
}

fn slack_payload(provider: &ProviderConfig, event: &Event) -> serde_json::Value {
    let fields: Vec<_> = event
        .metadata
        .iter()
        .map(|(k, v)| serde_json::json!({"title": k, "value": v, "short": false}))
        .collect();
    let mut payload = serde_json::json!({
        "username": provider.username.as_deref().unwrap_or("gantry"),
        "icon_url": "https://avatars.githubusercontent.com/u/52158677",
        "attachments": [{
            "color": if event.severity == "error" { "danger" } else { "good" },
            "author_name": title(event),
            "text": event.message,
            "mrkdwn_in": ["text"],
            "fields": fields,
        }],
    });
    if let Some(channel) = &provider.channel {
        payload["channel"] = channel.clone().into();
    }
    payload
}

// An Adaptive Card in a message, what Teams workflows (and current Flux) accept.
fn teams_payload(event: &Event) -> serde_json::Value {
    let facts: Vec<_> = event
        .metadata
        .iter()
        .map(|(k, v)| serde_json::json!({"title": k, "value": v}))
        .collect();
    serde_json::json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {"type": "TextBlock", "text": title(event), "weight": "bolder", "size": "medium",
                     "color": if event.severity == "error" { "attention" } else { "good" }},
                    {"type": "TextBlock", "text": event.message, "wrap": true},
                    {"type": "FactSet", "facts": facts},
                ],
            },
        }],
    })
}

/// `kind/name/<first segment of the provider UID>`, lower case: Flux's commit status context,
/// one per object and cluster.
pub fn commit_status_context(provider_uid: &str, event: &Event) -> String {
    let o = &event.involved_object;
    let uid = provider_uid.split('-').next().unwrap_or_default();
    format!("{}/{}/{}", o.kind, o.name, uid).to_lowercase()
}

/// The REST API base, owner and repository of a GitHub repository address
/// (`https://github.com/org/app[.git]`; any other host is GitHub Enterprise under `/api/v3`).
pub fn github_repository(address: &str) -> Result<(String, String, String), RenderError> {
    let bad = || RenderError::BadRepository(address.to_string());
    let (scheme, rest) = address.split_once("://").ok_or_else(bad)?;
    if scheme != "https" && scheme != "http" {
        return Err(bad());
    }
    let mut parts = rest.trim_end_matches('/').splitn(2, '/');
    let host = parts.next().filter(|h| !h.is_empty()).ok_or_else(bad)?;
    let path = parts.next().ok_or_else(bad)?;
    let (owner, repo) = path.split_once('/').ok_or_else(bad)?;
    let repo = repo.trim_end_matches(".git");
    if owner.is_empty() || repo.is_empty() || repo.contains('/') {
        return Err(bad());
    }
    let api = if host == "github.com" {
        "https://api.github.com".to_string()
    } else {
        format!("{scheme}://{host}/api/v3")
    };
    Ok((api, owner.to_string(), repo.to_string()))
}

/// `ReconciliationSucceeded` -> `reconciliation succeeded`.
fn sentence(reason: &str) -> String {
    let mut out = String::new();
    for (i, c) in reason.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.extend(c.to_lowercase());
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    s.chars().take(max - 3).chain("...".chars()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, name: &str, ns: &str, severity: &str, message: &str) -> Event {
        Event {
            involved_object: InvolvedObject {
                kind: kind.into(),
                namespace: ns.into(),
                name: name.into(),
                uid: Some("1234".into()),
                api_version: Some("kustomize.toolkit.fluxcd.io/v1".into()),
                resource_version: None,
            },
            severity: severity.into(),
            timestamp: "2026-01-01T00:00:00Z".into(),
            message: message.into(),
            reason: "ReconciliationSucceeded".into(),
            metadata: BTreeMap::from([(
                "kustomize.toolkit.fluxcd.io/revision".to_string(),
                format!("main@sha1:{}", "ab".repeat(20)),
            )]),
            reporting_controller: "kustomize-controller".into(),
            reporting_instance: None,
        }
    }

    fn filter(sources: Vec<Source>) -> Filter {
        Filter {
            namespace: "apps".into(),
            severity: "info".into(),
            sources,
            ..Default::default()
        }
    }

    fn source(kind: &str, name: &str, ns: Option<&str>) -> Source {
        Source {
            kind: kind.into(),
            name: name.into(),
            namespace: ns.map(Into::into),
            match_labels: BTreeMap::new(),
        }
    }

    #[test]
    fn sources_by_name_wildcard_namespace_and_labels() {
        let e = event("Kustomization", "web", "apps", "info", "applied");
        assert!(selects(
            &filter(vec![source("Kustomization", "web", None)]),
            &e,
            None
        ));
        assert!(selects(
            &filter(vec![source("Kustomization", "*", None)]),
            &e,
            None
        ));
        assert!(!selects(
            &filter(vec![source("Kustomization", "db", None)]),
            &e,
            None
        ));
        assert!(!selects(
            &filter(vec![source("GitRepository", "web", None)]),
            &e,
            None
        ));
        // Another namespace only when the source names it.
        let other = event("Kustomization", "web", "other", "info", "applied");
        assert!(!selects(
            &filter(vec![source("Kustomization", "*", None)]),
            &other,
            None
        ));
        assert!(selects(
            &filter(vec![source("Kustomization", "*", Some("other"))]),
            &other,
            None
        ));
        let mut labelled = source("Kustomization", "*", None);
        labelled.match_labels = BTreeMap::from([("team".to_string(), "a".to_string())]);
        let f = filter(vec![labelled]);
        assert!(needs_labels(&f, &e));
        let a = BTreeMap::from([("team".to_string(), "a".to_string())]);
        let b = BTreeMap::from([("team".to_string(), "b".to_string())]);
        assert!(selects(&f, &e, Some(&a)));
        assert!(!selects(&f, &e, Some(&b)));
        assert!(!selects(&f, &e, None));
    }

    #[test]
    fn severity_and_lists() {
        let info = event(
            "Kustomization",
            "web",
            "apps",
            "info",
            "Applied revision: main@sha1:ab",
        );
        let error = event(
            "Kustomization",
            "web",
            "apps",
            "error",
            "health check failed",
        );
        let mut f = filter(vec![source("Kustomization", "*", None)]);
        f.severity = "error".into();
        assert!(!selects(&f, &info, None));
        assert!(selects(&f, &error, None));
        f.severity = "info".into();
        f.inclusion = compile(&["^Applied".into()]).unwrap();
        assert!(selects(&f, &info, None));
        assert!(!selects(&f, &error, None));
        f.exclusion = compile(&["main@".into()]).unwrap();
        assert!(!selects(&f, &info, None));
        assert!(compile(&["(".into()]).is_err());
    }

    #[test]
    fn metadata_never_overrides_and_duplicates_key_on_revision() {
        let mut e = event("Kustomization", "web", "apps", "info", "m");
        let extra = BTreeMap::from([
            ("env".to_string(), "prod".to_string()),
            (
                "kustomize.toolkit.fluxcd.io/revision".to_string(),
                "x".to_string(),
            ),
        ]);
        let before = duplicate_key("a", &e);
        enrich(&mut e, &extra, Some("cluster one"));
        assert_eq!(e.metadata["env"], "prod");
        assert_eq!(e.metadata["summary"], "cluster one");
        assert!(e.metadata["kustomize.toolkit.fluxcd.io/revision"].starts_with("main@"));
        assert_eq!(duplicate_key("a", &e), before, "enrichment is not news");
        let mut newer = e.clone();
        newer.metadata.insert(
            "kustomize.toolkit.fluxcd.io/revision".into(),
            format!("main@sha1:{}", "cd".repeat(20)),
        );
        assert_ne!(duplicate_key("a", &newer), before);
        assert_ne!(duplicate_key("b", &e), before);
    }

    #[test]
    fn metadata_is_cleaned_as_flux_cleans_it() {
        let mut e = event("Kustomization", "web", "apps", "error", "m");
        let revision = e.metadata["kustomize.toolkit.fluxcd.io/revision"].clone();
        e.metadata.extend([
            ("kustomize.toolkit.fluxcd.io/checksum".into(), "c".into()),
            ("kustomize.toolkit.fluxcd.io/digest".into(), "d".into()),
            ("kustomize.toolkit.fluxcd.io/token".into(), "t".into()),
            (
                "source.toolkit.fluxcd.io/revision".into(),
                "other group".into(),
            ),
            ("plain".into(), "no group".into()),
        ]);
        cleanup_metadata(&mut e);
        assert_eq!(
            e.metadata,
            BTreeMap::from([
                ("revision".to_string(), revision.clone()),
                ("token".to_string(), "t".to_string()),
            ])
        );
        assert_eq!(e.revision(), Some(revision.as_str()));
        let out = render(&provider("generic", "http://h/x"), &e)
            .unwrap()
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(body["metadata"]["revision"], revision.as_str());
    }

    fn provider(type_: &str, address: &str) -> ProviderConfig {
        ProviderConfig {
            type_: type_.into(),
            address: address.into(),
            uid: "8f1c2d3e-aaaa-bbbb".into(),
            ..Default::default()
        }
    }

    #[test]
    fn generic_is_fluxs_event_json_and_hmac_signs_it() {
        let e = event("Kustomization", "web", "apps", "info", "m");
        let out = render(&provider("generic", "http://h/x"), &e)
            .unwrap()
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(body["involvedObject"]["kind"], "Kustomization");
        assert_eq!(body["reportingController"], "kustomize-controller");
        assert_eq!(
            body["metadata"]["kustomize.toolkit.fluxcd.io/revision"],
            e.metadata["kustomize.toolkit.fluxcd.io/revision"]
        );
        let mut p = provider("generic-hmac", "http://h/x");
        assert_eq!(render(&p, &e), Err(RenderError::NoToken("generic-hmac")));
        p.token = Some("k".into());
        let out = render(&p, &e).unwrap().unwrap();
        let sig = &out
            .headers
            .iter()
            .find(|(k, _)| k == "X-Signature")
            .unwrap()
            .1;
        assert_eq!(
            sig,
            &crate::notification::webhook::sign_sha256(b"k", &out.body)
        );
        assert_eq!(
            render(&provider("generic", ""), &e),
            Err(RenderError::NoAddress)
        );
    }

    #[test]
    fn chat_payloads() {
        let e = event("Kustomization", "web", "apps", "error", "boom");
        let mut p = provider("slack", "http://h/services/x");
        p.channel = Some("#ops".into());
        let out = render(&p, &e).unwrap().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(body["channel"], "#ops");
        assert_eq!(body["attachments"][0]["color"], "danger");
        assert_eq!(
            body["attachments"][0]["author_name"],
            "kustomization/web.apps"
        );
        assert_eq!(body["attachments"][0]["text"], "boom");
        let out = render(&provider("discord", "http://h/api/webhooks/1/t"), &e)
            .unwrap()
            .unwrap();
        assert_eq!(out.url, "http://h/api/webhooks/1/t/slack");
        let out = render(&provider("discord", "http://h/api/webhooks/1/t/slack"), &e)
            .unwrap()
            .unwrap();
        assert_eq!(out.url, "http://h/api/webhooks/1/t/slack");
        let out = render(&provider("msteams", "http://h/w"), &e)
            .unwrap()
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(body["attachments"][0]["content"]["body"][1]["text"], "boom");
        assert_eq!(
            render(&provider("rocket", "http://h"), &e),
            Err(RenderError::Unsupported("rocket".into()))
        );
    }

    #[test]
    fn github_commit_status() {
        let e = event("Kustomization", "web", "apps", "info", "applied");
        let mut p = provider("github", "https://github.com/org/app.git");
        assert_eq!(render(&p, &e), Err(RenderError::NoToken("github")));
        p.token = Some("t".into());
        let out = render(&p, &e).unwrap().unwrap();
        assert_eq!(
            out.url,
            format!(
                "https://api.github.com/repos/org/app/statuses/{}",
                "ab".repeat(20)
            )
        );
        let body: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(body["state"], "success");
        assert_eq!(body["context"], "kustomization/web/8f1c2d3e");
        assert_eq!(body["description"], "reconciliation succeeded");
        p.address = "http://127.0.0.1:8080/org/app".into();
        let out = render(&p, &e).unwrap().unwrap();
        assert!(
            out.url
                .starts_with("http://127.0.0.1:8080/api/v3/repos/org/app/statuses/")
        );
        let mut failed = event("Kustomization", "web", "apps", "error", "x");
        failed.reason = "HealthCheckFailed".into();
        let body: serde_json::Value =
            serde_json::from_slice(&render(&p, &failed).unwrap().unwrap().body).unwrap();
        assert_eq!(body["state"], "failure");
        let mut no_revision = e.clone();
        no_revision.metadata.clear();
        assert_eq!(render(&p, &no_revision), Ok(None));
        assert!(github_repository("https://github.com/org").is_err());
        assert!(github_repository("ssh://git@github.com/org/app").is_err());
    }
}
