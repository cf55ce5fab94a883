//! Fixtures for the cluster-mode tests (issue #12): a "node" is a lock
//! directory of its own plus a `--node` name, so three launchers on this one
//! machine stand for three machines that share only etcd; a "reader" is the
//! program they run, standing for `ec-node` reading a tuner.
//!
//! The reader is how a test sees overlap without trusting the code under
//! test: it takes one of `tuner.<i>` with `flock -n` and holds it until it
//! dies. The kernel arbitrates that lock, so a reader that finds every tuner
//! file taken proves two readers ran at once, exactly, whatever the clocks
//! say: it writes the fact to `overlaps` and exits 99. For figures (failover
//! times, the fence margin) and for the order of lives each reader also logs
//! its own start and, through a watcher that reads a pipe only the reader
//! holds open, its stop, on `CLOCK_REALTIME` in microseconds (bash's
//! `$EPOCHREALTIME`: no fork between the event and its stamp).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::invocation::Invocation;
use crate::netns::Netns;
use crate::testenv::{Guard, PATIENCE, TestEnv, alive, wait_until};

/// The lease TTL of the tests: small, but sane on a loaded 2-core machine.
pub const TTL: Duration = Duration::from_secs(6);
/// The stop grace of the tests: with the fixed 1 s margin the fence fires
/// 4 s after the last renewal was sent.
pub const STOP_GRACE: Duration = Duration::from_secs(1);
/// The fixed margin of the design (ECP-0134).
pub const MARGIN: Duration = Duration::from_secs(1);

/// The exit status of a fenced launcher.
pub const FENCED: i32 = 76;
/// etcd unreachable, TLS failure, server not trusted.
pub const UNAVAILABLE: i32 = 69;
/// etcd refused our credentials.
pub const NO_PERMISSION: i32 = 77;

/// The reader program (see the module doc): `reader TAG TUNERS [SECONDS]`.
const READER: &str = r#"#!/bin/bash
# reader TAG TUNERS [SECONDS]: stands for ec-node reading one of TUNERS tuners.
cd "$(dirname "$0")" || exit 97
tag=$1 tuners=$2 secs=${3:-600}
# The watcher: reads a pipe whose only write end is this reader's fd 7
# (kept across exec), so its read returns at the reader's death; in a
# session of its own, so no signal for the reader's process group reaches
# it. It says it is ready just before it blocks, and the reader starts
# reading only then: a stop is stamped when it happens, never late. It
# closes the inherited lock descriptors first: it reads no tuner, and a
# holder of the source lock is a reader the launcher stops (ECP-0135).
mkfifo "ready.$tag" || exit 97
exec 7> >(exec setsid bash -c '
  [ -n "$EC_SOURCE_LOCK_FD" ] && exec {EC_SOURCE_LOCK_FD}>&-
  [ -n "$EC_TUNER_SLOT_FD" ] && exec {EC_TUNER_SLOT_FD}>&-
  echo > "ready.$1"; read -r _; echo "stop $1 $EPOCHREALTIME" >> events' bash "$tag")
read -r _ < "ready.$tag"
for ((i = 0; i < tuners; i++)); do
  exec 9>>"tuner.$i"
  if flock -n 9; then
    echo "start $tag $EPOCHREALTIME $$ $i $PPID" >> events
    exec sleep "$secs"
  fi
  exec 9>&-
done
echo "overlap $tag $EPOCHREALTIME" >> overlaps
exit 99
"#;

/// Now on `CLOCK_REALTIME`, in microseconds, like the readers' stamps.
#[must_use]
pub fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros()
}

/// Microseconds as seconds, for printed figures.
#[must_use]
#[allow(clippy::cast_precision_loss)]
pub fn secs(micros: i128) -> f64 {
    micros as f64 / 1e6
}

/// One node of the test cluster: its own lock directory and `--node` name,
/// optionally inside a network namespace.
#[derive(Debug)]
pub struct Node<'e> {
    env: &'e TestEnv,
    name: String,
    endpoints: String,
    netns: Option<&'e Netns>,
    ttl: u64,
    stop_grace: u64,
}

