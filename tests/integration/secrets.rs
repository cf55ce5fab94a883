//! No credential in any output of the binary: log lines at every level, the
//! busy warning, error messages, `key` output, lock file names and records.

use std::fs::{self, File};

use proptest::prelude::*;

use crate::testenv::{BUSY, Outcome, PATIENCE, TestEnv, holders, wait_until};

const MARKER: &str = "XSECRETX";

/// Everything the binary left behind or printed, as one string.
fn everything(env: &TestEnv, outputs: &[&Outcome]) -> String {
    let mut all = String::new();
    for output in outputs {
        all.push_str(&output.stdout);
        all.push_str(&output.stderr);
    }
    if let Ok(entries) = fs::read_dir(env.lock_dir()) {
        for entry in entries.flatten() {
            all.push_str(&entry.file_name().to_string_lossy());
            all.push_str(&fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    all
}

/// Checks that neither `outputs` nor the lock directory holds the marker
/// of `url`'s credentials, in any case.
#[track_caller]
fn assert_no_secret(env: &TestEnv, outputs: &[&Outcome], url: &str) {
    let all = everything(env, outputs);
    assert!(
        !all.to_ascii_uppercase().contains(MARKER),
        "credential of {url} leaked:\n{all}"
    );
}

/// Runs every path through the binary that prints or stores the source.
fn exercise(url: &str) {
    let env = TestEnv::new();
    let ran = env.launch(url).arg("-vv").program(["true"]).run();
    let key = env.key(url).run();
    let key_json = env.key(url).arg("--json").run();

    // Busy and timed-out paths print the holder and the key.
    let lock_file = env.lock_file_of(url);
    let held = File::open(&lock_file).unwrap();
    held.lock().unwrap();
    let busy = env
        .launch(url)
        .arg("-vv")
        .program(["true"])
        .expect_status(BUSY)
        .run();
    let timed_out = env
        .launch(url)
        .args(["--on-busy", "wait", "--wait-timeout", "0.05"])
        .program(["true"])
        .expect_status(BUSY)
        .run();
    drop(held);
    // Another test thread forking at this moment briefly shares our
    // descriptor (and so the lock) until its child execs; wait that out.
    assert!(wait_until(PATIENCE, || holders(&lock_file).is_empty()));

    // A program that cannot run, after the lock was taken.
    let failed = env
        .launch(url)
        .program(["ec-launch-no-such-program"])
        .expect_status(127)
        .run();

    assert_no_secret(
        &env,
        &[&ran, &key, &key_json, &busy, &timed_out, &failed],
        url,
    );
}

#[test]
fn credentials_in_userinfo_and_query_never_reach_any_output() {
    exercise(
        "http://admin:XSECRETXhunter2@10.0.0.5:5004/auto/v5.1?token=XSECRETXabc&duration=60#XSECRETX",
    );
    exercise(
        "https://XSECRETXuser:XSECRETXpw@cdn.example/live/master.m3u8?X-Amz-Signature=XSECRETX1&a=1",
    );
}

#[test]
fn invalid_sources_with_credentials_are_not_echoed_in_errors() {
    let env = TestEnv::new();
    for url in [
        "http://admin:XSECRETX@[::1",
        "http://admin:XSECRETX@host:99999/x",
        "XSECRETX not a url",
        "mailto:XSECRETX@example.com",
    ] {
        let output = env.launch(url).program(["true"]).expect_failure().run();
        assert_no_secret(&env, &[&output], url);
        let key = env.command(["key", url]).expect_failure().run();
        assert_no_secret(&env, &[&key], url);
    }
}

fn secret() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~-]{0,10}".prop_map(|tail| format!("{MARKER}{tail}"))
}

prop_compose! {
    fn url_with_credentials()(
        user in "[a-z]{1,6}",
        password in secret(),
        host in "[a-z]{1,8}\\.[a-z]{2,4}",
        hdhomerun in any::<bool>(),
        token_name in prop::sample::select(vec![
            "token", "api_key", "password", "auth", "sig", "secret", "jwt", "hmac", "hdnts",
            "__token__", "X-Amz-Signature", "X-Goog-Signature", "wmsAuthSign", "accessToken",
            "passphrase", "wowzatokenhash",
        ]),
        token in secret(),
        separator in prop::sample::select(vec!["&", ";"]),
        bare in prop::option::of(secret()),
    ) -> String {
        let path = if hdhomerun { ":5004/auto/v7.1" } else { "/live/stream.ts" };
        let bare = bare.map(|b| format!("{separator}{b}")).unwrap_or_default();
        format!("http://{user}:{password}@{host}{path}?{token_name}={token}{separator}channel=7{bare}")
    }
}

proptest! {
    // Each case runs the binary six times, so keep the count modest; the
    // in-process property tests in `src/secret_props.rs` cover many more URLs.
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn generated_credentials_never_reach_any_output_of_the_binary(url in url_with_credentials()) {
        exercise(&url);
    }
}

/// `run --key NAME` with a source the key rules cannot parse: the source
/// is still recorded, logged and shown by `status`, all redacted.
fn exercise_with_key(url: &str) {
    let env = TestEnv::new();
    let ran = env
        .launch(url)
        .args(["-vv", "--key", "studio-a"])
        .program(["true"])
        .label(url)
        .run();
    let status = env.status().any_status().run();
    let status_json = env.status().arg("--json").any_status().run();
    assert_no_secret(&env, &[&ran, &status, &status_json], url);
}

#[test]
fn sources_without_an_authority_are_redacted_with_key() {
    for url in [
        "admin:XSECRETX@cam/stream",
        "rtsp:admin:XSECRETX@cam/s",
        "rtsp://admin:XSECRETX/pw@cam/s",
        "rtsp://XSECRETX/pw@cam/s",
        "http://h/x?a=1;token=XSECRETX",
        "rtsp://cam/s?XSECRETX",
        "http://h/live;jsessionid=XSECRETX/x.ts",
        "XSECRETX",
    ] {
        exercise_with_key(url);
    }
}

#[test]
fn path_like_sources_are_not_echoed_raw_in_errors() {
    let env = TestEnv::new();
    for source in [
        "//admin:XSECRETX@host/x",
        "/dev/ec-launch-absent?token=XSECRETX",
        "/dev/admin:XSECRETX@absent",
    ] {
        let output = env
            .launch(source)
            .program(["true"])
            .expect_status(66)
            .stderr_contains("cannot be resolved")
            .run();
        assert_no_secret(&env, &[&output], source);
    }
}

#[test]
fn command_line_errors_never_echo_a_credential() {
    let env = TestEnv::new();
    let cases: Vec<Vec<&str>> = vec![
        // A forgotten --source: the URL is an unexpected positional.
        vec!["run", "http://admin:XSECRETX@h/x", "--", "true"],
        vec![
            "run",
            "--source",
            "http://h/x",
            "rtsp://u:XSECRETX@cam/s",
            "--",
            "true",
        ],
        // Invalid values.
        vec![
            "run",
            "--busy-exit-code",
            "http://u:XSECRETX@h/x",
            "--source",
            "http://h/x",
            "--",
            "true",
        ],
        vec![
            "run",
            "--wait-timeout=http://h/x?token=XSECRETX",
            "--source",
            "http://h/x",
            "--",
            "true",
        ],
        vec![
            "run",
            "--on-busy",
            "rtsp://u:XSECRETX@cam/s",
            "--source",
            "http://h/x",
            "--",
            "true",
        ],
        // Unknown flags with a value glued on.
        vec!["run", "--sourc=http://u:XSECRETX@h/x", "--", "true"],
        vec![
            "key",
            "http://h/x?token=XSECRETX",
            "rtsp://u:XSECRETX@cam/s",
        ],
        vec!["status", "--lock-dir", "x", "a", "admin:XSECRETX@cam/s"],
    ];
    for args in cases {
        let output = env
            .command(&args)
            .label(format!("{args:?}"))
            .expect_status(2)
            .stderr_starts_with("error:")
            .run();
        assert_no_secret(&env, &[&output], &args.join(" "));
    }
}

#[test]
fn help_and_version_are_printed_by_clap_unchanged() {
    let env = TestEnv::new();
    env.command(["run", "--help"])
        .stdout_contains("Usage: ec-launch run")
        .stderr_is("")
        .run();
    env.command(["--version"])
        .stdout_is(format!("ec-launch {}\n", env!("CARGO_PKG_VERSION")))
        .run();
    // No subcommand: clap prints help on stderr and exits 2.
    env.command::<[&str; 0], &str>([])
        .expect_status(2)
        .stderr_contains("Usage: ec-launch")
        .run();
}

#[test]
fn a_source_given_as_the_program_is_not_echoed_by_the_exec_error() {
    // `--source` forgotten the other way round: the URL lands after `--`.
    let env = TestEnv::new();
    let url = "http://admin:XSECRETX@h/x?token=XSECRETX";
    let output = env
        .launch("http://h/x")
        .program([url])
        .expect_status(127)
        .stderr_contains("cannot run")
        .run();
    assert_no_secret(&env, &[&output], url);
}
