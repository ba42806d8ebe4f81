//! `spec.patches`: JSON 6902 operation lists and strategic merge patches, with targets.

use serde_json::Value;

use super::selector::{Selector, SelectorError};
use super::smp::strategic_merge;
use super::{gvk, is_builtin_group, name_of, namespace_of};
use crate::kustomize::substitute::object_id;

/// One patch, already parsed from its YAML/JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    /// A list of RFC 6902 operations, or a (strategic merge) partial object.
    pub patch: Value,
    /// The objects to patch. JSON 6902 patches need one; a strategic merge patch without one
    /// patches the object with its own kind, name (and namespace, when set).
    pub target: Option<Selector>,
}

/// The two patch languages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// RFC 6902 operations (`add`, `remove`, `replace`, `move`, `copy`, `test`).
    Json6902,
    /// A partial object merged in (see [`strategic_merge`]).
    StrategicMerge,
}

impl Patch {
    /// A list is JSON 6902, a map a strategic merge patch, as kustomize decides.
    pub fn kind(&self) -> Option<PatchKind> {
        match &self.patch {
            Value::Array(_) => Some(PatchKind::Json6902),
            Value::Object(_) => Some(PatchKind::StrategicMerge),
            _ => None,
        }
    }
}

/// Why a patch could not be applied. `index` is the position in `spec.patches`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// Neither a list of operations nor a map.
    #[error("patches[{index}]: a patch must be a list of JSON 6902 operations or a partial object")]
    NotAPatch {
        /// Position of the patch.
        index: usize,
    },
    /// JSON 6902 patches need `target`.
    #[error("patches[{index}]: a JSON 6902 patch needs a target")]
    MissingTarget {
        /// Position of the patch.
        index: usize,
    },
    /// The operations do not parse.
    #[error("patches[{index}]: invalid JSON 6902 operations: {message}")]
    InvalidOperations {
        /// Position of the patch.
        index: usize,
        /// The parse error.
        message: String,
    },
    /// An operation failed on an object (a missing path, a failed `test`).
    #[error("patches[{index}]: applying to {object} failed: {message}")]
    Apply {
        /// Position of the patch.
        index: usize,
        /// `Kind/namespace/name` of the object.
        object: String,
        /// What failed.
        message: String,
    },
    /// A strategic merge patch without target whose object is not in the build.
    #[error("patches[{index}]: no object {object} in the build to patch")]
    NoMatch {
        /// Position of the patch.
        index: usize,
        /// The identity the patch names.
        object: String,
    },
    /// An invalid target.
    #[error("patches[{index}]: {source}")]
    Selector {
        /// Position of the patch.
        index: usize,
        /// What is wrong with the target.
        #[source]
        source: SelectorError,
    },
}

/// Applies `patches` in order. Strategic merge patches may delete objects (`$patch: delete`).
pub fn apply_patches(mut objects: Vec<Value>, patches: &[Patch]) -> Result<Vec<Value>, PatchError> {
    for (index, patch) in patches.iter().enumerate() {
        objects = apply_patch(objects, patch, index)?;
    }
    Ok(objects)
}

