//! URLs from Knative's `config-network` templates: `domain-template`
//! (`{{.Name}}.{{.Namespace}}.{{.Domain}}`) and `tag-template` (`{{.Tag}}-{{.Name}}`), rendered
//! with Go's text/template as Knative does.

use crate::gotemplate::{self, Value};

/// Knative's default `domain-template`.
pub const DEFAULT_DOMAIN_TEMPLATE: &str = "{{.Name}}.{{.Namespace}}.{{.Domain}}";
/// Knative's default `tag-template`.
pub const DEFAULT_TAG_TEMPLATE: &str = "{{.Tag}}-{{.Name}}";
/// Knative's default domain when `config-domain` names none: `svc.` + the cluster domain.
pub const DEFAULT_DOMAIN: &str = "svc.cluster.local";

/// A template that does not render.
#[derive(Debug, thiserror::Error)]
#[error("rendering {which} '{template}': {source}")]
pub struct Error {
    pub which: &'static str,
    pub template: String,
    #[source]
    pub source: gotemplate::TemplateError,
}

/// The templates and domain a cluster's Services get their hosts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    pub domain: String,
    pub domain_template: String,
    pub tag_template: String,
}

impl Default for Templates {
    fn default() -> Self {
        Self {
            domain: DEFAULT_DOMAIN.to_owned(),
            domain_template: DEFAULT_DOMAIN_TEMPLATE.to_owned(),
            tag_template: DEFAULT_TAG_TEMPLATE.to_owned(),
        }
    }
}

impl Templates {
    /// The host of Service `name` in `namespace`.
    pub fn host(&self, name: &str, namespace: &str) -> Result<String, Error> {
        let data = Value::structure(
            name,
            [
                ("Name", Value::from(name)),
                ("Namespace", Value::from(namespace)),
                ("Domain", Value::from(self.domain.as_str())),
                ("Annotations", Value::Map(Vec::new())),
                ("Labels", Value::Map(Vec::new())),
            ],
        );
        gotemplate::render(&self.domain_template, &data).map_err(|source| Error {
            which: "the domain template",
            template: self.domain_template.clone(),
            source,
        })
    }

    /// The host of `tag` of Service `name`: the tag template gives the name the domain template
    /// is rendered with.
    pub fn tag_host(&self, tag: &str, name: &str, namespace: &str) -> Result<String, Error> {
        let data = Value::structure(
            name,
            [("Tag", Value::from(tag)), ("Name", Value::from(name))],
        );
        let tagged = gotemplate::render(&self.tag_template, &data).map_err(|source| Error {
            which: "the tag template",
            template: self.tag_template.clone(),
            source,
        })?;
        self.host(&tagged, namespace)
    }
}

/// `http://` + host: Gantry's router serves plain HTTP.
pub fn url(host: &str) -> String {
    format!("http://{host}")
}

/// The in-cluster address of Service `name` (`status.address.url`).
pub fn cluster_local_url(name: &str, namespace: &str) -> String {
    format!("http://{name}.{namespace}.svc.cluster.local")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knatives_defaults() {
        let t = Templates::default();
        assert_eq!(
            t.host("hello", "team").unwrap(),
            "hello.team.svc.cluster.local"
        );
        assert_eq!(
            t.tag_host("old", "hello", "team").unwrap(),
            "old-hello.team.svc.cluster.local"
        );
        assert_eq!(url("a.b"), "http://a.b");
        assert_eq!(
            cluster_local_url("hello", "team"),
            "http://hello.team.svc.cluster.local"
        );
    }

    #[test]
    fn custom_templates_and_domain() {
        let t = Templates {
            domain: "example.com".into(),
            domain_template: "{{.Name}}-{{.Namespace}}.{{.Domain}}".into(),
            tag_template: "{{.Name}}-{{.Tag}}".into(),
        };
        assert_eq!(t.host("hello", "team").unwrap(), "hello-team.example.com");
        assert_eq!(
            t.tag_host("v2", "hello", "team").unwrap(),
            "hello-v2-team.example.com"
        );
    }

    #[test]
    fn a_broken_template_is_an_error() {
        let t = Templates {
            domain_template: "{{.Name".into(),
            ..Templates::default()
        };
        assert!(t.host("a", "b").is_err());
    }
}