impl<'e> Node<'e> {
    /// A node named `name` that talks to etcd at `endpoints` (comma list).
    pub fn new(env: &'e TestEnv, name: &str, endpoints: impl Into<String>) -> Self {
        let script = env.path("reader");
        if !script.exists() {
            fs::write(&script, READER).expect("write the reader");
            fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod reader");
        }
        Self {
            env,
            name: name.to_owned(),
            endpoints: endpoints.into(),
            netns: None,
            ttl: TTL.as_secs(),
            stop_grace: STOP_GRACE.as_secs(),
        }
    }

    /// Nodes named `names`, all talking to etcd at `endpoints`.
    pub fn each<const N: usize>(env: &'e TestEnv, endpoints: &str, names: [&str; N]) -> [Self; N] {
        names.map(|name| Self::new(env, name, endpoints))
    }

    /// Its launchers run inside `netns` (they see only its interfaces).
    #[must_use]
    pub fn inside(mut self, netns: &'e Netns) -> Self {
        self.netns = Some(netns);
        self
    }

    /// Its launchers use `--etcd-ttl SECS` instead of [`TTL`].
    #[must_use]
    pub fn ttl(mut self, secs: u64) -> Self {
        self.ttl = secs;
        self
    }

    /// Its launchers use `--etcd-stop-grace SECS` instead of [`STOP_GRACE`].
    #[must_use]
    pub fn stop_grace(mut self, secs: u64) -> Self {
        self.stop_grace = secs;
        self
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    #[must_use]
    pub fn lock_dir(&self) -> PathBuf {
        self.env.path(&format!("locks-{}", self.name))
    }

    /// `ec-launch run --lock-dir <its dir> --source SOURCE --node NAME
    /// --etcd ENDPOINTS --etcd-ttl 6 --etcd-stop-grace 1 …` (its TTL), to be finished
    /// like any invocation (the program is `touch ran` unless said).
    pub fn launch(&self, source: &str) -> Invocation<'e> {
        self.env
            .launch_in(self.lock_dir(), source)
            .args(["--node", &self.name, "--etcd", &self.endpoints])
            .args(["--etcd-ttl", &self.ttl.to_string()])
            .args(["--etcd-stop-grace", &self.stop_grace.to_string()])
    }

    /// `ec-launch status --etcd …` as this node sees it: its endpoints,
    /// `--node` name and lock directory.
    pub fn status(&self) -> Invocation<'e> {
        status_etcd(self.env, &self.endpoints, &self.name, self.lock_dir())
    }

    /// Starts a launcher of the reader `tag` on `source` with `extra` flags
    /// (one tuner file: the source is the tuner).
    pub fn start_reader(&self, source: &str, tag: &str, extra: &[&str]) -> Launcher {
        self.start(
            self.launch(source)
                .args(extra)
                .program(reader_program(self.env, tag, 1)),
        )
    }

    /// Starts `invocation` in the background: stdin and stdout null, stderr
    /// (debug log included with `-vv`) to a file, inside the node's network
    /// namespace if it has one. Killed when dropped.
    pub fn start(&self, invocation: Invocation<'_>) -> Launcher {
        self.spawn(invocation, Stdio::null())
    }

    /// Starts `invocation`, whose program logs its life as `tag` (a
    /// [`reader_program`] or the like), and waits until that program runs;
    /// fails the test with the launcher's status and log if it never does.
    #[track_caller]
    pub fn start_running(&self, invocation: Invocation<'_>, tag: &str) -> Launcher {
        let mut launcher = self.start(invocation);
        wait_until(PATIENCE, || {
            Timeline::read(self.env).life(tag).is_some() || !launcher.running()
        });
        assert!(
            Timeline::read(self.env).life(tag).is_some(),
            "node {} never started {tag} (status {:?}):\n{}",
            self.name,
            launcher.exit_within(Duration::ZERO),
            launcher.log()
        );
        launcher
    }

    fn spawn(&self, invocation: Invocation<'_>, stdin: Stdio) -> Launcher {
        let mut command = invocation.args(["-vv"]).to_command();
        let log = self.env.path(&format!(
            "{}-{}.log",
            self.name,
            LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        command
            .stdin(stdin)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("create launcher log"));
        if let Some(netns) = self.netns {
            netns.enter_on_spawn(&mut command);
        }
        Launcher {
            guard: Guard(command.spawn().expect("spawn ec-launch")),
            log,
            dir: self.env.path(""),
        }
    }
}

