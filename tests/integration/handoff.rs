//! The hand-off to cluster mode (ECP-0138): `ec-launch run`/`status` with
//! `--etcd` or `EC_LAUNCH_ETCD` exec `ec-launch-cluster` from their own
//! directory, first thing; nothing else is handed off, and a missing
//! cluster executable is a clear refusal, never a launch without the lock.

use std::fs;
use std::path::Path;

use crate::testenv::{BIN, TestEnv};

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
    let expected = alone.join("ec-launch-cluster");
    env.launch(SOURCE)
        .binary(&copy)
        .args(["--etcd", "http://127.0.0.1:9"])
        .env_remove("EC_LAUNCH_ETCD")
        .expect_status(69)
        .stderr_contains(format!("{:?}", expected.display().to_string()))
        .stderr_contains("install the package's ec-launch-cluster beside ec-launch")
        .stderr_lines(1)
        .program_did_not_run()
        .run();
    assert_eq!(lock_files_in(&env.lock_dir()), 0, "no lock may be taken");
}

#[test]
fn an_empty_ec_launch_etcd_is_cluster_mode_and_refused_as_an_empty_endpoint() {
    let env = TestEnv::new();
    env.launch(SOURCE)
        .env("EC_LAUNCH_ETCD", "")
        .expect_status(64)
        .stderr_contains("an endpoint is empty")
        .program_did_not_run()
        .run();
}

#[test]
fn key_is_never_handed_off_whatever_the_environment_says() {
    let env = TestEnv::new();
    env.key(SOURCE)
        .env("EC_LAUNCH_ETCD", "http://127.0.0.1:9")
        .stdout_contains("hdhomerun://10.0.0.5/v5.1")
        .run();
}

#[test]
fn the_cluster_executable_run_directly_without_etcd_refuses_with_64() {
    let env = TestEnv::new();
    let cluster = Path::new(BIN).with_file_name("ec-launch-cluster");
    env.launch(SOURCE)
        .binary(cluster)
        .env_remove("EC_LAUNCH_ETCD")
        .expect_status(64)
        .stderr_contains("runs cluster mode only")
        .program_did_not_run()
        .run();
    assert_eq!(lock_files_in(&env.lock_dir()), 0);
}

#[test]
fn a_usage_error_in_a_cluster_command_is_claps_as_before_the_split() {
    let env = TestEnv::new();
    // clap's own words, from the cluster executable's parser.
    env.command(["run", "--etcd"])
        .expect_status(2)
        .stderr_starts_with("error: a value is required for '--etcd <URL[,URL...]>'")
        .run();
}
