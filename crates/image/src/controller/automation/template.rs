//! The commit message template of an automation: the data Flux gives it, and the checks that
//! name a template's mistake before any git work.

use std::collections::BTreeMap;

use gantry_api::image::v1::REMOVED_TEMPLATE_FIELD_REASON;
use gantry_api::meta::INVALID_SPEC_REASON;
use gantry_core::gotemplate::{self, Value};
use gantry_core::image::setters::{self, Change, ObjectId};

use super::Error;

// The edit callback's failure: the commit message template could not be rendered.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct TemplateFailure(pub(super) String);

// Templates written for older Flux use fields that no longer exist: say so instead of a
// generic "can't evaluate field" error.
pub(super) fn check_template(template: &str) -> Result<(), Error> {
    let removed = [
        (
            ".Updated",
            "'.Updated' field. Please use '.Changed' instead",
        ),
        (
            ".Changed.ImageResult",
            "'.Changed.ImageResult' field. Please use '.Changed.FileChanges' or '.Changed.Objects' instead",
        ),
    ];
    for (field, advice) in removed {
        if template.contains(field) {
            return Err(Error::InvalidSpec {
                reason: REMOVED_TEMPLATE_FIELD_REASON,
                message: format!("template uses removed {advice}"),
            });
        }
    }
    // Parse errors are found before any git work.
    let probe = template_data(&(String::new(), String::new()), &[], &BTreeMap::new());
    if let Err(e @ gotemplate::TemplateError::Parse { .. }) = gotemplate::render(template, &probe) {
        return Err(Error::InvalidSpec {
            reason: INVALID_SPEC_REASON,
            message: format!("unable to create commit message template from spec: {e}"),
        });
    }
    Ok(())
}

/// The data Flux gives the commit message template: `.AutomationObject`, `.Changed`
/// (`FileChanges`: file -> object -> changes, `Objects`: object -> changes, `Changes`) and
/// `.Values`.
pub fn template_data(
    automation: &(String, String),
    changes: &[Change],
    values: &BTreeMap<String, String>,
) -> Value {
    let object = |o: &ObjectId| {
        Value::structure(
            o.to_string(),
            [
                ("APIVersion", Value::from(o.api_version.as_str())),
                ("Kind", Value::from(o.kind.as_str())),
                ("Namespace", Value::from(o.namespace.as_str())),
                ("Name", Value::from(o.name.as_str())),
            ],
        )
    };
    let change = |c: &Change| {
        Value::structure(
            format!("{{{} {} {}}}", c.old, c.new, c.setter),
            [
                ("OldValue", Value::from(c.old.as_str())),
                ("NewValue", Value::from(c.new.as_str())),
                ("Setter", Value::from(c.setter.as_str())),
            ],
        )
    };
    let by_file = setters::changed_by_file(changes);
    let file_changes = Value::Map(
        by_file
            .iter()
            .map(|(file, objects)| {
                (
                    Value::from(file.as_str()),
                    Value::Map(
                        objects
                            .iter()
                            .map(|(o, cs)| {
                                (object(o), Value::List(cs.iter().map(change).collect()))
                            })
                            .collect(),
                    ),
                )
            })
            .collect(),
    );
    let mut objects: BTreeMap<&ObjectId, Vec<&Change>> = BTreeMap::new();
    for c in changes {
        objects.entry(&c.object).or_default().push(c);
    }
    let objects = Value::Map(
        objects
            .into_iter()
            .map(|(o, cs)| (object(o), Value::List(cs.into_iter().map(change).collect())))
            .collect(),
    );
    let (ns, name) = automation;
    Value::structure(
        "",
        [
            (
                "AutomationObject",
                Value::structure(
                    format!("{ns}/{name}"),
                    [
                        ("Namespace", Value::from(ns.as_str())),
                        ("Name", Value::from(name.as_str())),
                    ],
                ),
            ),
            (
                "Changed",
                Value::structure(
                    "",
                    [
                        ("FileChanges", file_changes),
                        ("Objects", objects),
                        ("Changes", Value::List(changes.iter().map(change).collect())),
                    ],
                ),
            ),
            (
                "Values",
                Value::Map(
                    values
                        .iter()
                        .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
                        .collect(),
                ),
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_api::image::v1::DEFAULT_COMMIT_MESSAGE;

    fn change(file: &str, name: &str, old: &str, new: &str) -> Change {
        Change {
            file: file.into(),
            line: 3,
            setter: "apps:web".into(),
            old: old.into(),
            new: new.into(),
            object: ObjectId {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                namespace: "staging".into(),
                name: name.into(),
            },
        }
    }

    #[test]
    fn template_data_has_fluxs_shape() {
        let changes = vec![
            change("staging/web.yaml", "web", "reg/web:1", "reg/web:2"),
            change("staging/api.yaml", "api", "reg/api:1", "reg/api:2"),
        ];
        let data = template_data(
            &("flux-system".into(), "auto".into()),
            &changes,
            &BTreeMap::from([("env".to_string(), "staging".to_string())]),
        );
        let template = "{{ .AutomationObject }} {{ .Values.env }}\n{{ range $f, $objs := .Changed.FileChanges }}{{ $f }}:{{ range $o, $cs := $objs }} {{ $o.Kind }}/{{ $o.Name }}{{ range $cs }} {{ .OldValue }}->{{ .NewValue }}{{ end }}{{ end }}\n{{ end }}{{ len .Changed.Changes }} {{ range $o, $_ := .Changed.Objects }}{{ $o.Name }} {{ end }}";
        assert_eq!(
            gotemplate::render(template, &data).unwrap(),
            "flux-system/auto staging\nstaging/api.yaml: Deployment/api reg/api:1->reg/api:2\nstaging/web.yaml: Deployment/web reg/web:1->reg/web:2\n2 api web "
        );
    }

    #[test]
    fn removed_fields_and_parse_errors_are_named() {
        let err = check_template("{{ range .Updated.Images }}{{ . }}{{ end }}").unwrap_err();
        assert_eq!(err.reason(), REMOVED_TEMPLATE_FIELD_REASON);
        assert!(err.to_string().contains(".Changed"), "{err}");
        let err = check_template("{{ if .Changed }}unclosed").unwrap_err();
        assert_eq!(err.reason(), INVALID_SPEC_REASON);
        check_template(DEFAULT_COMMIT_MESSAGE).unwrap();
    }
}
