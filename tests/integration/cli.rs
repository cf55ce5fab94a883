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

/// What bash offers for the words `line` (the last one being completed),
/// using the script `ec-launch completions bash` prints, sourced into a
/// real bash (no rc files) and called the way readline calls it.
fn bash_completes(env: &TestEnv, line: &[&str]) -> Vec<String> {
    let script = env.command(["completions", "bash"]).run().stdout;
    let file = env.path("ec-launch.bash");
    std::fs::write(&file, script).expect("cannot write the completion script");
    let words: Vec<String> = line.iter().map(|w| format!("'{w}'")).collect();
    let cword = line.len() - 1;
    let previous = line[cword.saturating_sub(1)];
    // The function `complete -p` names, called with (command, word, previous
    // word) and COMP_WORDS/COMP_CWORD as readline sets them.
    let program = format!(
        "source '{}' || exit 1\n\
         function=$(complete -p ec-launch | sed -n 's/.* -F \\([^ ]*\\) .*/\\1/p')\n\
         [ -n \"$function\" ] || {{ echo 'no completion function for ec-launch' >&2; exit 1; }}\n\
         COMP_WORDS=({})\nCOMP_CWORD={cword}\nCOMP_LINE=\"${{COMP_WORDS[*]}}\"\nCOMP_POINT=${{#COMP_LINE}}\n\
         \"$function\" ec-launch '{}' '{previous}'\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        file.display(),
        words.join(" "),
        line[cword],
    );
    let output = std::process::Command::new("bash")
        .args(["--noprofile", "--norc", "-c", &program])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("cannot run bash");
    assert!(
        output.status.success(),
        "bash failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_every_subcommands_flags_for_the_hyphenated_binary_name() {
    let env = TestEnv::new();
    for (line, want) in [
        (&["ec-launch", "status", "--r"][..], &["--readers"][..]),
        (&["ec-launch", "run", "--tu"], &["--tuners"]),
        (&["ec-launch", "run", "--on-b"], &["--on-busy"]),
        (&["ec-launch", "key", "--j"], &["--json"]),
        (&["ec-launch", "completions", "ba"], &["bash"]),
        (&["ec-launch", "run", "--on-busy", "w"], &["wait"]),
        (&["ec-launch", "sta"], &["status"]),
    ] {
        assert_eq!(bash_completes(&env, line), want, "completing {line:?}");
    }
}

/// `docs/testing.md` names the directory the real-systemd suite keeps each
/// run's console and journal in (`tests/systemd/scenarios.rs`:
/// `CARGO_TARGET_TMPDIR/systemd-suite/<pid>/`), as this build lays out
/// `target/` (it once said `target/tmp/…`, which the explicit host target
/// of `.cargo/config.toml` moves under `target/<host triple>/`).
#[test]
fn the_testing_doc_names_the_directory_the_systemd_suite_logs_to() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |file: &str| {
        std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
    };
    let suite = read("tests/systemd/scenarios.rs");
    assert!(
        suite.contains(r#"PathBuf::from(env!("CARGO_TARGET_TMPDIR"))"#)
            && suite.contains(r#".join("systemd-suite")"#),
        "the suite no longer logs under CARGO_TARGET_TMPDIR/systemd-suite: update this test and docs/testing.md"
    );
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    // Under the checkout: `target/<triple>/tmp`, the triple spelled out as
    // the doc does; elsewhere (CARGO_TARGET_DIR) only the tail is checked.
    let documented = match tmp.strip_prefix(root) {
        Ok(relative) => {
            let parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            match parts.as_slice() {
                [target, _triple, tmp] => {
                    format!("`{target}/<host triple>/{tmp}/systemd-suite/<pid>/`")
                }
                _ => format!("`{}/systemd-suite/<pid>/`", relative.display()),
            }
        }
        Err(_) => "tmp/systemd-suite/<pid>/`".to_owned(),
    };
    let doc = read("docs/testing.md");
    assert!(
        doc.contains(&documented),
        "docs/testing.md does not name {documented} as the suite's log directory"
    );
}