/// Applies one patch (`index` is only for messages).
pub fn apply_patch(
    objects: Vec<Value>,
    patch: &Patch,
    index: usize,
) -> Result<Vec<Value>, PatchError> {
    let kind = patch.kind().ok_or(PatchError::NotAPatch { index })?;
    let selector = patch
        .target
        .as_ref()
        .map(|t| {
            t.compile()
                .map_err(|source| PatchError::Selector { index, source })
        })
        .transpose()?;
    match kind {
        PatchKind::Json6902 => {
            let selector = selector.ok_or(PatchError::MissingTarget { index })?;
            let ops: json_patch::Patch =
                serde_json::from_value(patch.patch.clone()).map_err(|e| {
                    PatchError::InvalidOperations {
                        index,
                        message: e.to_string(),
                    }
                })?;
            let mut objects = objects;
            for obj in objects.iter_mut().filter(|o| selector.matches(o)) {
                // json_patch applies all operations or none.
                json_patch::patch(obj, &ops).map_err(|e| PatchError::Apply {
                    index,
                    object: object_id(obj),
                    message: e.to_string(),
                })?;
            }
            Ok(objects)
        }
        PatchKind::StrategicMerge => {
            let mut body = patch.patch.clone();
            let matches: Box<dyn Fn(&Value) -> bool> = match selector {
                Some(selector) => {
                    // The target decides the objects; the patch's own identity must not rename them.
                    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.remove("name");
                        meta.remove("namespace");
                    }
                    if let Some(map) = body.as_object_mut() {
                        map.remove("apiVersion");
                        map.remove("kind");
                    }
                    Box::new(move |o| selector.matches(o))
                }
                None => {
                    let (group, _, kind) = gvk(&patch.patch);
                    let (group, kind) = (group.to_string(), kind.to_string());
                    let name = name_of(&patch.patch).to_string();
                    let namespace = namespace_of(&patch.patch).to_string();
                    let wanted = object_id(&patch.patch);
                    let hit = move |o: &Value| {
                        let (g, _, k) = gvk(o);
                        g == group
                            && k == kind
                            && name_of(o) == name
                            && (namespace.is_empty() || namespace_of(o) == namespace)
                    };
                    if !objects.iter().any(&hit) {
                        return Err(PatchError::NoMatch {
                            index,
                            object: wanted,
                        });
                    }
                    Box::new(hit)
                }
            };
            let mut out = Vec::with_capacity(objects.len());
            for mut obj in objects {
                if matches(&obj) {
                    let keyed = is_builtin_group(gvk(&obj).0);
                    if !strategic_merge(&mut obj, &body, keyed) {
                        continue;
                    }
                }
                out.push(obj);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn objects() -> Vec<Value> {
        vec![
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {"replicas": 1, "template": {"spec": {"containers": [
                    {"name": "app", "image": "web:1"}, {"name": "proxy", "image": "envoy:1"}]}}}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "api", "labels": {"app": "api"}},
                "spec": {"replicas": 1}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
                "data": {"a": "1", "b": "2"}}),
        ]
    }

    fn target(kind: Option<&str>, name: Option<&str>, labels: Option<&str>) -> Option<Selector> {
        Some(Selector {
            kind: kind.map(Into::into),
            name: name.map(Into::into),
            label_selector: labels.map(Into::into),
            ..Default::default()
        })
    }

    #[test]
    fn json6902_operations() {
        // (operations, target, pointer checked on the web Deployment, expected value)
        let cases = [
            (
                json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]),
                "/spec/replicas",
                json!(3),
            ),
            (
                json!([{"op": "add", "path": "/metadata/labels/tier", "value": "fe"}]),
                "/metadata/labels/tier",
                json!("fe"),
            ),
            (
                json!([{"op": "remove", "path": "/metadata/labels/app"}]),
                "/metadata/labels",
                json!({}),
            ),
            (
                json!([{"op": "copy", "from": "/metadata/labels/app", "path": "/metadata/labels/copy"}]),
                "/metadata/labels/copy",
                json!("web"),
            ),
            (
                json!([{"op": "move", "from": "/metadata/labels/app", "path": "/metadata/labels/moved"}]),
                "/metadata/labels",
                json!({"moved": "web"}),
            ),
            (
                json!([{"op": "test", "path": "/spec/replicas", "value": 1},
                    {"op": "replace", "path": "/spec/replicas", "value": 5}]),
                "/spec/replicas",
                json!(5),
            ),
            (
                json!([{"op": "add", "path": "/spec/template/spec/containers/-", "value": {"name": "x", "image": "x"}}]),
                "/spec/template/spec/containers/2/name",
                json!("x"),
            ),
        ];
        for (ops, pointer, want) in cases {
            let patch = Patch {
                patch: ops.clone(),
                target: target(Some("Deployment"), Some("web"), None),
            };
            let out = apply_patches(objects(), &[patch]).unwrap();
            assert_eq!(out[0].pointer(pointer), Some(&want), "{ops}");
            assert_eq!(out[1], objects()[1], "api untouched by {ops}");
        }
    }

    #[test]
    fn json6902_failures() {
        let failing_test = Patch {
            patch: json!([{"op": "test", "path": "/spec/replicas", "value": 9}]),
            target: target(Some("Deployment"), None, None),
        };
        let err = apply_patches(objects(), &[failing_test]).unwrap_err();
        assert!(
            matches!(&err, PatchError::Apply { index: 0, object, .. } if object == "Deployment/web"),
            "{err}"
        );

        let missing_path = Patch {
            patch: json!([{"op": "remove", "path": "/nope"}]),
            target: target(Some("ConfigMap"), None, None),
        };
        assert!(matches!(
            apply_patches(objects(), &[missing_path]),
            Err(PatchError::Apply { .. })
        ));

        let no_target = Patch {
            patch: json!([]),
            target: None,
        };
        assert_eq!(
            apply_patches(objects(), &[no_target]),
            Err(PatchError::MissingTarget { index: 0 })
        );

        let bad_op = Patch {
            patch: json!([{"op": "frobnicate", "path": "/"}]),
            target: target(None, None, None),
        };
        assert!(matches!(
            apply_patches(objects(), &[bad_op]),
            Err(PatchError::InvalidOperations { .. })
        ));

        let scalar = Patch {
            patch: json!("x"),
            target: None,
        };
        assert_eq!(
            apply_patches(objects(), &[scalar]),
            Err(PatchError::NotAPatch { index: 0 })
        );
    }

    #[test]
    fn targets_select_by_label_and_name_regex() {
        let by_label = Patch {
            patch: json!([{"op": "replace", "path": "/spec/replicas", "value": 2}]),
            target: target(Some("Deployment"), None, Some("app in (api)")),
        };
        let out = apply_patches(objects(), &[by_label]).unwrap();
        assert_eq!(
            (
                out[0]["spec"]["replicas"].clone(),
                out[1]["spec"]["replicas"].clone()
            ),
            (json!(1), json!(2))
        );

        let by_regex = Patch {
            patch: json!([{"op": "replace", "path": "/spec/replicas", "value": 4}]),
            target: target(None, Some("web|api"), None),
        };
        let out = apply_patches(objects(), &[by_regex]).unwrap();
        assert_eq!(
            (
                out[0]["spec"]["replicas"].clone(),
                out[1]["spec"]["replicas"].clone()
            ),
            (json!(4), json!(4))
        );
    }

    #[test]
    fn strategic_merge_by_identity_and_by_target() {
        let by_identity = Patch {
            patch: json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "web:2"}]}}}}),
            target: None,
        };
        let out = apply_patches(objects(), &[by_identity]).unwrap();
        let containers = &out[0]["spec"]["template"]["spec"]["containers"];
        assert_eq!(
            containers,
            &json!([{"name": "app", "image": "web:2"}, {"name": "proxy", "image": "envoy:1"}])
        );

        let by_target = Patch {
            patch: json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ignored",
                "annotations": {"a": "b"}}}),
            target: target(Some("Deployment"), None, None),
        };
        let out = apply_patches(objects(), &[by_target]).unwrap();
        assert_eq!(out[0]["metadata"]["name"], "web");
        assert_eq!(out[1]["metadata"]["name"], "api");
        assert_eq!(out[1]["metadata"]["annotations"], json!({"a": "b"}));
        assert_eq!(out[2]["metadata"].get("annotations"), None);
    }

    #[test]
    fn strategic_merge_delete_and_missing_object() {
        let delete = Patch {
            patch: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "$patch": "delete"}),
            target: None,
        };
        let out = apply_patches(objects(), &[delete]).unwrap();
        assert_eq!(out.len(), 2);

        let missing = Patch {
            patch: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "nope"}}),
            target: None,
        };
        let err = apply_patches(objects(), &[missing]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "patches[0]: no object ConfigMap/nope in the build to patch"
        );
    }
}
