//! `key`, and the packaging aids `completions` and `man`.

use crate::testenv::{TestEnv, describe, text};

#[test]
fn key_prints_the_canonical_key_and_lock_file() {
    let env = TestEnv::new();
    let output = env
        .ec_launch()
        .args(["key", "--lock-dir", "/run/every-channel/source-locks"])
        .arg("http://10.0.0.5:5004/tuner3/v5.1?duration=60")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(
        text(&output.stdout),
        "key        hdhomerun://10.0.0.5/v5.1\n\
         lock_file  /run/every-channel/source-locks/10.0.0.5-v5.1-c2d4c137cb6e4fc8.lock\n"
    );
}

#[test]
fn key_json_is_one_object_for_scripts() {
    let env = TestEnv::new();
    let output = env
        .ec_launch()
        .env("EC_LAUNCH_LOCK_DIR", "/srv/locks")
        .args(["key", "--json", "rtsp://Cam.Local:554/stream1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["key"], "rtsp://cam.local/stream1");
    assert!(
        json["lock_file"]
            .as_str()
            .unwrap()
            .starts_with("/srv/locks/cam.local-stream1-")
    );
}

#[test]
fn the_man_page_and_completions_are_generated_from_the_real_flags() {
    let env = TestEnv::new();
    let man = env.ec_launch().arg("man").output().unwrap();
    assert_eq!(man.status.code(), Some(0), "{}", describe(&man));
    let page = text(&man.stdout);
    assert!(page.contains(".TH ec-launch 1"), "{page}");
    assert!(
        page.contains("EXIT STATUS") && page.contains("127"),
        "{page}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let script = env
            .ec_launch()
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_eq!(script.status.code(), Some(0), "{}", describe(&script));
        assert!(
            text(&script.stdout).contains("--on-busy"),
            "{shell} completions lack run's flags"
        );
    }
}
