//! `cargo xtask cluster` under faults, each in its own state directory so the developer's
//! cluster is never touched. They reuse the machine's binary cache (built by any earlier `up`).

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

mod common;
use common::{text, xtask};

/// `status` is the user's way to see what runs; after a failed `up` it must say nothing does.
fn assert_nothing_runs(state: &Path) {
    let out = xtask(state, &["cluster", "status"]);
    let said = text(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "status says not running: {said}"
    );
    assert!(
        said.contains("is not running.") && !said.contains("earlier run"),
        "no process of the failed run is left: {said}"
    );
}

#[test]
fn a_taken_apiserver_port_stops_up_naming_the_component() {
    let state = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();

    let out = xtask(state.path(), &["cluster", "up", "--apiserver-port", &port]);
    let said = text(&out);
    assert!(!out.status.success(), "up fails: {said}");
    assert!(
        said.contains("kube-apiserver exited"),
        "names the component: {said}"
    );
    assert!(
        said.contains("address already in use"),
        "shows its log tail: {said}"
    );
    assert_nothing_runs(state.path());
}

#[test]
fn an_unusable_etcd_data_dir_stops_up_naming_etcd() {
    let state = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let not_a_dir = scratch.path().join("file");
    std::fs::write(&not_a_dir, "a file where a directory should be").unwrap();
    let data_dir = not_a_dir.join("data");

    let out = xtask(
        state.path(),
        &[
            "cluster",
            "up",
            "--etcd-data-dir",
            data_dir.to_str().unwrap(),
        ],
    );
    let said = text(&out);
    assert!(!out.status.success(), "up fails: {said}");
    assert!(said.contains("etcd exited"), "names etcd: {said}");
    assert!(
        said.contains("not a directory"),
        "shows etcd's own reason: {said}"
    );
    assert_nothing_runs(state.path());
}

#[test]
fn a_module_the_proxy_does_not_serve_is_named_with_its_version() {
    let state = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["cluster", "up", "--state-dir"])
        .arg(state.path())
        .arg("--cache-dir")
        .arg(cache.path())
        .env_remove("GANTRY_KUBECONFIG")
        .env("GANTRY_K8S_VERSION", "v1.36.999")
        .output()
        .unwrap();
    let said = text(&out);
    assert!(!out.status.success(), "up fails: {said}");
    assert!(
        said.contains("k8s.io/kubernetes@v1.36.999"),
        "names module and version: {said}"
    );
    assert!(
        !cache.path().join("kubernetes-v1.36.999").exists(),
        "a failed build is not cached as done"
    );
}

#[test]
fn up_is_idempotent_down_is_quiet_and_a_crashed_run_does_not_block_the_next() {
    let state = tempfile::tempdir().unwrap();
    let state = state.path();

    let first = xtask(state, &["cluster", "up"]);
    assert!(first.status.success(), "first up: {}", text(&first));
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("cluster.json")).unwrap())
            .unwrap();
    let server = record["server"].as_str().unwrap().to_string();

    let second = xtask(state, &["cluster", "up"]);
    assert!(second.status.success(), "second up: {}", text(&second));
    assert!(
        text(&second).contains("already running"),
        "{}",
        text(&second)
    );
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("cluster.json")).unwrap())
            .unwrap();
    assert_eq!(
        again["server"],
        server.as_str(),
        "the same cluster, not a new one"
    );

    // A run that crashed after starting its processes but before recording them: the next
    // `up` must find and stop them itself and start cleanly.
    std::fs::remove_file(state.join("cluster.json")).unwrap();
    let status = xtask(state, &["cluster", "status"]);
    assert!(
        text(&status).contains("earlier run"),
        "strays are reported: {}",
        text(&status)
    );
    let old_pids: Vec<u64> = record["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["pid"].as_u64().unwrap())
        .collect();
    let third = xtask(state, &["cluster", "up"]);
    assert!(third.status.success(), "up after a crash: {}", text(&third));
    assert!(
        text(&third).contains("left over from an earlier run"),
        "{}",
        text(&third)
    );
    for pid in old_pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z")),
            "process {pid} of the crashed run is gone"
        );
    }

    let down = xtask(state, &["cluster", "down"]);
    assert!(down.status.success(), "down: {}", text(&down));
    let down_again = xtask(state, &["cluster", "down"]);
    assert!(
        down_again.status.success(),
        "down with nothing running succeeds"
    );
    assert!(
        text(&down_again).is_empty(),
        "and says nothing: {}",
        text(&down_again)
    );
    assert_nothing_runs(state);
}
