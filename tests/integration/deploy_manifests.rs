//! deploy/kubernetes stays deployable: `scripts/validate-deploy.sh` checks every core resource
//! against the Kubernetes schemas (strict), the references between the files, and the
//! ConfigMap's settings through this very binary's `config check`.

#[test]
fn the_kubernetes_manifests_validate() {
    let out = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/validate-deploy.sh"
    ))
    .arg(env!("CARGO_BIN_EXE_image-builder"))
    .output()
    .expect("the validation script runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