/// `ec-launch status --etcd ENDPOINTS --node NODE --lock-dir DIR`: the
/// cluster as node `node` sees it from a machine whose lock directory is
/// `lock_dir`, to be finished with more arguments and expectations.
pub fn status_etcd<'e>(
    env: &'e TestEnv,
    endpoints: &str,
    node: &str,
    lock_dir: impl AsRef<std::ffi::OsStr>,
) -> Invocation<'e> {
    env.command(["status", "--etcd", endpoints, "--node", node])
        .arg("--lock-dir")
        .arg(lock_dir)
}

/// Starts each node's invocation, all blocked in `read` on one pipe until
/// its only write end closes: the closest thing to launchers started
/// together on separate machines.
pub fn start_together<'e>(invocations: Vec<(&Node<'e>, Invocation<'e>)>) -> Vec<Launcher> {
    let (gate, gate_writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let launchers = invocations
        .into_iter()
        .map(|(node, invocation)| {
            node.spawn(
                invocation.through_shell("read _; exec \"$@\""),
                Stdio::from(gate.try_clone().expect("dup the gate")),
            )
        })
        .collect();
    drop(gate);
    drop(gate_writer);
    launchers
}

static LAUNCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The reader as a program: `reader TAG TUNERS`.
#[must_use]
pub fn reader_program(env: &TestEnv, tag: &str, tuners: usize) -> Vec<String> {
    vec![
        env.path("reader").display().to_string(),
        tag.to_owned(),
        tuners.to_string(),
    ]
}

/// A reader that runs for `seconds` and then ends on its own.
#[must_use]
pub fn brief_reader_program(env: &TestEnv, tag: &str, tuners: usize, seconds: f64) -> Vec<String> {
    let mut program = reader_program(env, tag, tuners);
    program.push(format!("{seconds}"));
    program
}

/// A background `ec-launch`, its stderr in a file; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Launcher {
    guard: Guard,
    log: PathBuf,
    /// The environment's directory, where its reader logs.
    dir: PathBuf,
}

