//! The README's first command, `cargo xtask sandbox`: a cluster of its own, Gantry's API installed
//! by the `gantry` binary's own output, and `gantry run` reconciling in the background until
//! `cluster down`.

use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;

mod common;
use common::xtask_ok;

fn value_after<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} line in: {text}"))
        .trim()
}

#[tokio::test]
async fn sandbox_installs_gantrys_api_and_runs_gantry_until_down() {
    let state = tempfile::tempdir().unwrap();
    let said = xtask_ok(state.path(), &["sandbox"]);
    assert!(said.contains("Installed Gantry's API"), "{said}");

    let client = gantry_testkit::connect(&state.path().join("admin.kubeconfig")).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for crd in gantry_api::crds() {
        let name = crd.metadata.name.unwrap();
        assert!(said.contains(&name), "{name} is reported: {said}");
        let live = crds.get(&name).await.expect("the CRD exists");
        let established = live.status.and_then(|s| s.conditions).is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        assert!(established, "{name} is Established");
    }

    let pid: u32 = value_after(&said, "gantry run   pid")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let metrics = value_after(&said, "metrics").trim_start_matches("http://");
    let (addr, path) = metrics.split_once('/').unwrap();
    let body = http_get(addr, &format!("/{path}"));
    assert!(
        body.contains("process_resident_memory_bytes"),
        "gantry serves metrics: {body}"
    );

    xtask_ok(state.path(), &["cluster", "down"]);
    let gone = !Path::new(&format!("/proc/{pid}")).exists()
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"));
    assert!(gone, "cluster down stops the background gantry too");
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}
