//! Records are never trusted (issue #16, items 5 and 6; ECP-0135 section 6).
//!
//! A lock file's record and a cluster key's value are written by whoever can
//! write the file or the key: an older version that did not redact, another
//! tool, an operator with `etcdctl put`. These tests plant records by hand
//! (a lock file written here and held with a real `flock(2)`; values put
//! into a real etcd) and run every command that shows them: no credential
//! may appear in any output, no record may crash a command, and the exit
//! statuses a unit relies on (75 busy) and `status`'s documented ones stay.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::cluster_node::Node;
use crate::etcd_server::EtcdServer;
use crate::testenv::{BUSY, Invocation, TestEnv};

/// Every planted secret contains this; no output may.
const SECRET: &str = "XSECRETX";

/// A source whose device (127.0.0.41) refuses connections at once.
const SOURCE: &str = "http://127.0.0.41:5004/auto/v5.1";
/// Another channel of that device.
const OTHER: &str = "http://127.0.0.41:5004/auto/v7.1";

/// Credentials in each of the shapes a record's text can carry them: a URL
/// with userinfo and a token, `user:password@`, a bare parameter, text
/// around a URL.
fn credentials(field: &str) -> [String; 4] {
    [
        format!("http://admin:{SECRET}-{field}@127.0.0.41:5004/auto/v5.1?token={SECRET}"),
        format!("{field}:{SECRET}@node-x"),
        format!("x?{SECRET}"),
        format!("{field} https://u:{SECRET}@h/?sig={SECRET}"),
    ]
}

/// A lock record with a credential in every textual field (the `n`th shape).
fn hostile_lock_record(n: usize, slot: bool) -> serde_json::Value {
    let text = |field: &str| credentials(field)[n % 4].clone();
    let mut record = serde_json::json!({
        "pid": 999_999, "unit": text("unit"), "source": text("source"), "key": text("key"),
        "program": text("program"), "started_at": text("started_at"),
        "started_unix": 1_700_000_000_u64, "ec_launch_version": text("version"),
        "start_ticks": 1, "pid_namespace": 1, "lock_dir_inode": 1,
    });
    if slot {
        record["device"] = text("device").into();
        record["slot"] = 0.into();
        record["tuners"] = 1.into();
        record["device_id"] = text("device_id").into();
    }
    record
}

/// A cluster record with a credential in every textual field.
fn hostile_cluster_record(n: usize) -> Vec<u8> {
    let text = |field: &str| credentials(field)[n % 4].clone();
    serde_json::json!({
        "node": text("node"), "unit": text("unit"), "pid": 4242, "boot_id": text("boot_id"),
        "since": 1_700_000_000_u64, "source": text("source"), "version": text("version"),
    })
    .to_string()
    .into_bytes()
}

/// Replaces a file's bytes and holds an exclusive `flock(2)` on it until
/// the returned lock is dropped, as a holder would.
fn plant_and_hold(path: &Path, bytes: &[u8]) -> nix::fcntl::Flock<fs::File> {
    fs::write(path, bytes).unwrap();
    let file = fs::File::open(path).unwrap();
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap_or_else(|e| panic!("cannot hold {}: {e}", path.display()))
}

/// The one slot file of the environment's lock directory.
fn slot_file(env: &TestEnv) -> PathBuf {
    let slots: Vec<PathBuf> = fs::read_dir(env.lock_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "slot"))
        .collect();
    assert_eq!(slots.len(), 1, "{slots:?}");
    slots.into_iter().next().unwrap()
}

/// `status`'s documented exit statuses (docs/exit-codes.md).
const STATUS_CODES: [i32; 7] = [0, 3, 4, 5, 6, 7, 69];

/// Runs a `status` invocation: its exit status must be a documented one
/// (a panic is 101, an abort 134), and its `--json` must be JSON.
#[track_caller]
fn status_documented(invocation: Invocation<'_>, json: bool) {
    let outcome = invocation.any_status().run();
    assert!(
        outcome
            .code
            .is_some_and(|code| STATUS_CODES.contains(&code)),
        "not a status exit code:\n{}",
        outcome.describe()
    );
    if json {
        let _ = outcome.json();
    }
}

