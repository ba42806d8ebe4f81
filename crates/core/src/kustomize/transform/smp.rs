//! Strategic merge patches without the OpenAPI schema: JSON merge semantics, plus merging by key
//! for the well-known Kubernetes lists, plus the `$patch` directives.
//!
//! | list | merge key |
//! | --- | --- |
//! | `containers`, `initContainers`, `ephemeralContainers`, `env`, `volumes`, `imagePullSecrets` | `name` |
//! | `volumeMounts` | `mountPath` |
//! | `volumeDevices` | `devicePath` |
//! | `ports` | `containerPort` in containers, `port` elsewhere (Services) |
//! | `hostAliases` | `ip` |
//! | `conditions` | `type` |
//!
//! Every other list (e.g. `tolerations`, `args`, `envFrom`) is replaced, as the Kubernetes schema
//! says. `$patch: delete` removes a map or a list element, `$patch: replace` replaces a map or (as
//! a list element) the whole list. `$setElementOrder`, `$retainKeys` and
//! `$deleteFromPrimitiveList` are dropped.

use serde_json::{Map, Value};

/// Applies `patch` to `target`. `keyed_lists` turns on the merge keys above; kustomize uses them
/// only for built-in kinds, whose schemas it knows, and plain JSON merge for custom resources.
/// Returns `false` when the patch deletes the whole object (`$patch: delete` at its top).
pub fn strategic_merge(target: &mut Value, patch: &Value, keyed_lists: bool) -> bool {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => merge_map(t, p, keyed_lists),
        (t, p) => {
            *t = clean(p);
            true
        }
    }
}

fn directive(map: &Map<String, Value>) -> Option<&str> {
    map.get("$patch").and_then(Value::as_str)
}

fn is_directive_key(key: &str) -> bool {
    key == "$patch"
        || key == "$retainKeys"
        || key.starts_with("$setElementOrder/")
        || key.starts_with("$deleteFromPrimitiveList/")
}

/// A patch value as a plain value: directives removed, deleted elements dropped.
fn clean(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !is_directive_key(k))
                .map(|(k, v)| (k.clone(), clean(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|i| {
                    !matches!(
                        i.as_object().and_then(directive),
                        Some("delete" | "replace")
                    )
                })
                .map(clean)
                .collect(),
        ),
        v => v.clone(),
    }
}

fn merge_map(target: &mut Map<String, Value>, patch: &Map<String, Value>, keyed: bool) -> bool {
    match directive(patch) {
        Some("delete") => return false,
        Some("replace") => {
            if let Value::Object(replaced) = clean(&Value::Object(patch.clone())) {
                *target = replaced;
            }
            return true;
        }
        _ => {}
    }
    for (key, pv) in patch {
        if is_directive_key(key) {
            continue;
        }
        if pv.is_null() {
            target.remove(key);
            continue;
        }
        let merge_key = if keyed {
            merge_key_for(key, pv, target.get(key))
        } else {
            None
        };
        match (target.get_mut(key), pv) {
            (Some(Value::Object(tv)), Value::Object(pm)) => {
                if !merge_map(tv, pm, keyed) {
                    target.remove(key);
                }
            }
            (Some(Value::Array(ta)), Value::Array(pa)) if merge_key.is_some() => {
                merge_list(ta, pa, merge_key.unwrap_or_default(), keyed);
            }
            (_, Value::Object(pm)) if directive(pm) == Some("delete") => {
                target.remove(key);
            }
            (_, pv) => {
                target.insert(key.clone(), clean(pv));
            }
        }
    }
    true
}

/// The merge key of list `field`, judged from the elements present.
fn merge_key_for(field: &str, patch: &Value, target: Option<&Value>) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "conditions" => "type",
        "ports" => {
            let has = |v: Option<&Value>| {
                v.and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|e| e.get("containerPort").is_some()))
            };
            if has(Some(patch)) || has(target) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

