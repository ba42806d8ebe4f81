//! Objects named by kind (a Receiver's `resources`, an event's involved object): where they live
//! in the API and how to ask for a reconcile of them.

use std::collections::BTreeMap;

use gantry_api::meta::RECONCILE_REQUEST_ANNOTATION;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;

/// The Flux API version of a kind, for references that leave `apiVersion` unset.
pub fn default_api_version(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "GitRepository" | "OCIRepository" | "Bucket" | "HelmChart" | "HelmRepository"
        | "ExternalArtifact" => "source.toolkit.fluxcd.io/v1",
        "Kustomization" => "kustomize.toolkit.fluxcd.io/v1",
        "HelmRelease" => "helm.toolkit.fluxcd.io/v2",
        "ImageRepository" | "ImagePolicy" | "ImageUpdateAutomation" => "image.toolkit.fluxcd.io/v1",
        "ArtifactGenerator" => "source.extensions.fluxcd.io/v1beta1",
        "Alert" | "Provider" => "notification.toolkit.fluxcd.io/v1beta3",
        "Receiver" => "notification.toolkit.fluxcd.io/v1",
        _ => return None,
    })
}

/// The API resource of `kind` at `api_version` (or the kind's Flux version).
pub fn api_resource(api_version: Option<&str>, kind: &str) -> Option<ApiResource> {
    let api_version = api_version
        .filter(|v| !v.is_empty())
        .or_else(|| default_api_version(kind))?;
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let lower = kind.to_ascii_lowercase();
    // Every Flux kind pluralises regularly (gitrepositories, imagepolicies, kustomizations).
    let plural = match lower.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{lower}s"),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Some(ApiResource::from_gvk_with_plural(&gvk, &plural))
}

/// Why an object could not be asked to reconcile.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("unknown kind {0}: set apiVersion")]
    UnknownKind(String),
    #[error("{kind} {namespace}/{name}: {source}")]
    Api {
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Annotates `namespace/name` (or, with name `*`, every object of the kind matching `labels`)
/// with `reconcile.fluxcd.io/requestedAt` = `token`. Returns the names annotated.
pub async fn request_reconcile(
    client: &kube::Client,
    api_version: Option<&str>,
    kind: &str,
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    token: &str,
) -> Result<Vec<String>, RequestError> {
    let resource =
        api_resource(api_version, kind).ok_or_else(|| RequestError::UnknownKind(kind.into()))?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let api_err = |name: &str, source| RequestError::Api {
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
        source,
    };
    let names = if name == "*" {
        let selector = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let list = api
            .list_metadata(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| api_err("*", e))?;
        list.items
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .collect()
    } else {
        vec![name.to_string()]
    };
    let patch = serde_json::json!({
        "metadata": { "annotations": { RECONCILE_REQUEST_ANNOTATION: token } }
    });
    for name in &names {
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_err(name, e))?;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flux_kinds_resolve_to_their_resources() {
        let r = api_resource(None, "GitRepository").unwrap();
        assert_eq!(
            (r.group.as_str(), r.version.as_str()),
            ("source.toolkit.fluxcd.io", "v1")
        );
        assert_eq!(r.plural, "gitrepositories");
        assert_eq!(
            api_resource(None, "ImagePolicy").unwrap().plural,
            "imagepolicies"
        );
        assert_eq!(
            api_resource(None, "ImageRepository").unwrap().plural,
            "imagerepositories"
        );
        assert_eq!(
            api_resource(None, "Kustomization").unwrap().plural,
            "kustomizations"
        );
        let r = api_resource(Some("example.com/v2"), "Widget").unwrap();
        assert_eq!(
            (r.group.as_str(), r.plural.as_str()),
            ("example.com", "widgets")
        );
        assert!(api_resource(None, "Widget").is_none());
    }
}