/// Every command that shows a lock record: `status` in every form, and
/// `run`'s busy and wait messages for a source lock and a tuner slot.
fn every_lock_record_reader(env: &TestEnv, check: &dyn Fn(Invocation<'_>) -> Invocation<'_>) {
    for form in [&[][..], &["--json"]] {
        let json = !form.is_empty();
        for extra in [&[][..], &[SOURCE], &["--readers"], &["--device"]] {
            status_documented(check(env.status().args([form, extra].concat())), json);
        }
    }
    for wait in [
        &["-vv"][..],
        &["-vv", "--on-busy", "wait", "--wait-timeout", "0.5"],
    ] {
        check(env.launch(SOURCE).args(wait))
            .expect_status(BUSY)
            .program_did_not_run()
            .run();
        check(env.launch(OTHER).args(["--tuners", "1"]).args(wait))
            .expect_status(BUSY)
            .program_did_not_run()
            .run();
    }
}

#[test]
fn no_credential_in_any_field_of_a_lock_files_record_reaches_any_output() {
    for shape in 0..4 {
        let env = TestEnv::new();
        // Real files at the real paths: a launch makes them, then they are
        // overwritten by hand and held by this process.
        env.launch(SOURCE)
            .args(["--tuners", "1"])
            .program(["true"])
            .run();
        let line = |record: serde_json::Value| format!("{record}\n").into_bytes();
        let _source = plant_and_hold(
            &env.lock_file_of(SOURCE),
            &line(hostile_lock_record(shape, false)),
        );
        let _slot = plant_and_hold(&slot_file(&env), &line(hostile_lock_record(shape, true)));
        every_lock_record_reader(&env, &|invocation| {
            invocation
                .label(format!("credential shape {shape}"))
                .output_lacks(SECRET)
        });
    }
}

#[test]
fn hostile_lock_file_records_are_reported_and_never_change_an_exit_status() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let huge = serde_json::json!({"pid": 1, "unit": "u".repeat(200_000), "source": "http://h/",
        "key": "k", "program": "p", "started_at": "t", "started_unix": 0, "ec_launch_version": "v"});
    // (record, whether it is one: only a record that parses is shown).
    let records: Vec<(Vec<u8>, bool)> = vec![
        (br#"{"pid":-1,"unit":null,"source":"s","key":"k","program":"p","started_at":"t","started_unix":0,"ec_launch_version":"v"}"#.to_vec(), false),
        (br#"{"pid":99999999999999,"unit":5,"source":{},"key":[],"program":null,"started_at":1e300,"started_unix":-5,"ec_launch_version":true}"#.to_vec(), false),
        (br#"{"pid":1,"unit":null,"source":"s","key":"k","program":"p","started_at":"+10000-01-01T00:00:00Z","started_unix":18446744073709551615,"ec_launch_version":"v","start_ticks":18446744073709551615,"tuners":4294967295,"slot":4294967295}"#.to_vec(), true),
        (b"{\"pid\":1,\"unit\":\"\xff\xfe\",\"source\":\"s\"}".to_vec(), false),
        (br#"{"pid":1,"unit":"\ud800","source":"s","key":"k","program":"p","started_at":"t","started_unix":0,"ec_launch_version":"v"}"#.to_vec(), false),
        (deep.into_bytes(), false),
        (huge.to_string().into_bytes(), false),
        (b"\xff\x00\x1b[2J".to_vec(), false),
        (Vec::new(), false),
        (b"null".to_vec(), false),
    ];
    for (n, (record, readable)) in records.iter().enumerate() {
        let env = TestEnv::new();
        env.launch(SOURCE)
            .args(["--tuners", "1"])
            .program(["true"])
            .run();
        let _source = plant_and_hold(&env.lock_file_of(SOURCE), record);
        let _slot = plant_and_hold(&slot_file(&env), record);
        every_lock_record_reader(&env, &|invocation| {
            invocation
                .label(format!("record {n}"))
                .output_lacks("panicked")
        });
        if !readable {
            env.status()
                .arg(SOURCE)
                .label(format!("record {n}"))
                .stdout_contains("the lock file has no readable launch record")
                .run();
        }
    }
}

// --- cluster records --------------------------------------------------------

/// The etcd key of [`SOURCE`] and of slot 0 of its device (ECP-0134's layout).
const SOURCE_KEY: &str = "/every-channel/ec-launch/v1/sources/hdhomerun:%2F%2F127.0.0.41%2Fv5.1";
const SLOT_KEY: &str = "/every-channel/ec-launch/v1/devices/127.0.0.41/slot-0";

/// Puts `value` (any bytes) under `key` through etcd's JSON gateway, with no
/// lease: a record only `ec-launch` itself would never write.
fn put(etcd: &EtcdServer, key: &str, value: &[u8]) {
    let base64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let body =
        serde_json::json!({"key": base64(key.as_bytes()), "value": base64(value)}).to_string();
    let address = etcd.url().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "POST /v3/kv/put HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "put {key}: {answer}");
}

/// Every command that shows a cluster record: `status --etcd` in every form
/// (the whole cluster and one source) and `run`'s cluster busy and wait
/// messages for a source and a tuner slot.
fn every_cluster_record_reader(
    env: &TestEnv,
    etcd: &EtcdServer,
    check: &dyn Fn(Invocation<'_>) -> Invocation<'_>,
) {
    let endpoints = etcd.endpoints();
    let node = Node::new(env, "b", etcd.endpoints());
    for form in [&[][..], &["--json"]] {
        for only in [&[][..], &[SOURCE]] {
            status_documented(
                check(
                    env.command(["status", "--etcd", &endpoints, "--node", "b", "--lock-dir"])
                        .arg(env.path("no-lock-dir"))
                        .args(form)
                        .args(only),
                ),
                !form.is_empty(),
            );
        }
    }
    for wait in [&[][..], &["--on-busy", "wait", "--wait-timeout", "0.5"]] {
        check(node.launch(SOURCE).args(["-vv"]).args(wait))
            .expect_status(BUSY)
            .program_did_not_run()
            .run();
        check(node.launch(OTHER).args(["-vv", "--tuners", "1"]).args(wait))
            .expect_status(BUSY)
            .program_did_not_run()
            .run();
    }
}

#[test]
fn no_credential_in_any_field_of_a_cluster_record_or_key_reaches_any_output() {
    let etcd = EtcdServer::start();
    for shape in 0..4 {
        let env = TestEnv::new();
        put(&etcd, SOURCE_KEY, &hostile_cluster_record(shape));
        put(&etcd, SLOT_KEY, &hostile_cluster_record(shape + 1));
        // A key no launcher writes, named like a source with credentials.
        put(
            &etcd,
            &format!(
                "/every-channel/ec-launch/v1/sources/http:%2F%2Fadmin:{SECRET}@h%2Fx?token={SECRET}"
            ),
            &hostile_cluster_record(shape + 2),
        );
        every_cluster_record_reader(&env, &etcd, &|invocation| {
            invocation
                .label(format!("credential shape {shape}"))
                .output_lacks(SECRET)
        });
    }
}

#[test]
fn hostile_cluster_records_are_reported_and_never_change_an_exit_status() {
    let etcd = EtcdServer::start();
    let record = |since: &str, node: &str| {
        format!(
            r#"{{"node":{node},"unit":null,"pid":1,"boot_id":null,"since":{since},"source":"http://h/","version":"v"}}"#
        )
        .into_bytes()
    };
    // (what it is, the value, how status and run's busy message report it).
    let unreadable = (
        "held under an unreadable record",
        "an unreadable record under",
    );
    let wild = ("an unreadable time (", "an unreadable time (");
    let values: Vec<(&str, Vec<u8>, (&str, &str))> = vec![
        ("year 10000", record("253402300800", "\"n\""), wild),
        ("u64::MAX", record("18446744073709551615", "\"n\""), wild),
        ("a negative time", record("-1", "\"n\""), unreadable),
        ("a float time", record("1e300", "\"n\""), unreadable),
        ("a time as text", record("\"2026-01-01T00:00:00Z\"", "\"n\""), unreadable),
        ("a wrong type", record("0", "5"), unreadable),
        ("a lone surrogate", record("0", "\"\\ud800\""), unreadable),
        ("a huge pid", br#"{"node":"n","unit":null,"pid":99999999999999,"boot_id":null,"since":0,"source":"s","version":"v"}"#.to_vec(), unreadable),
        ("non-UTF-8", b"{\"node\":\"\xff\xfe\",\"unit\":null,\"pid\":1,\"boot_id\":null,\"since\":0,\"source\":\"s\",\"version\":\"v\"}".to_vec(), unreadable),
        ("deep nesting", format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(), unreadable),
        ("a huge string", record("0", &format!("\"{}\"", "n".repeat(1_000_000))), unreadable),
        ("garbage", b"\xff\x00\x1b[2J".to_vec(), unreadable),
        ("nothing", Vec::new(), unreadable),
        ("null", b"null".to_vec(), unreadable),
    ];
    for (what, value, (in_status, in_run)) in values {
        let env = TestEnv::new();
        put(&etcd, SOURCE_KEY, &value);
        put(&etcd, SLOT_KEY, &value);
        every_cluster_record_reader(&env, &etcd, &|invocation| {
            invocation.label(what).output_lacks("panicked")
        });
        env.command(["status", "--etcd", &etcd.endpoints(), "--lock-dir"])
            .arg(env.path("no-lock-dir"))
            .label(what)
            .stdout_contains(in_status)
            .run();
        Node::new(&env, "b", etcd.endpoints())
            .launch(SOURCE)
            .label(what)
            .expect_status(BUSY)
            .stderr_contains(in_run)
            .program_did_not_run()
            .run();
    }
}