fn merge_list(target: &mut Vec<Value>, patch: &[Value], key: &str, keyed: bool) {
    if patch
        .iter()
        .any(|e| e.as_object().and_then(directive) == Some("replace"))
    {
        *target = patch
            .iter()
            .filter(|e| e.as_object().and_then(directive) != Some("replace"))
            .map(clean)
            .collect();
        return;
    }
    for element in patch {
        let Some(pm) = element.as_object() else {
            if !target.contains(element) {
                target.push(element.clone());
            }
            continue;
        };
        let Some(kv) = pm.get(key) else {
            // Kubernetes rejects elements without the merge key; appending them unless already
            // present keeps patches idempotent.
            let element = clean(element);
            if !target.contains(&element) {
                target.push(element);
            }
            continue;
        };
        let found = target.iter().position(|t| t.get(key) == Some(kv));
        match (found, directive(pm)) {
            (Some(i), Some("delete")) => {
                target.remove(i);
            }
            (None, Some("delete")) => {}
            (Some(i), _) => {
                if let Value::Object(tm) = &mut target[i]
                    && !merge_map(tm, pm, keyed)
                {
                    target.remove(i);
                }
            }
            (None, _) => target.push(clean(element)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn merged(target: Value, patch: Value) -> Value {
        let mut t = target;
        assert!(strategic_merge(&mut t, &patch, true));
        t
    }

    #[test]
    fn table() {
        // (name, target, patch, result)
        let cases = [
            (
                "maps merge",
                json!({"a": {"b": 1, "c": 2}}),
                json!({"a": {"c": 3, "d": 4}}),
                json!({"a": {"b": 1, "c": 3, "d": 4}}),
            ),
            (
                "null deletes",
                json!({"a": 1, "b": 2}),
                json!({"b": null}),
                json!({"a": 1}),
            ),
            (
                "scalars replace",
                json!({"a": [1, 2]}),
                json!({"a": "x"}),
                json!({"a": "x"}),
            ),
            (
                "containers merge by name",
                json!({"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y"}]}),
                json!({"containers": [{"name": "a", "image": "x:2"}, {"name": "c", "image": "z"}]}),
                json!({"containers": [{"name": "a", "image": "x:2"}, {"name": "b", "image": "y"}, {"name": "c", "image": "z"}]}),
            ),
            (
                "env by name",
                json!({"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}),
                json!({"env": [{"name": "B", "value": "3"}]}),
                json!({"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}]}),
            ),
            (
                "container ports by containerPort",
                json!({"ports": [{"containerPort": 80, "name": "http"}]}),
                json!({"ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 443}]}),
                json!({"ports": [{"containerPort": 80, "name": "http", "protocol": "TCP"}, {"containerPort": 443}]}),
            ),
            (
                "service ports by port",
                json!({"ports": [{"port": 80, "targetPort": 8080}]}),
                json!({"ports": [{"port": 80, "targetPort": 9090}]}),
                json!({"ports": [{"port": 80, "targetPort": 9090}]}),
            ),
            (
                "volumes by name, mounts by mountPath",
                json!({"volumes": [{"name": "v", "emptyDir": {}}], "volumeMounts": [{"name": "v", "mountPath": "/a"}]}),
                json!({"volumes": [{"name": "w", "emptyDir": {}}], "volumeMounts": [{"name": "w", "mountPath": "/a"}]}),
                json!({"volumes": [{"name": "v", "emptyDir": {}}, {"name": "w", "emptyDir": {}}],
                       "volumeMounts": [{"name": "w", "mountPath": "/a"}]}),
            ),
            (
                "imagePullSecrets by name",
                json!({"imagePullSecrets": [{"name": "a"}]}),
                json!({"imagePullSecrets": [{"name": "b"}]}),
                json!({"imagePullSecrets": [{"name": "a"}, {"name": "b"}]}),
            ),
            (
                "tolerations replaced",
                json!({"tolerations": [{"key": "a", "operator": "Exists"}]}),
                json!({"tolerations": [{"key": "b", "operator": "Exists"}]}),
                json!({"tolerations": [{"key": "b", "operator": "Exists"}]}),
            ),
            (
                "args replaced",
                json!({"args": ["a", "b"]}),
                json!({"args": ["c"]}),
                json!({"args": ["c"]}),
            ),
            (
                "$patch delete list element",
                json!({"containers": [{"name": "a"}, {"name": "b"}]}),
                json!({"containers": [{"name": "a", "$patch": "delete"}]}),
                json!({"containers": [{"name": "b"}]}),
            ),
            (
                "$patch replace list",
                json!({"containers": [{"name": "a"}, {"name": "b"}]}),
                json!({"containers": [{"name": "c"}, {"$patch": "replace"}]}),
                json!({"containers": [{"name": "c"}]}),
            ),
            (
                "$patch replace map",
                json!({"spec": {"a": 1, "b": {"c": 2}}}),
                json!({"spec": {"$patch": "replace", "x": 1}}),
                json!({"spec": {"x": 1}}),
            ),
            (
                "$patch delete map",
                json!({"spec": {"a": 1}, "k": 1}),
                json!({"spec": {"$patch": "delete"}}),
                json!({"k": 1}),
            ),
            (
                "nested merge inside keyed element",
                json!({"containers": [{"name": "a", "resources": {"limits": {"cpu": "1"}}, "env": [{"name": "X", "value": "1"}]}]}),
                json!({"containers": [{"name": "a", "resources": {"limits": {"memory": "1Gi"}}, "env": [{"name": "Y", "value": "2"}]}]}),
                json!({"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
                    "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}]}),
            ),
            (
                "directives dropped from new values",
                json!({}),
                json!({"containers": [{"name": "a", "$patch": "delete"}, {"name": "b"}], "$setElementOrder/containers": []}),
                json!({"containers": [{"name": "b"}]}),
            ),
        ];
        for (name, target, patch, want) in cases {
            assert_eq!(merged(target, patch), want, "{name}");
        }
    }

    #[test]
    fn custom_resources_replace_lists() {
        let mut t = json!({"containers": [{"name": "a"}]});
        strategic_merge(&mut t, &json!({"containers": [{"name": "b"}]}), false);
        assert_eq!(t, json!({"containers": [{"name": "b"}]}));
    }

    fn json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            "[a-z]{0,4}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            let key = prop_oneof![
                Just("name".to_string()),
                Just("containers".to_string()),
                Just("env".to_string()),
                "[a-z]{1,3}".prop_map(String::from),
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(key, inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn empty_patch_changes_nothing(target in json()) {
            let mut t = target.clone();
            if target.is_object() {
                let empty = Value::Object(Default::default());
                let kept = strategic_merge(&mut t, &empty, true);
                proptest::prop_assert!(kept);
                proptest::prop_assert_eq!(t, target);
            }
        }

        #[test]
        fn patching_with_itself_is_idempotent(target in json()) {
            let mut once = target.clone();
            strategic_merge(&mut once, &target, true);
            let mut twice = once.clone();
            strategic_merge(&mut twice, &target, true);
            proptest::prop_assert_eq!(twice, once);
        }
    }

    #[test]
    fn delete_whole_object() {
        let mut t = json!({"kind": "ConfigMap"});
        assert!(!strategic_merge(&mut t, &json!({"$patch": "delete"}), true));
    }
}
