//! The binary's edge against the test cluster: what `gantry run` says when Gantry is not
//! installed, and where `gantry webhook-url` says a Receiver is served.

use std::process::Command;

#[test]
fn run_without_the_leader_election_namespace_says_what_to_do_in_one_sentence() {
    let kubeconfig = gantry_testkit::kubeconfig_path();
    let missing = format!("gantry-missing-{}", std::process::id());
    let storage = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["run", "--leader-election-namespace", &missing])
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--health-addr",
            "127.0.0.1:0",
        ])
        .args(["--receiver-addr", "127.0.0.1:0", "--storage-path"])
        .arg(storage.path())
        .env("KUBECONFIG", &kubeconfig)
        .env("GANTRY_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "gantry: namespace \"{missing}\" does not exist: run 'gantry install', or pass \
             --leader-elect=false for a single local process"
        )
    );
}
