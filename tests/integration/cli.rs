//! `key`, and the packaging aids `completions` and `man`.

use crate::testenv::TestEnv;

#[test]
fn key_prints_the_canonical_key_and_lock_file() {
    let env = TestEnv::new();
    env.command(["key", "--lock-dir", "/run/every-channel/source-locks"])
        .arg("http://10.0.0.5:5004/tuner3/v5.1?duration=60")
        .stdout_is(
            "key        hdhomerun://10.0.0.5/v5.1\n\
             lock_file  /run/every-channel/source-locks/10.0.0.5-v5.1-c2d4c137cb6e4fc8.lock\n",
        )
        .run();
}

#[test]
fn key_json_is_one_object_for_scripts() {
    let env = TestEnv::new();
    let json = env
        .command(["key", "--json", "rtsp://Cam.Local:554/stream1"])
        .env("EC_LAUNCH_LOCK_DIR", "/srv/locks")
        .run()
        .json();
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
    let page = env.command(["man"]).run().stdout;
    assert!(page.contains(".TH ec-launch 1"), "{page}");
    assert!(
        page.contains("EXIT STATUS") && page.contains("127"),
        "{page}"
    );
    for shell in ["bash", "zsh", "fish"] {
        env.command(["completions", shell])
            .label(format!("{shell} completions lack run's flags"))
            .stdout_contains("--on-busy")
            .run();
    }
}
