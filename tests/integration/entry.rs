//! The entry point: the command line reaches the parser byte-exact, so paths
//! that are not UTF-8 (Linux paths are bytes) work wherever a path is taken.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use crate::testenv::{TestEnv, describe, text};

const SOURCE: &str = "http://10.0.0.5:5004/auto/v5.1";

/// `<env>/locks-\xff`: a lock directory whose name is not UTF-8.
fn non_utf8_lock_dir(env: &TestEnv) -> PathBuf {
    let mut name = b"locks-".to_vec();
    name.push(0xff);
    env.path("").join(OsString::from_vec(name))
}

fn lock_files_in(dir: &PathBuf) -> usize {
    fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "lock"))
            .count()
    })
}

#[test]
fn a_lock_dir_flag_that_is_not_utf8_is_used_as_given() {
    let env = TestEnv::new();
    let dir = non_utf8_lock_dir(&env);
    let output = env
        .ec_launch()
        .arg("run")
        .arg("--lock-dir")
        .arg(&dir)
        .args(["--source", SOURCE, "--", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(lock_files_in(&dir), 1, "{}", describe(&output));

    for command in ["key", "status"] {
        let output = env
            .ec_launch()
            .arg(command)
            .arg("--lock-dir")
            .arg(&dir)
            .arg(SOURCE)
            .output()
            .unwrap();
        // status SOURCE: the lock is free now that `true` has exited.
        let expected = if command == "key" { 0 } else { 3 };
        assert_eq!(
            output.status.code(),
            Some(expected),
            "{command}: {}",
            describe(&output)
        );
    }
}

#[test]
fn a_lock_dir_variable_that_is_not_utf8_is_the_default() {
    let env = TestEnv::new();
    let dir = non_utf8_lock_dir(&env);
    let output = env
        .ec_launch()
        .env("EC_LAUNCH_LOCK_DIR", &dir)
        .args(["run", "--source", SOURCE, "--", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(lock_files_in(&dir), 1, "{}", describe(&output));

    let output = env
        .ec_launch()
        .env("EC_LAUNCH_LOCK_DIR", &dir)
        .args(["key", SOURCE])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        text(&output.stdout).contains("locks-"),
        "{}",
        describe(&output)
    );
}

#[test]
fn a_source_file_path_that_is_not_utf8_is_read() {
    let env = TestEnv::new();
    let path = env
        .path("")
        .join(OsString::from_vec(b"source-\xff".to_vec()));
    fs::write(&path, format!("{SOURCE}\n")).unwrap();
    let output = env
        .ec_launch()
        .arg("run")
        .arg("--lock-dir")
        .arg(env.lock_dir())
        .arg("--source-file")
        .arg(&path)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(lock_files_in(&env.lock_dir()), 1, "{}", describe(&output));
}