/// Also SIGKILLs its reader if that still runs: the parent-death signal
/// should have taken it, but that is under test too, and a failed test must
/// leave no reader behind.
impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.guard.0.kill();
        let _ = self.guard.0.wait();
        for life in Timeline::read_in(&self.dir).lives {
            if life.parent == self.pid() && life.stop.is_none() {
                let pid = nix::unistd::Pid::from_raw(i32::try_from(life.pid).expect("pid"));
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

impl Launcher {
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Its exit status once it exits within `limit` (128+signal when a
    /// signal ended it, like a shell), `None` while it still runs.
    pub fn exit_within(&mut self, limit: Duration) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let mut status = None;
        wait_until(limit, || {
            status = self.guard.0.try_wait().expect("try_wait");
            status.is_some()
        });
        status.map(|s| s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)))
    }

    /// True while it has not exited.
    pub fn running(&mut self) -> bool {
        self.guard.running()
    }

    /// What it wrote to stderr so far.
    #[must_use]
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` to it (only it: its child has a process group of its
    /// own).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pid"));
        nix::sys::signal::kill(pid, signal).expect("signal the launcher");
    }
}

/// One reader's life as it logged it, in microseconds of `CLOCK_REALTIME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Life {
    pub tag: String,
    pub pid: u32,
    /// Its launcher.
    pub parent: u32,
    pub start: u128,
    /// `None` while it runs.
    pub stop: Option<u128>,
}

impl Life {
    /// True if the two lives share an instant (a life still running extends
    /// to the end of time).
    #[must_use]
    pub fn overlaps(&self, other: &Life) -> bool {
        let end = |life: &Life| life.stop.unwrap_or(u128::MAX);
        self.start < end(other) && other.start < end(self)
    }
}

/// Everything the readers of one environment logged.
#[derive(Debug, Default)]
pub struct Timeline {
    pub lives: Vec<Life>,
    /// Lines of `overlaps`: a reader found every tuner file taken.
    pub overlaps: Vec<String>,
}

fn parse_stamp(text: &str) -> u128 {
    let (seconds, micros) = text.split_once('.').expect("stamp sec.usec");
    seconds.parse::<u128>().expect("stamp seconds") * 1_000_000
        + micros.parse::<u128>().expect("stamp micros")
}

impl Timeline {
    /// Reads `events` and `overlaps` of `env`.
    #[must_use]
    pub fn read(env: &TestEnv) -> Self {
        Self::read_in(&env.path(""))
    }

    /// Reads `events` and `overlaps` in `dir`.
    #[must_use]
    pub fn read_in(dir: &Path) -> Self {
        let mut lives: BTreeMap<String, Life> = BTreeMap::new();
        let events = fs::read_to_string(dir.join("events")).unwrap_or_default();
        for line in events.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["start", tag, stamp, pid, _tuner, parent] => {
                    lives.insert(
                        (*tag).to_owned(),
                        Life {
                            tag: (*tag).to_owned(),
                            pid: pid.parse().expect("reader pid"),
                            parent: parent.parse().expect("reader parent pid"),
                            start: parse_stamp(stamp),
                            stop: None,
                        },
                    );
                }
                ["stop", tag, stamp] => {
                    if let Some(life) = lives.get_mut(*tag) {
                        life.stop = Some(parse_stamp(stamp));
                    }
                }
                // A line being written right now.
                _ => {}
            }
        }
        let mut lives: Vec<Life> = lives.into_values().collect();
        lives.sort_by_key(|l| l.start);
        Self {
            lives,
            overlaps: fs::read_to_string(dir.join("overlaps"))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect(),
        }
    }

    /// Like [`Self::read`] once every life whose reader is dead has its stop
    /// logged (the watcher writes it a moment after the death), so an
    /// assertion never takes a dead reader for a running one.
    #[must_use]
    pub fn settled(env: &TestEnv) -> Self {
        let mut timeline = Self::read(env);
        wait_until(Duration::from_secs(5), || {
            timeline = Self::read(env);
            timeline
                .lives
                .iter()
                .filter(|l| l.stop.is_none())
                .all(|l| alive(l.pid))
        });
        timeline
    }

    /// The life of reader `tag`, if it started.
    #[must_use]
    pub fn life(&self, tag: &str) -> Option<&Life> {
        self.lives.iter().find(|l| l.tag == tag)
    }

    /// The most lives that shared one instant: the most running at some
    /// life's start (a long life that overlaps several short ones that
    /// follow each other is two at once, not all of them).
    #[must_use]
    pub fn most_at_once(&self) -> usize {
        self.lives
            .iter()
            .map(|life| {
                self.lives
                    .iter()
                    .filter(|o| o.start <= life.start && o.overlaps(life))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// Panics unless at most `tuners` readers ever ran at once: the kernel
    /// saw no reader without a free tuner file, and the logged lives agree.
    #[track_caller]
    pub fn assert_at_most(&self, tuners: usize) {
        assert!(
            self.overlaps.is_empty(),
            "a reader started while {tuners} others held every tuner: {:?}\n{self:#?}",
            self.overlaps
        );
        let most = self.most_at_once();
        assert!(
            most <= tuners,
            "{most} readers' logged lives overlap (at most {tuners} allowed):\n{self:#?}"
        );
    }
}

/// Waits until reader `tag` has logged its start; its life.
#[track_caller]
pub fn started_within(env: &TestEnv, tag: &str, limit: Duration) -> Option<Life> {
    let mut found = None;
    wait_until(limit, || {
        found = Timeline::read(env).life(tag).cloned();
        found.is_some()
    });
    found
}

/// Waits until reader `tag` has logged its stop; its life.
#[track_caller]
pub fn stopped_within(env: &TestEnv, tag: &str, limit: Duration) -> Option<Life> {
    let mut found = None;
    wait_until(limit, || {
        found = Timeline::read(env)
            .life(tag)
            .filter(|l| l.stop.is_some())
            .cloned();
        found.is_some()
    });
    found
}

/// When the last successful renewal was sent, by the fence's own log line
/// (`<RFC 3339 stamp> ERROR fence: … the last one that did was sent 4.0s
/// ago …`), in microseconds of `CLOCK_REALTIME`: the earliest instant the
/// server may expire the lease is this plus the TTL. `None` if the log has
/// no such line (the claim is then checked against a looser bound).
#[must_use]
pub fn last_renewal_sent(log: &str) -> Option<u128> {
    let line = log
        .lines()
        .find(|l| l.contains("fence") && l.contains("was sent "))?;
    let stamp = humantime::parse_rfc3339(line.split_whitespace().next()?).ok()?;
    let ago: f64 = line
        .split("was sent ")
        .nth(1)?
        .split("s ago")
        .next()?
        .parse()
        .ok()?;
    let at = stamp.duration_since(UNIX_EPOCH).ok()?;
    Some(at.checked_sub(Duration::from_secs_f64(ago))?.as_micros())
}

/// How long after `from` reader `tag` started, in microseconds (negative
/// if before), printing the figure as `what`.
#[track_caller]
pub fn figure(what: &str, from: u128, life: &Life) -> i128 {
    let delta = i128::try_from(life.start).expect("stamp") - i128::try_from(from).expect("stamp");
    eprintln!("FIGURE {what}: {:.3} s", secs(delta));
    delta
}

/// An `Instant`-free deadline check for readability: `limit` as micros.
#[must_use]
pub fn micros(limit: Duration) -> i128 {
    i128::try_from(limit.as_micros()).expect("duration")
}

/// The fixture's own checks: the overlap detector must see two readers of
/// one tuner, and the logged lives must bracket the real ones.
mod checks {
    use std::process::Command;
    use std::time::Duration;

    use super::{Node, Timeline, now_micros, reader_program, started_within, stopped_within};
    use crate::testenv::{Guard, PATIENCE, TestEnv};

    fn reader(env: &TestEnv, tag: &str, tuners: usize) -> Guard {
        let program = reader_program(env, tag, tuners);
        Guard::spawn(Command::new(&program[0]).args(&program[1..]))
    }

    #[test]
    fn two_readers_of_one_tuner_are_an_overlap_and_a_third_tuner_is_not() {
        let env = TestEnv::new();
        let _ = Node::new(&env, "a", "http://127.0.0.1:9");
        let first = reader(&env, "first", 1);
        let first_life = started_within(&env, "first", PATIENCE).expect("first started");
        assert_eq!(first_life.pid, first.pid());
        let (status, _) = reader(&env, "second", 1).finish();
        assert_eq!(status, Some(99), "the second reader found the tuner taken");
        let timeline = Timeline::read(&env);
        assert_eq!(timeline.overlaps.len(), 1, "{timeline:#?}");
        let caught = std::panic::catch_unwind(|| timeline.assert_at_most(1));
        assert!(caught.is_err(), "assert_at_most(1) passed an overlap");
        // With two tuner files the second reader is no overlap.
        std::fs::remove_file(env.path("overlaps")).unwrap();
        let second = reader(&env, "third", 2);
        started_within(&env, "third", PATIENCE).expect("third started");
        let timeline = Timeline::read(&env);
        timeline.assert_at_most(2);
        assert_eq!(timeline.most_at_once(), 2);
        drop(second);
        let before_kill = now_micros();
        drop(first);
        let life = stopped_within(&env, "first", PATIENCE).expect("the watcher saw the death");
        let stop = life.stop.unwrap();
        assert!(stop >= before_kill, "stop logged before the kill");
        assert!(
            stop - before_kill < Duration::from_secs(1).as_micros(),
            "the watcher took {} us",
            stop - before_kill
        );
        assert!(life.start < stop);
    }
}
