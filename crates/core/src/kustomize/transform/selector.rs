//! Patch targets: kustomize's selector (group, version, kind, name, namespace as anchored regular
//! expressions; label and annotation selectors in Kubernetes' selector syntax).

use std::collections::BTreeSet;

use regex::Regex;
use serde_json::Value;

use super::{gvk, is_cluster_scoped, name_of, namespace_of};

/// An invalid selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A field is not a valid regular expression.
    #[error("invalid {field} pattern {pattern:?} in patch target: {message}")]
    Regex {
        /// `group`, `version`, `kind`, `name` or `namespace`.
        field: &'static str,
        /// The pattern.
        pattern: String,
        /// The regex error.
        message: String,
    },
    /// A label or annotation selector that does not parse.
    #[error("invalid {field} {expression:?} in patch target: {message}")]
    Expression {
        /// `labelSelector` or `annotationSelector`.
        field: &'static str,
        /// The expression.
        expression: String,
        /// What is wrong.
        message: String,
    },
}

/// Which objects a patch applies to; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// API group (anchored regular expression, like every identity field).
    pub group: Option<String>,
    /// API version.
    pub version: Option<String>,
    /// Kind.
    pub kind: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// Namespace.
    pub namespace: Option<String>,
    /// Label selector, e.g. `app=web,tier in (a,b),!legacy`.
    pub label_selector: Option<String>,
    /// Annotation selector, same syntax.
    pub annotation_selector: Option<String>,
}

/// A selector compiled for matching.
#[derive(Debug, Clone)]
pub struct CompiledSelector {
    fields: Vec<(Field, Regex)>,
    labels: Option<LabelSelector>,
    annotations: Option<LabelSelector>,
}

#[derive(Debug, Clone, Copy)]
enum Field {
    Group,
    Version,
    Kind,
    Name,
    Namespace,
}

impl Selector {
    /// Checks the patterns and expressions once, for matching many objects.
    pub fn compile(&self) -> Result<CompiledSelector, SelectorError> {
        let mut fields = Vec::new();
        for (field, label, pattern) in [
            (Field::Group, "group", &self.group),
            (Field::Version, "version", &self.version),
            (Field::Kind, "kind", &self.kind),
            (Field::Name, "name", &self.name),
            (Field::Namespace, "namespace", &self.namespace),
        ] {
            // Empty fields match everything, as in kustomize.
            let Some(pattern) = pattern.as_deref().filter(|p| !p.is_empty()) else {
                continue;
            };
            let regex =
                Regex::new(&format!("^(?:{pattern})$")).map_err(|e| SelectorError::Regex {
                    field: label,
                    pattern: pattern.to_string(),
                    message: e.to_string(),
                })?;
            fields.push((field, regex));
        }
        let parse = |field: &'static str, expr: &Option<String>| {
            expr.as_deref()
                .filter(|e| !e.trim().is_empty())
                .map(|e| {
                    LabelSelector::parse(e).map_err(|message| SelectorError::Expression {
                        field,
                        expression: e.to_string(),
                        message,
                    })
                })
                .transpose()
        };
        Ok(CompiledSelector {
            fields,
            labels: parse("labelSelector", &self.label_selector)?,
            annotations: parse("annotationSelector", &self.annotation_selector)?,
        })
    }
}

impl CompiledSelector {
    /// Whether `object` is selected.
    pub fn matches(&self, object: &Value) -> bool {
        let (group, version, kind) = gvk(object);
        // Namespaced objects without a namespace are in `default`, as kustomize sees them.
        let namespace = match namespace_of(object) {
            "" if !is_cluster_scoped(group, kind) => "default",
            ns => ns,
        };
        let all_fields = self.fields.iter().all(|(field, re)| {
            re.is_match(match field {
                Field::Group => group,
                Field::Version => version,
                Field::Kind => kind,
                Field::Name => name_of(object),
                Field::Namespace => namespace,
            })
        });
        let meta = |key: &str| object.pointer(&format!("/metadata/{key}"));
        all_fields
            && self
                .labels
                .as_ref()
                .is_none_or(|s| s.matches(meta("labels")))
            && self
                .annotations
                .as_ref()
                .is_none_or(|s| s.matches(meta("annotations")))
    }
}

/// A parsed Kubernetes label selector expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Gt(String, i64),
    Lt(String, i64),
}

impl LabelSelector {
    /// Parses `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x,y)`, `a>1`, `a<1`,
    /// comma-separated.
    pub fn parse(expr: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in expr.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&expr[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&expr[start..]);
        let reqs = parts
            .into_iter()
            .map(str::trim)
            .map(parse_requirement)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(reqs))
    }

    /// Whether a label (or annotation) map satisfies every requirement.
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::In(k, vs) => get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Gt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Requirement::Lt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }
}

