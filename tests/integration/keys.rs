//! Which sources are one source, through the binary: devices by the kernel's
//! device number, and sources the key rules refuse rather than clean up.

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::process::Command;

use crate::testenv::{TestEnv, describe, holders, require_root};

/// `ec-launch key --json SOURCE` → the key, or a failure with its output.
fn key_of(env: &TestEnv, source: &str) -> String {
    let json = env.key(source).arg("--json").label(source).run().json();
    json["key"].as_str().unwrap().to_owned()
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn links_mknod_copies_and_bind_mounts_of_one_device_are_one_source() {
    require_root!("mknod a copy of /dev/null and bind-mount it");
    let env = TestEnv::new();
    let rdev = fs::metadata("/dev/null").unwrap().rdev();
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let copy = env.path("null-copy");
    let made = Command::new("mknod")
        .arg(&copy)
        .args(["c", &major.to_string(), &minor.to_string()])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", describe(&made));
    let hardlink = env.path("null-hardlink");
    fs::hard_link(&copy, &hardlink).unwrap();
    let symlinked = env.path("null-symlink");
    symlink("/dev/null", &symlinked).unwrap();

    let expected = key_of(&env, "/dev/null");
    assert_eq!(expected, format!("/dev/char/{major}:{minor}"));
    for spelling in [&copy, &hardlink, &symlinked] {
        assert_eq!(key_of(&env, spelling.to_str().unwrap()), expected);
    }
    // The kernel's own name for the device is the key, and derives itself.
    assert_eq!(key_of(&env, &expected), expected);

    // A bind mount of the device over a plain file, in a private mount
    // namespace so nothing is left on the host.
    let target = env.path("bind-target");
    fs::write(&target, "").unwrap();
    let script = format!(
        "mount --bind /dev/null {target} && exec {bin} key --json --lock-dir {dir} {target}",
        target = target.display(),
        bin = crate::testenv::BIN,
        dir = env.lock_dir().display(),
    );
    let bound = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(bound.status.code(), Some(0), "{}", describe(&bound));
    let json: serde_json::Value = serde_json::from_slice(&bound.stdout).unwrap();
    assert_eq!(json["key"], expected.as_str());
}

#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn a_launch_on_a_device_copy_is_refused_while_the_device_is_held() {
    require_root!("mknod a copy of /dev/null");
    let env = TestEnv::new();
    let rdev = fs::metadata("/dev/null").unwrap().rdev();
    let copy = env.path("null-copy");
    let made = Command::new("mknod")
        .arg(&copy)
        .args([
            "c",
            &nix::sys::stat::major(rdev).to_string(),
            &nix::sys::stat::minor(rdev).to_string(),
        ])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", describe(&made));
    let _holder = env.hold("/dev/null", &["sleep", "300"]);
    assert_eq!(holders(&env.lock_file_of("/dev/null")).len(), 1);
    env.launch(&copy)
        .expect_status(75)
        .program_did_not_run()
        .run();
}

#[test]
fn sources_with_whitespace_or_control_characters_are_refused_everywhere() {
    let env = TestEnv::new();
    let sources = [
        "http://10.0.0.5:5004/auto/v5.1 ",
        "http://10.0.0.5:5004/au\tto/v5.1",
        "http://10.0.0.5:5004/au\rto/v5.1",
        "rtsp://cam/a\u{1b}[2Jb",
    ];
    for source in sources {
        env.launch(source)
            .label(format!("{source:?}"))
            .expect_status(65)
            .stderr_contains("whitespace or a control character")
            .program_did_not_run()
            .run();

        for subcommand in ["key", "status"] {
            env.command([subcommand, "--lock-dir"])
                .arg(env.lock_dir())
                .arg(source)
                .label(format!("{subcommand} {source:?}"))
                .expect_status(65)
                .run();
        }

        fs::write(env.path("source"), format!("{source}\n")).unwrap();
        env.launch_from_file(env.path("source"))
            .label(format!("file {source:?}"))
            .expect_status(65)
            .program_did_not_run()
            .run();
    }
}

#[test]
fn a_source_file_line_is_passed_exactly_as_it_was_keyed() {
    let env = TestEnv::new();
    fs::write(env.path("source"), "\nrtsp://cam.local/stream1\r\n\n").unwrap();
    env.launch_from_file(env.path("source"))
        .program(TestEnv::sh(
            "printf %s \"$EC_SOURCE_URL|$EC_SOURCE_KEY\" > got",
        ))
        .run();
    assert_eq!(
        fs::read_to_string(env.path("got")).unwrap(),
        "rtsp://cam.local/stream1|rtsp://cam.local/stream1"
    );
}
