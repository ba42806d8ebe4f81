//! The generated GitHub Actions workflows parse as YAML and have the shape the workflow
//! schema requires (https://json.schemastore.org/github-workflow.json): checked field by
//! field so a broken template fails here rather than on GitHub.

use std::collections::BTreeSet;

use gantry_release::workflows::{github_workflows, write_github};
use serde_json::{Map, Value};

const TOP_LEVEL: &[&str] = &[
    "name",
    "run-name",
    "on",
    "permissions",
    "env",
    "defaults",
    "concurrency",
    "jobs",
];
const EVENTS: &[&str] = &[
    "pull_request",
    "pull_request_target",
    "push",
    "release",
    "schedule",
    "workflow_dispatch",
    "workflow_call",
    "workflow_run",
    "merge_group",
];
const JOB_KEYS: &[&str] = &[
    "name",
    "needs",
    "permissions",
    "runs-on",
    "environment",
    "concurrency",
    "outputs",
    "env",
    "defaults",
    "if",
    "steps",
    "timeout-minutes",
    "strategy",
    "continue-on-error",
    "container",
    "services",
    "uses",
    "with",
    "secrets",
];
const STEP_KEYS: &[&str] = &[
    "id",
    "if",
    "name",
    "uses",
    "run",
    "working-directory",
    "shell",
    "with",
    "env",
    "continue-on-error",
    "timeout-minutes",
];
const PERMISSION_SCOPES: &[&str] = &[
    "actions",
    "attestations",
    "checks",
    "contents",
    "deployments",
    "discussions",
    "id-token",
    "issues",
    "packages",
    "pages",
    "pull-requests",
    "repository-projects",
    "security-events",
    "statuses",
];

fn keys_within(map: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), String> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("{what}: unknown key `{k}`")),
        None => Ok(()),
    }
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{what} must be a mapping"))
}

/// The required shape of a workflow, following the schema's definitions.
fn check_workflow(doc: &Value) -> Result<(), String> {
    let top = object(doc, "workflow")?;
    keys_within(top, TOP_LEVEL, "workflow")?;
    let on = top.get("on").ok_or("`on` is required")?;
    match on {
        Value::String(e) if EVENTS.contains(&e.as_str()) => {}
        Value::Object(events) if !events.is_empty() => {
            keys_within(events, EVENTS, "on")?;
            for (event, filter) in events {
                if !(filter.is_null() || filter.is_object()) {
                    return Err(format!("on.{event} must be empty or a mapping"));
                }
            }
        }
        other => return Err(format!("`on` has an unexpected shape: {other}")),
    }
    if let Some(permissions) = top.get("permissions") {
        let permissions = object(permissions, "permissions")?;
        keys_within(permissions, PERMISSION_SCOPES, "permissions")?;
        for (scope, level) in permissions {
            if !matches!(level.as_str(), Some("read" | "write" | "none")) {
                return Err(format!("permissions.{scope} must be read, write or none"));
            }
        }
    }
    let jobs = object(top.get("jobs").ok_or("`jobs` is required")?, "jobs")?;
    if jobs.is_empty() {
        return Err("`jobs` must not be empty".into());
    }
    for (id, job) in jobs {
        let id_ok = id.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !id_ok {
            return Err(format!("job id `{id}` is not a valid identifier"));
        }
        let job = object(job, &format!("jobs.{id}"))?;
        keys_within(job, JOB_KEYS, &format!("jobs.{id}"))?;
        if let Some(needs) = job.get("needs") {
            let needs: Vec<&str> = match needs {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => return Err(format!("jobs.{id}.needs must be a job id or a list")),
            };
            if let Some(missing) = needs.iter().find(|n| !jobs.contains_key(**n)) {
                return Err(format!("jobs.{id}.needs unknown job `{missing}`"));
            }
        }
        if job.contains_key("uses") {
            // A call to a reusable workflow has no runner and no steps.
            if job.contains_key("steps") || job.contains_key("runs-on") {
                return Err(format!("jobs.{id}: `uses` excludes `steps` and `runs-on`"));
            }
            continue;
        }
        if !job.contains_key("runs-on") {
            return Err(format!("jobs.{id}: `runs-on` is required"));
        }
        let steps = job
            .get("steps")
            .and_then(Value::as_array)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("jobs.{id}: `steps` must be a non-empty list"))?;
        let mut step_ids = BTreeSet::new();
        for (n, step) in steps.iter().enumerate() {
            let what = format!("jobs.{id}.steps[{n}]");
            let step = object(step, &what)?;
            keys_within(step, STEP_KEYS, &what)?;
            match (step.get("uses"), step.get("run")) {
                (Some(Value::String(uses)), None) => {
                    let pinned = uses.starts_with("./")
                        || uses.starts_with("docker://")
                        || uses.contains('@');
                    if !pinned {
                        return Err(format!("{what}: `uses: {uses}` needs a version (`@v4`)"));
                    }
                }
                (None, Some(Value::String(_))) => {
                    if step.contains_key("with") {
                        return Err(format!("{what}: `with` only applies to `uses`"));
                    }
                }
                _ => {
                    return Err(format!(
                        "{what}: exactly one of `uses` and `run` (a string)"
                    ));
                }
            }
            if let Some(with) = step.get("with") {
                object(with, &format!("{what}.with"))?;
            }
            if let Some(step_id) = step.get("id").and_then(Value::as_str)
                && !step_ids.insert(step_id.to_string())
            {
                return Err(format!("{what}: duplicate step id `{step_id}`"));
            }
        }
        // Every `steps.<id>.outputs` an expression reads must be the id of a step in the job.
        let text = serde_json::to_string(job).unwrap();
        for reference in text.split("steps.").skip(1) {
            if let Some((step_id, _)) = reference.split_once(".outputs.")
                && !step_ids.contains(step_id)
            {
                return Err(format!(
                    "jobs.{id}: expression reads unknown step `{step_id}`"
                ));
            }
        }
    }
    check_expressions(doc)
}