fn valid_key(k: &str) -> Result<String, String> {
    let ok = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(k.to_string())
    } else {
        Err(format!("invalid key {k:?}"))
    }
}

fn parse_set(rest: &str) -> Result<BTreeSet<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised list, found {rest:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn parse_requirement(req: &str) -> Result<Requirement, String> {
    if req.is_empty() {
        return Err("empty requirement".into());
    }
    if let Some(key) = req.strip_prefix('!') {
        return Ok(Requirement::NotExists(valid_key(key.trim())?));
    }
    for (op, negate) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((k, v)) = req.split_once(op) {
            let set = BTreeSet::from([v.trim().to_string()]);
            let key = valid_key(k.trim())?;
            return Ok(if negate {
                Requirement::NotIn(key, set)
            } else {
                Requirement::In(key, set)
            });
        }
    }
    for (op, gt) in [(">", true), ("<", false)] {
        if let Some((k, v)) = req.split_once(op) {
            let n = v
                .trim()
                .parse::<i64>()
                .map_err(|_| format!("{v:?} is not an integer"))?;
            let key = valid_key(k.trim())?;
            return Ok(if gt {
                Requirement::Gt(key, n)
            } else {
                Requirement::Lt(key, n)
            });
        }
    }
    let mut words = req.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or("");
    let rest = words.next().unwrap_or("").trim();
    if rest.is_empty() {
        return Ok(Requirement::Exists(valid_key(key)?));
    }
    if let Some(set) = rest.strip_prefix("notin") {
        return Ok(Requirement::NotIn(valid_key(key)?, parse_set(set)?));
    }
    if let Some(set) = rest.strip_prefix("in") {
        return Ok(Requirement::In(valid_key(key)?, parse_set(set)?));
    }
    Err(format!("unexpected {rest:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web-frontend", "namespace": "prod",
                "labels": {"app": "web", "tier": "frontend", "rank": "5"},
                "annotations": {"team": "blue"}}})
    }

    fn sel(f: impl FnOnce(&mut Selector)) -> Selector {
        let mut s = Selector::default();
        f(&mut s);
        s
    }

    #[test]
    fn matching() {
        // (selector, matches the deployment)
        let cases = [
            (Selector::default(), true),
            (sel(|s| s.kind = Some("Deployment".into())), true),
            (sel(|s| s.kind = Some("Deploy".into())), false),
            (sel(|s| s.group = Some("apps".into())), true),
            (sel(|s| s.group = Some("".into())), true),
            (sel(|s| s.version = Some("v1".into())), true),
            (sel(|s| s.version = Some("v1beta1".into())), false),
            (sel(|s| s.name = Some("web-.*".into())), true),
            (sel(|s| s.name = Some("web".into())), false),
            (sel(|s| s.name = Some("frontend".into())), false),
            (sel(|s| s.namespace = Some("prod|staging".into())), true),
            (sel(|s| s.namespace = Some("dev".into())), false),
            (sel(|s| s.label_selector = Some("app=web".into())), true),
            (
                sel(|s| s.label_selector = Some("app==web,tier!=backend".into())),
                true,
            ),
            (
                sel(|s| s.label_selector = Some("app in (web, api)".into())),
                true,
            ),
            (
                sel(|s| s.label_selector = Some("app notin (web)".into())),
                false,
            ),
            (sel(|s| s.label_selector = Some("tier".into())), true),
            (sel(|s| s.label_selector = Some("!tier".into())), false),
            (sel(|s| s.label_selector = Some("!legacy".into())), true),
            (sel(|s| s.label_selector = Some("rank>3".into())), true),
            (sel(|s| s.label_selector = Some("rank<3".into())), false),
            (
                sel(|s| s.annotation_selector = Some("team=blue".into())),
                true,
            ),
            (
                sel(|s| s.annotation_selector = Some("team=red".into())),
                false,
            ),
        ];
        for (selector, want) in cases {
            let compiled = selector.compile().unwrap();
            assert_eq!(compiled.matches(&deployment()), want, "{selector:?}");
        }
    }

    #[test]
    fn default_namespace_and_cluster_scope() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}});
        let default = sel(|s| s.namespace = Some("default".into()))
            .compile()
            .unwrap();
        assert!(default.matches(&cm));
        assert!(!default.matches(&ns));
    }

    #[test]
    fn invalid_selectors() {
        assert!(matches!(
            sel(|s| s.name = Some("(".into())).compile(),
            Err(SelectorError::Regex { field: "name", .. })
        ));
        for bad in ["app in web", "a b c", "rank>x", "=x", ","] {
            assert!(
                matches!(
                    sel(|s| s.label_selector = Some(bad.into())).compile(),
                    Err(SelectorError::Expression { .. })
                ),
                "{bad}"
            );
        }
    }
}
