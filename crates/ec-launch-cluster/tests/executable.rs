//! The cluster executable as `ec-launch` finds it. Having an integration
//! test makes `cargo test` build the `ec-launch-cluster` binary itself (Cargo
//! builds a package's binaries only for its integration tests), so the
//! README's `cargo test` tests the cluster mode it just built (ECP-0138).

use std::process::Command;

#[test]
fn run_without_etcd_is_refused_with_64_and_sent_to_ec_launch() {
    let output = Command::new(env!("CARGO_BIN_EXE_ec-launch-cluster"))
        .args(["run", "--source", "http://10.0.0.5/x", "--", "true"])
        .env_remove("EC_LAUNCH_ETCD")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("run `ec-launch`"), "{stderr}");
}

#[test]
fn it_answers_help_from_the_same_definition_as_ec_launch() {
    let output = Command::new(env!("CARGO_BIN_EXE_ec-launch-cluster"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(stdout.contains("--etcd-stop-grace"), "{stdout}");
}