/// Every `${{` in a string value is closed by `}}`.
fn check_expressions(v: &Value) -> Result<(), String> {
    match v {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(open) = rest.find("${{") {
                let close = rest[open..]
                    .find("}}")
                    .ok_or_else(|| format!("unclosed expression in `{s}`"))?;
                rest = &rest[open + close + 2..];
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(check_expressions),
        Value::Object(map) => map.values().try_for_each(check_expressions),
        _ => Ok(()),
    }
}

fn parse(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("invalid YAML: {e}\n{text}"))
}

#[test]
fn every_template_has_the_workflow_shape() {
    assert_eq!(github_workflows().len(), 4);
    for (name, text) in github_workflows() {
        check_workflow(&parse(&text)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn triggers_match_the_pipeline() {
    let on = |name: &str| {
        let (_, text) = github_workflows()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap();
        parse(&text)["on"].clone()
    };
    assert!(on("test.yaml").get("pull_request").is_some());
    assert_eq!(
        on("staging-image.yaml")["push"]["branches"],
        serde_json::json!(["main"])
    );
    assert_eq!(
        on("release.yaml")["push"]["branches"],
        serde_json::json!(["release"])
    );
    assert_eq!(
        on("production-image.yaml")["release"]["types"],
        serde_json::json!(["published"])
    );
}

#[test]
fn release_workflow_fetches_history_and_uses_the_documented_exit_code() {
    let (_, text) = github_workflows()
        .into_iter()
        .find(|(n, _)| *n == "release.yaml")
        .unwrap();
    let steps = parse(&text)["jobs"]["release"]["steps"].clone();
    assert_eq!(steps[0]["with"]["fetch-depth"], serde_json::json!(0));
    assert!(
        text.contains("\"$code\" -eq 3"),
        "nothing-to-release code must match the CLI's"
    );
    assert!(text.contains("gantry release tag --push"));
}

/// The checker itself must reject what GitHub rejects, or the test above proves nothing.
#[test]
fn checker_rejects_broken_workflows() {
    let cases = [
        (
            "jobs: {a: {runs-on: x, steps: [{run: make}]}}",
            "`on` is required",
        ),
        ("on: push", "`jobs` is required"),
        ("on: push\njobs: {}", "must not be empty"),
        (
            "on: pushed\njobs: {a: {runs-on: x, steps: [{run: make}]}}",
            "unexpected shape",
        ),
        (
            "on: push\njobs: {a: {steps: [{run: make}]}}",
            "`runs-on` is required",
        ),
        (
            "on: push\njobs: {a: {runs-on: x, steps: []}}",
            "non-empty list",
        ),
        (
            "on: push\njobs: {a: {runs-on: x, steps: [{run: make, uses: z@v1}]}}",
            "exactly one",
        ),
        (
            "on: push\njobs: {a: {runs-on: x, steps: [{name: y}]}}",
            "exactly one",
        ),
        (
            "on: push\njobs: {a: {runs-on: x, steps: [{uses: actions/checkout}]}}",
            "needs a version",
        ),
        (
            "on: push\njobs: {a: {runs-on: x, steps: [{run: make, with: {a: b}}]}}",
            "only applies",
        ),
        (
            "on: push\njobs: {a: {runs-on: x, step: [{run: make}]}}",
            "unknown key `step`",
        ),
        (
            "on: push\njobs: {a: {runs-on: x, needs: b, steps: [{run: make}]}}",
            "unknown job `b`",
        ),
        (
            "on: push\njobs: {1a: {runs-on: x, steps: [{run: make}]}}",
            "not a valid identifier",
        ),
        (
            "on: push\npermissions: {contents: all}\njobs: {a: {runs-on: x, steps: [{run: make}]}}",
            "read, write or none",
        ),
        (
            "on: push\njobs: {a: {runs-on: x, steps: [{run: '${{ steps.t.outputs.v }}'}]}}",
            "unknown step `t`",
        ),
        (
            "on: push\njobs: {a: {runs-on: x, steps: [{run: 'echo ${{ github.sha'}]}}",
            "unclosed expression",
        ),
    ];
    for (text, expected) in cases {
        let err = check_workflow(&parse(text)).expect_err(text);
        assert!(err.contains(expected), "{text}: {err}");
    }
}

#[test]
fn write_refuses_to_overwrite_without_force() {
    let dir = tempfile::TempDir::new().unwrap();
    let written = write_github(dir.path(), false).unwrap();
    assert_eq!(written.len(), 4);
    for path in &written {
        assert!(path.starts_with(dir.path().join(".github/workflows")));
        check_workflow(&parse(&std::fs::read_to_string(path).unwrap())).unwrap();
    }
    std::fs::write(&written[0], "# customised\n").unwrap();
    let err = write_github(dir.path(), false).unwrap_err().to_string();
    assert!(
        err.contains("test.yaml") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&written[0]).unwrap(),
        "# customised\n"
    );
    write_github(dir.path(), true).unwrap();
    assert_ne!(
        std::fs::read_to_string(&written[0]).unwrap(),
        "# customised\n"
    );
}
