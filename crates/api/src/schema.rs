//! Schema pieces that derive macros cannot express the way Flux's CRDs spell them.
//!
//! Flux's schemas never use `nullable`: an optional field is simply not `required`. schemars marks
//! every `Option<T>` as nullable, so each root schema here is built by hand around the derived
//! spec and status schemas and then cleaned of null types. Doing it at the root (rather than
//! post-processing the CRD) keeps `CustomResourceExt::crd()` itself exact.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Value, json};

/// The top-level schema of a Flux kind: `apiVersion`, `kind`, `metadata`, `spec`, `status`, none
/// of them required, and `status` defaulting to `observedGeneration: -1` as in every Flux CRD.
pub(crate) fn root<Spec: JsonSchema, Status: JsonSchema>(
    generator: &mut SchemaGenerator,
    description: &str,
) -> Schema {
    let spec = generator.subschema_for::<Spec>().to_value();
    let mut status = generator.subschema_for::<Status>().to_value();
    if let Some(status) = status.as_object_mut() {
        status.insert("default".into(), json!({ "observedGeneration": -1 }));
    }
    let mut root = json!({
        "description": description,
        "type": "object",
        "properties": {
            "apiVersion": {
                "description": "Versioned schema of this object (group/version).",
                "type": "string",
            },
            "kind": {
                "description": "REST resource kind of this object, in CamelCase.",
                "type": "string",
            },
            "metadata": { "type": "object" },
            "spec": spec,
            "status": status,
        },
    });
    strip_nulls(&mut root);
    Schema::try_from(root).expect("a JSON object is a schema")
}

/// The top-level schema of a Flux kind without a status (Flux's v1beta3 `Alert` and `Provider`).
pub(crate) fn root_without_status<Spec: JsonSchema>(
    generator: &mut SchemaGenerator,
    description: &str,
) -> Schema {
    let spec = generator.subschema_for::<Spec>().to_value();
    let mut root = json!({
        "description": description,
        "type": "object",
        "properties": {
            "apiVersion": {
                "description": "Versioned schema of this object (group/version).",
                "type": "string",
            },
            "kind": {
                "description": "REST resource kind of this object, in CamelCase.",
                "type": "string",
            },
            "metadata": { "type": "object" },
            "spec": spec,
        },
    });
    strip_nulls(&mut root);
    Schema::try_from(root).expect("a JSON object is a schema")
}

/// The top-level schema of a Knative kind: as [`root`], but without Flux's status default
/// (Knative's CRDs default nothing) and with `spec.unsupported` keys kept, not pruned.
pub(crate) fn root_knative<Spec: JsonSchema, Status: JsonSchema>(
    generator: &mut SchemaGenerator,
    description: &str,
) -> Schema {
    let spec = generator.subschema_for::<Spec>().to_value();
    let status = generator.subschema_for::<Status>().to_value();
    let mut root = json!({
        "description": description,
        "type": "object",
        "properties": {
            "apiVersion": {
                "description": "Versioned schema of this object (group/version).",
                "type": "string",
            },
            "kind": {
                "description": "REST resource kind of this object, in CamelCase.",
                "type": "string",
            },
            "metadata": { "type": "object" },
            "spec": spec,
            "status": status,
        },
    });
    strip_nulls(&mut root);
    Schema::try_from(root).expect("a JSON object is a schema")
}

