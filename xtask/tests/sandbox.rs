//! The README's first command, `cargo xtask sandbox`, against the test cluster: Gantry's API
//! ends up installed by the `gantry` binary's own output.

use std::process::Command;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;

#[tokio::test]
async fn sandbox_installs_gantrys_api_into_the_cluster() {
    let kubeconfig = gantry_testkit::kubeconfig_path();
    let client = gantry_testkit::connect(&kubeconfig).await;

    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("sandbox")
        .env("GANTRY_KUBECONFIG", &kubeconfig)
        .output()
        .expect("running xtask sandbox");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "sandbox succeeds: {said}");
    assert!(said.contains("Installed Gantry's API"), "{said}");

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
}
