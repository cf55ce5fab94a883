//! The incident-day paths: what a busy or waiting launch tells the operator,
//! and that every command it suggests works when pasted.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;

use crate::testenv::{BIN, BUSY, Guard, PATIENCE, TestEnv, describe, text, wait_until};

const SOURCE: &str = "http://10.0.0.5:5004/auto/v5.1";

/// The command between the backticks after "see" in a log line.
fn suggested_command(stderr: &str) -> String {
    let start = stderr
        .find("(see `")
        .unwrap_or_else(|| panic!("no suggested command in: {stderr}"))
        + "(see `".len();
    let end = stderr[start..].find('`').expect("closing backtick") + start;
    stderr[start..end].to_owned()
}

/// Runs `command` as an operator would paste it: through a shell, with
/// `ec-launch` on the PATH.
#[track_caller]
fn paste(env: &TestEnv, command: &str) -> std::process::Output {
    let bin_dir = Path::new(BIN).parent().expect("binary dir");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(env.path(""))
        .env("PATH", path)
        .env_remove("EC_LAUNCH_LOCK_DIR")
        .output()
        .expect("run sh")
}

/// Holds a source launched with `extra` flags, then checks that a duplicate
/// launch's suggested command, pasted into a shell, names the holder.
#[track_caller]
fn suggested_status_works(lock_dir_name: &str, extra: &[&str]) {
    let env = TestEnv::new();
    let lock_dir = env.path(lock_dir_name);
    let launch = |program: &[&str]| {
        let mut command = env.ec_launch();
        command
            .arg("run")
            .arg("--lock-dir")
            .arg(&lock_dir)
            .args(["--source", SOURCE])
            .args(extra)
            .arg("--")
            .args(program);
        command
    };
    // The program runs only once it holds the lock: its mark says so.
    let holder = Guard::spawn(&mut launch(&["sh", "-c", "touch holding; exec sleep 300"]));
    assert!(
        wait_until(PATIENCE, || env.path("holding").exists()),
        "the holder never started"
    );
    let busy = launch(&["true"]).output().expect("run");
    assert_eq!(busy.status.code(), Some(BUSY), "{}", describe(&busy));
    let stderr = text(&busy.stderr);
    let command = suggested_command(&stderr);
    let pasted = paste(&env, &command);
    assert_eq!(
        pasted.status.code(),
        Some(0),
        "the suggested `{command}` did not work: {}",
        describe(&pasted)
    );
    let listing = text(&pasted.stdout);
    assert!(
        listing.contains(&holder.pid().to_string()) && listing.contains("held"),
        "`{command}` does not show the holder {}: {listing}",
        holder.pid()
    );
    // The lock directory's name really is the odd one (no test of a test).
    assert!(
        lock_dir
            .as_os_str()
            .as_bytes()
            .ends_with(lock_dir_name.as_bytes())
    );
}

#[test]
fn the_status_command_a_busy_launch_suggests_works_when_pasted() {
    suggested_status_works("locks", &[]);
}

#[test]
fn the_suggested_status_command_works_for_an_operator_named_key() {
    suggested_status_works("locks", &["--key", "studio-a"]);
}

#[test]
fn the_suggested_status_command_survives_quotes_and_spaces() {
    suggested_status_works("lock dir's", &["--key", "Studio A's feed"]);
}

#[test]
fn a_waiting_launch_says_who_it_waits_for_and_how_long_it_waited() {
    let env = TestEnv::new();
    let holder = env.hold(
        SOURCE,
        &TestEnv::sh("while [ ! -e release ]; do sleep 0.02; done"),
    );
    let mut waiter = env
        .launch(SOURCE)
        .args(["--on-busy", "wait"])
        .program(["true"])
        .spawn();
    // Announced while the wait lasts (read before the holder lets go),
    // naming the holder. Read on a thread, so a silent waiter fails the
    // test instead of hanging it.
    let mut stderr = BufReader::new(waiter.0.stderr.take().expect("stderr"));
    let (sender, receiver) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut first = String::new();
        let _ = stderr.read_line(&mut first);
        let _ = sender.send(first);
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });
    let waiting = receiver
        .recv_timeout(PATIENCE)
        .expect("the waiter logged nothing while it waited");
    assert!(waiter.running(), "the waiter must still be waiting");
    assert!(
        waiting.contains("waiting") && waiting.contains(&format!("pid {}", holder.pid())),
        "the first line must announce the wait and name the holder: {waiting}"
    );
    std::fs::write(env.path("release"), "").unwrap();
    let (code, _) = waiter.finish();
    let rest = reader.join().expect("reader thread");
    assert_eq!(code, Some(0), "{rest}");
    assert!(
        rest.lines()
            .any(|l| l.contains("acquired") && l.contains("after waiting")),
        "no line says how long it waited: {rest}"
    );
}
