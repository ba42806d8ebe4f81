//! `gantry run --log-format flux`: one JSON object a line with the keys of Flux's controllers
//! (`ts`, `level` in lower case, `logger`, `msg`, `error`, `controllerKind`, `name`,
//! `namespace`), so `flux logs` prints and filters Gantry's lines as it does Flux's. `flux logs`
//! shows only lines whose `namespace` is the one asked for (`-A` for all) and prints
//! `<ts> <level> <controllerKind>/<name>.<namespace> - <msg> <error>`.
//!
//! The object of a line comes from its fields: a field named after a kind (`kustomization`,
//! `alert`, ...) or `name`, and `namespace`; without a kind field, the crate that logged names
//! the kind its controller reconciles. Other fields are kept under their own keys.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Fields that name the object a line is about, and its kind.
const KIND_FIELDS: &[(&str, &str)] = &[
    ("kustomization", "Kustomization"),
    ("gitrepository", "GitRepository"),
    ("imagerepository", "ImageRepository"),
    ("imagepolicy", "ImagePolicy"),
    ("imageupdateautomation", "ImageUpdateAutomation"),
    ("receiver", "Receiver"),
    ("alert", "Alert"),
    ("provider", "Provider"),
];

/// The kind a crate's controller reconciles, for lines without a kind field.
const KIND_OF_TARGET: &[(&str, &str)] = &[
    ("gantry_kustomize", "Kustomization"),
    ("gantry_source", "GitRepository"),
    ("gantry_notification", "Receiver"),
];

/// The event formatter of `--log-format flux`.
pub struct FluxJson;

impl<S, N> FormatEvent<S, N> for FluxJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Map::new();
        event.record(&mut Fields(&mut fields));
        let line = flux_line(
            &jiff::Timestamp::now().to_string(),
            event.metadata().level(),
            event.metadata().target(),
            fields,
        );
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Builds the line from an event's level, target and fields.
fn flux_line(
    ts: &str,
    level: &Level,
    target: &str,
    mut fields: Map<String, Value>,
) -> Map<String, Value> {
    let mut line = Map::new();
    line.insert("ts".into(), ts.into());
    line.insert("level".into(), level.as_str().to_ascii_lowercase().into());
    line.insert("logger".into(), target.into());
    let message = fields.remove("message").unwrap_or_else(|| "".into());
    line.insert("msg".into(), message);
    if let Some(error) = fields.remove("err").or_else(|| fields.remove("error")) {
        line.insert("error".into(), error);
    }
    let by_field = KIND_FIELDS
        .iter()
        .find_map(|(field, kind)| fields.remove(*field).map(|name| (*kind, name)));
    let crate_name = target.split("::").next().unwrap_or(target);
    let kind = by_field.as_ref().map(|(kind, _)| *kind).or_else(|| {
        KIND_OF_TARGET
            .iter()
            .find(|(krate, _)| *krate == crate_name)
            .map(|(_, kind)| *kind)
    });
    if let Some(kind) = kind {
        line.insert("controllerKind".into(), kind.into());
    }
    if let Some(name) = by_field
        .map(|(_, name)| name)
        .or_else(|| fields.remove("name"))
    {
        line.insert("name".into(), name);
    }
    if let Some(namespace) = fields.remove("namespace") {
        line.insert("namespace".into(), namespace);
    }
    for (key, value) in fields {
        line.entry(key).or_insert(value);
    }
    line
}

/// Collects an event's fields as JSON values (`%x` and `?x` fields as their text).
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_kind_field_names_the_object() {
        let line = flux_line(
            "2026-12-04T19:00:00Z",
            &Level::WARN,
            "gantry_kustomize::controller",
            fields(json!({
                "message": "reconciliation failed",
                "kustomization": "apps",
                "namespace": "flux-system",
                "err": "boom",
                "reason": "BuildFailed",
            })),
        );
        assert_eq!(
            Value::Object(line),
            json!({
                "ts": "2026-12-04T19:00:00Z",
                "level": "warn",
                "logger": "gantry_kustomize::controller",
                "msg": "reconciliation failed",
                "error": "boom",
                "controllerKind": "Kustomization",
                "name": "apps",
                "namespace": "flux-system",
                "reason": "BuildFailed",
            })
        );
    }

    #[test]
    fn the_crate_names_the_kind_of_a_name_field() {
        let line = flux_line(
            "t",
            &Level::INFO,
            "gantry_source::controller",
            fields(json!({"message": "stored new artifact", "name": "podinfo", "namespace": "a"})),
        );
        assert_eq!(line["controllerKind"], "GitRepository");
        assert_eq!(line["name"], "podinfo");
        assert_eq!(line["level"], "info");
        let other = flux_line(
            "t",
            &Level::ERROR,
            "gantry::run",
            fields(json!({"message": "x"})),
        );
        assert!(other.get("controllerKind").is_none() && other.get("name").is_none());
        assert_eq!(other["level"], "error");
    }
}
