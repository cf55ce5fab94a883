//! The hand-off to cluster mode (ECP-0138): `ec-launch run`/`status` with
//! `--etcd` or `EC_LAUNCH_ETCD` exec `ec-launch-cluster` from their own
//! directory, first thing; nothing else is handed off, and a missing
//! cluster executable is a clear refusal, never a launch without the lock.

use std::fs;
use std::path::Path;

use crate::testenv::{BIN, TestEnv, text};

const SOURCE: &str = "http://10.0.0.5:5004/auto/v5.1";

fn lock_files_in(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |entries| entries.filter_map(Result::ok).count())
}

#[test]
fn without_the_cluster_executable_beside_it_cluster_mode_is_refused_with_69_naming_the_path() {
    let env = TestEnv::new();
    let alone = env.path("bin");
    fs::create_dir(&alone).unwrap();
    let copy = alone.join("ec-launch");
    fs::copy(BIN, &copy).unwrap();
    let output = std::process::Command::new(&copy)
        .args(["run", "--etcd", "http://127.0.0.1:9", "--lock-dir"])
        .arg(env.lock_dir())
        .args(["--source", SOURCE, "--", "touch"])
        .arg(env.path("ran"))
        .env_remove("EC_LAUNCH_ETCD")
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    let expected = alone.join("ec-launch-cluster");
    assert!(
        stderr.contains(&format!("{:?}", expected.display().to_string())),
        "{stderr}"
    );
    assert!(
        stderr.contains("install the package's ec-launch-cluster beside ec-launch"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!env.path("ran").exists());
    assert_eq!(lock_files_in(&env.lock_dir()), 0, "no lock may be taken");
}

#[test]
fn an_empty_ec_launch_etcd_is_cluster_mode_and_refused_as_an_empty_endpoint() {
    let env = TestEnv::new();
    let output = env
        .ec_launch()
        .env("EC_LAUNCH_ETCD", "")
        .args(["run", "--lock-dir"])
        .arg(env.lock_dir())
        .args(["--source", SOURCE, "--", "touch"])
        .arg(env.path("ran"))
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("an endpoint is empty"), "{stderr}");
    assert!(!env.path("ran").exists());
}

#[test]
fn key_is_never_handed_off_whatever_the_environment_says() {
    let env = TestEnv::new();
    let output = env
        .ec_launch()
        .env("EC_LAUNCH_ETCD", "http://127.0.0.1:9")
        .args(["key", "--lock-dir"])
        .arg(env.lock_dir())
        .arg(SOURCE)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("hdhomerun://10.0.0.5/v5.1"));
}

#[test]
fn the_cluster_executable_run_directly_without_etcd_refuses_with_64() {
    let env = TestEnv::new();
    let cluster = Path::new(BIN).with_file_name("ec-launch-cluster");
    let output = std::process::Command::new(cluster)
        .args(["run", "--lock-dir"])
        .arg(env.lock_dir())
        .args(["--source", SOURCE, "--", "touch"])
        .arg(env.path("ran"))
        .env_remove("EC_LAUNCH_ETCD")
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("runs cluster mode only"), "{stderr}");
    assert!(!env.path("ran").exists());
    assert_eq!(lock_files_in(&env.lock_dir()), 0);
}

#[test]
fn a_usage_error_in_a_cluster_command_is_claps_as_before_the_split() {
    let env = TestEnv::new();
    let output = env.ec_launch().args(["run", "--etcd"]).output().unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    // clap's own words, from the cluster executable's parser.
    assert!(
        stderr.starts_with("error: a value is required for '--etcd <URL[,URL...]>'"),
        "{stderr}"
    );
}
