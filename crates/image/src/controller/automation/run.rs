//! One automation run: check out the source, update the setter markers with the selected
//! policies' images, commit and push (a lost race redone on the new tip).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use gantry_api::image::v1::{
    DEFAULT_COMMIT_MESSAGE, GIT_OPERATION_FAILED_REASON, INVALID_POLICY_SELECTOR_REASON,
    INVALID_SOURCE_CONFIG_REASON, ImagePolicy, ImageRef, ImageUpdateAutomation,
};
use gantry_api::meta::INVALID_SPEC_REASON;
use gantry_api::source::v1::GitRepository;
use gantry_core::gotemplate;
use gantry_core::image::setters::{self, Change, Policies, SetterError};
use gantry_source::git::push::{CommitPlan, PushOutcome, PushRequest, Pushed, commit_and_push};
use gantry_source::git::{Credentials, Reference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::template::{TemplateFailure, check_template, template_data};
use super::{Error, ImageUpdateAutomations};
use crate::controller::secrets::secret_data;

/// What one run did.
pub(super) struct Report {
    pub(super) source_url: String,
    pub(super) policies: BTreeMap<String, ImageRef>,
    pub(super) source_revision: String,
    pub(super) pushed: Option<Pushed>,
    pub(super) commit_message: String,
    pub(super) failed_files: Vec<String>,
}

impl ImageUpdateAutomations {
    pub(super) async fn run(
        &self,
        obj: &ImageUpdateAutomation,
        client: &Client,
        namespace: &str,
    ) -> Result<Report, Error> {
        let invalid = |reason, message: String| Error::InvalidSpec { reason, message };
        if obj.spec.source_ref.kind != "GitRepository" {
            return Err(invalid(
                INVALID_SOURCE_CONFIG_REASON,
                format!(
                    "source kind '{}' not supported: invalid source configuration",
                    obj.spec.source_ref.kind
                ),
            ));
        }
        let Some(git) = obj.spec.git.clone() else {
            return Err(invalid(
            INVALID_SOURCE_CONFIG_REASON,
            "source kind 'GitRepository' necessitates field .spec.git: invalid source configuration"
                .into(),
        ));
        };
        let update_path = obj.update_path().unwrap_or("").to_owned();
        let relative = safe_relative(&update_path).ok_or_else(|| {
            invalid(
                INVALID_SPEC_REASON,
                format!("spec.update.path '{update_path}' leaves the repository"),
            )
        })?;
        let template = git
            .commit
            .message_template
            .clone()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| DEFAULT_COMMIT_MESSAGE.to_owned());
        check_template(&template)?;

        let source_ns = obj.source_namespace().unwrap_or(namespace).to_owned();
        let source_name = obj.spec.source_ref.name.clone();
        let repos: Api<GitRepository> = Api::namespaced(client.clone(), &source_ns);
        let repo = repos
            .get_opt(&source_name)
            .await
            .map_err(|e| {
                Error::Source(format!(
                    "failed to get GitRepository '{source_ns}/{source_name}': {e}"
                ))
            })?
            .ok_or_else(|| {
                Error::Source(format!(
                    "failed to get GitRepository '{source_ns}/{source_name}': not found"
                ))
            })?;
        let credentials = match &repo.spec.secret_ref {
            Some(r) => Credentials::from_secret_data(
                &secret_data(client, &source_ns, &r.name)
                    .await
                    .map_err(Error::Source)?,
            ),
            None => Credentials::default(),
        };
        let proxy = match &repo.spec.proxy_secret_ref {
            Some(r) => Some(
                gantry_source::git::auth::proxy_url(
                    &secret_data(client, &source_ns, &r.name)
                        .await
                        .map_err(Error::Source)?,
                )
                .map_err(Error::Source)?,
            ),
            None => None,
        };
        let policies = select_policies(client, obj, namespace).await?;

        let checkout_ref = git
            .checkout
            .as_ref()
            .map(|c| c.reference.clone())
            .or_else(|| repo.spec.r#ref.clone());
        let mut req = PushRequest::new(
            repo.spec.url.clone(),
            Reference::from_spec(checkout_ref.as_ref()),
            credentials,
        );
        req.push_branch = git.push.as_ref().and_then(|p| p.branch.clone());
        req.refspec = git.push.as_ref().and_then(|p| p.refspec.clone());
        req.push_options = git
            .push
            .as_ref()
            .map(|p| p.options.clone())
            .unwrap_or_default();
        req.proxy = proxy;
        req.timeout =
            gantry_api::meta::parse_duration(repo.timeout()).unwrap_or(Duration::from_secs(60));

        let setter_policies: Policies = policies
            .iter()
            .map(|(key, r)| {
                (
                    key.clone(),
                    setters::ImageRef {
                        name: r.name.clone(),
                        tag: r.tag.clone(),
                        digest: r.digest.clone().filter(|d| !d.is_empty()),
                    },
                )
            })
            .collect();
        let author_name = git.commit.author.name.clone().unwrap_or_default();
        let author_email = git.commit.author.email.clone();
        let values = git.commit.message_template_values.clone();
        let automation = (namespace.to_owned(), obj.name_any());
        // Under a folder of the object's own, which its cleanup removes with whatever a crash left.
        let parent = self.workdir_of(namespace, &obj.name_any());
        let workdir = std::fs::create_dir_all(&parent)
            .and_then(|()| {
                tempfile::Builder::new()
                    .prefix("gantry-automation-")
                    .tempdir_in(&parent)
            })
            .map_err(|e| Error::Git {
                reason: GIT_OPERATION_FAILED_REASON,
                message: format!("creating a work tree in {}: {e}", parent.display()),
            })?;

        let outcome = tokio::task::spawn_blocking(move || {
            let mut failed_files = Vec::new();
            let mut message = String::new();
            let result = commit_and_push(&req, workdir.path(), |tree: &Path| {
                failed_files.clear();
                let root = tree.join(&relative);
                let reports = match setters::update_path(&root, &setter_policies, true) {
                    Ok(r) => r,
                    Err(e) => {
                        return Err(TemplateFailure(format!(
                            "spec.update.path '{}': {e}",
                            relative.display()
                        )));
                    }
                };
                let mut changes: Vec<Change> = Vec::new();
                for report in reports {
                    match report.outcome {
                        Ok(updated) => changes.extend(updated.changes),
                        Err(e) => failed_files.push(describe(&e)),
                    }
                }
                if changes.is_empty() {
                    return Ok(None);
                }
                let data = template_data(&automation, &changes, &values);
                message = gotemplate::render(&template, &data).map_err(|e| {
                    TemplateFailure(format!("failed to run template from spec: {e}"))
                })?;
                Ok(Some(CommitPlan {
                    message: message.clone(),
                    author_name: author_name.clone(),
                    author_email: author_email.clone(),
                }))
            });
            drop(workdir);
            (result, failed_files, message)
        })
        .await
        .map_err(|e| Error::Git {
            reason: GIT_OPERATION_FAILED_REASON,
            message: format!("the automation run panicked: {e}"),
        })?;
        let (result, failed_files, commit_message) = outcome;
        let outcome = result.map_err(|e| match e {
            gantry_source::git::push::PushError::Edit(t) => Error::InvalidSpec {
                reason: INVALID_SPEC_REASON,
                message: t.0,
            },
            other => Error::Git {
                reason: other.reason(),
                message: other.to_string(),
            },
        })?;
        let (pushed, source_revision) = match outcome {
            PushOutcome::NothingToCommit { revision } => (None, revision),
            PushOutcome::Pushed(p) => {
                let rev = p.checkout_revision.clone();
                (Some(p), rev)
            }
        };
        Ok(Report {
            source_url: repo.spec.url.clone(),
            policies: policies
                .into_iter()
                .map(|(k, v)| {
                    (
                        k.split_once(':').map_or(k.clone(), |(_, n)| n.to_owned()),
                        v,
                    )
                })
                .collect(),
            source_revision,
            pushed,
            commit_message,
            failed_files,
        })
    }
}

fn describe(e: &SetterError) -> String {
    e.to_string()
}

// `path` as a relative path that stays inside the repository, `None` if it would leave it.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

// The automation's policies that have chosen an image, by `<namespace>:<name>`.
async fn select_policies(
    client: &Client,
    obj: &ImageUpdateAutomation,
    namespace: &str,
) -> Result<BTreeMap<String, ImageRef>, Error> {
    let mut params = ListParams::default();
    if let Some(selector) = &obj.spec.policy_selector {
        let expr = selector_string(selector).map_err(|message| Error::InvalidSpec {
            reason: INVALID_POLICY_SELECTOR_REASON,
            message,
        })?;
        if !expr.is_empty() {
            params = params.labels(&expr);
        }
    }
    let api: Api<ImagePolicy> = Api::namespaced(client.clone(), namespace);
    let list = api.list(&params).await.map_err(Error::Policies)?;
    Ok(list
        .into_iter()
        .filter_map(|p| {
            let latest = p.status.as_ref()?.latest_ref.clone()?;
            Some((format!("{namespace}:{}", p.name_any()), latest))
        })
        .collect())
}

/// A label selector in the API's query syntax (`a=b,c in (d,e),!f`).
pub fn selector_string(selector: &LabelSelector) -> Result<String, String> {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => {
                return Err(format!(
                    "invalid policySelector: operator '{other}' is not one of In, NotIn, Exists, DoesNotExist"
                ));
            }
        });
    }
    Ok(parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn update_paths_stay_in_the_repository() {
        assert_eq!(
            safe_relative("./clusters/staging"),
            Some(PathBuf::from("clusters/staging"))
        );
        assert_eq!(safe_relative(""), Some(PathBuf::new()));
        assert_eq!(safe_relative("a/../b"), Some(PathBuf::from("b")));
        assert_eq!(safe_relative("../outside"), None);
        assert_eq!(safe_relative("a/../../outside"), None);
    }

    #[test]
    fn selectors_in_query_syntax() {
        let selector = LabelSelector {
            match_labels: Some(BTreeMap::from([("env".into(), "staging".into())])),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["web".into(), "api".into()]),
                },
                LabelSelectorRequirement {
                    key: "legacy".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert_eq!(
            selector_string(&selector).unwrap(),
            "env=staging,tier in (web,api),!legacy"
        );
        let bad = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "x".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(selector_string(&bad).unwrap_err().contains("Near"));
    }
}