/// Removes what `Option<T>` adds (`null` in `type`/`enum`, `anyOf [T, null]`, `nullable`).
fn strip_nulls(value: &mut Value) {
    let Some(object) = value.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(any_of)) = object.get("anyOf")
        && any_of.len() == 2
        && any_of.iter().any(is_null_schema)
        && let Some(Value::Object(inner)) = any_of.iter().find(|s| !is_null_schema(s)).cloned()
    {
        object.remove("anyOf");
        for (key, value) in inner {
            object.entry(key).or_insert(value);
        }
    }
    if let Some(Value::Array(types)) = object.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types.remove(0);
            object.insert("type".into(), only);
        }
    }
    if let Some(Value::Array(values)) = object.get_mut("enum") {
        values.retain(|v| !v.is_null());
    }
    object.remove("nullable");
    for (key, child) in object.iter_mut() {
        match key.as_str() {
            // Data, not schemas.
            "default" | "enum" | "const" | "x-kubernetes-validations" | "required" => {}
            "properties" => {
                if let Some(properties) = child.as_object_mut() {
                    properties.values_mut().for_each(strip_nulls);
                }
            }
            "items" | "additionalProperties" => strip_nulls(child),
            "anyOf" | "oneOf" | "allOf" => {
                if let Some(list) = child.as_array_mut() {
                    list.iter_mut().for_each(strip_nulls);
                }
            }
            _ => {}
        }
    }
}

fn is_null_schema(schema: &Value) -> bool {
    schema.get("type").is_some_and(|t| t == "null")
        || schema.get("const").is_some_and(Value::is_null)
}

/// `metav1.Time`: an RFC 3339 string.
pub(crate) fn date_time(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({ "type": "string", "format": "date-time" })
}

/// `[]metav1.Condition` with the validation the Kubernetes API types carry (k8s-openapi's generated
/// schema has the shape but not the limits, so it is spelled out here).
pub(crate) fn conditions(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "description": "Observations of the object's state, one per condition type.",
        "type": "array",
        "items": {
            "description": "One aspect of the object's current state.",
            "type": "object",
            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
            "properties": {
                "lastTransitionTime": {
                    "description": "When the status last changed.",
                    "type": "string",
                    "format": "date-time",
                },
                "message": {
                    "description": "Human-readable details of the last transition; may be empty.",
                    "type": "string",
                    "maxLength": 32768,
                },
                "observedGeneration": {
                    "description": "The metadata.generation this condition was computed from.",
                    "type": "integer",
                    "format": "int64",
                    "minimum": 0,
                },
                "reason": {
                    "description": "CamelCase identifier of why the condition last changed.",
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 1024,
                    "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
                },
                "status": {
                    "description": "True, False or Unknown.",
                    "type": "string",
                    "enum": ["True", "False", "Unknown"],
                },
                "type": {
                    "description": "Condition type, CamelCase or domain-prefixed (foo.example.com/CamelCase).",
                    "type": "string",
                    "maxLength": 316,
                    "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
                },
            },
        },
    })
}

/// Name under which a root schema is registered (schemars needs one; it never reaches the CRD).
pub(crate) fn name(kind: &'static str) -> Cow<'static, str> {
    Cow::Borrowed(kind)
}

/// Go's `int`: an integer without a format (schemars would say `int64`).
pub(crate) fn integer(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({ "type": "integer" })
}

/// `metav1.LabelSelector` as controller-gen renders it (atomic map and lists).
pub(crate) fn label_selector(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "description": "Label query: matchLabels and matchExpressions, ANDed.",
        "type": "object",
        "x-kubernetes-map-type": "atomic",
        "properties": {
            "matchExpressions": {
                "description": "Requirements on label values.",
                "type": "array",
                "x-kubernetes-list-type": "atomic",
                "items": {
                    "description": "A key, an operator (In, NotIn, Exists, DoesNotExist) and values.",
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": { "description": "Label key.", "type": "string" },
                        "operator": { "description": "In, NotIn, Exists or DoesNotExist.", "type": "string" },
                        "values": {
                            "description": "Values for In and NotIn; empty for Exists and DoesNotExist.",
                            "type": "array",
                            "x-kubernetes-list-type": "atomic",
                            "items": { "type": "string" },
                        },
                    },
                },
            },
            "matchLabels": {
                "description": "Labels that must be present with these values.",
                "type": "object",
                "additionalProperties": { "type": "string" },
            },
        },
    })
}
