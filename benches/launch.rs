//! Launch cost of `ec-launch run` beside its references, measured in one run.
//!
//! Run `bench/launch.sh` (it also builds a dynamically linked binary to
//! compare with), or `cargo bench --bench launch` for the cargo-built binary
//! alone, which `.cargo/config.toml` links statically as the flake does.
//! Needs util-linux `flock` and GNU `time`.
//!
//! Whole-process wall time of each command, interleaved round by round in a
//! shuffled order so drift in machine load hits all of them alike:
//! - `/bin/true` exec'd bare,
//! - `flock -n -F <file> /bin/true` (util-linux: lock, then exec without fork),
//! - `ec-launch run --source … -- /bin/true` (lock, record, exec), as built by
//!   `cargo build --release` (static), and the dynamically linked build named
//!   by `EC_LAUNCH_DYNAMIC` when set.
//!
//! - the physical floor, `EC_LAUNCH_FLOOR` when set: a static C program that
//!   opens the lock file, `flock(LOCK_EX|LOCK_NB)`, and execs (`bench/floor.c`,
//!   which `bench/launch.sh` compiles).
//!
//! Then peak RSS of each (GNU `time -f %M`, the `wait4(2)` rusage maximum),
//! and the contention case: 256 launchers released together on one source,
//! timed until every loser has exited with the busy code. With
//! `EC_LAUNCH_STARTED` (`bench/started.c`, a program that writes one byte on
//! descriptor 3), each launcher is also timed to its program's start, and
//! with `EC_BENCH_ETCD` (an etcd's client URL) cluster mode beside it:
//! cluster mode supervises the program and revokes its lease when it ends,
//! so only the time to the program's start compares. Figures against the
//! issue's targets are printed; nothing fails on them.

use std::io::Read as _;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EC_LAUNCH: &str = env!("CARGO_BIN_EXE_ec-launch");
const SOURCE: &str = "http://10.0.0.5:5004/auto/v5.1";
const WARMUP: usize = 50;
const ROUNDS: usize = 2000;
const RSS_SAMPLES: usize = 20;
const CONTENDERS: usize = 256;
const CONTENTION_ROUNDS: usize = 5;
const START_ROUNDS: usize = 300;
const CLUSTER_START_ROUNDS: usize = 10;

struct Case {
    name: String,
    argv: Vec<String>,
    samples: Vec<Duration>,
}

impl Case {
    fn new(name: &str, argv: Vec<String>) -> Self {
        Self {
            name: name.to_owned(),
            argv,
            samples: Vec::new(),
        }
    }
}

fn main() {
    require("flock", &["--version"]);
    require("/usr/bin/time", &["--version"]);
    let work = tempfile::tempdir().expect("temp dir");
    let lock_dir = work.path().join("locks").display().to_string();
    let flock_file = work.path().join("flock.lock").display().to_string();

    let ec_launch = |binary: &str, program: &[&str]| -> Vec<String> {
        let mut argv: Vec<String> = [
            binary,
            "run",
            "--lock-dir",
            &lock_dir,
            "--source",
            SOURCE,
            "--",
        ]
        .map(String::from)
        .to_vec();
        argv.extend(program.iter().map(|w| (*w).to_owned()));
        argv
    };
    let flock = |program: &[&str]| -> Vec<String> {
        let mut argv: Vec<String> = ["flock", "-n", "-E", "75", "-F", &flock_file]
            .map(String::from)
            .to_vec();
        argv.extend(program.iter().map(|w| (*w).to_owned()));
        argv
    };
    let mut binaries = vec![(
        "ec-launch (cargo build --release)".to_owned(),
        EC_LAUNCH.to_owned(),
    )];
    if let Ok(path) = std::env::var("EC_LAUNCH_DYNAMIC") {
        binaries.push(("ec-launch (dynamically linked)".to_owned(), path));
    }

    let floor = std::env::var("EC_LAUNCH_FLOOR").ok().map(|floor| {
        let floor_file = work.path().join("floor.lock").display().to_string();
        vec![floor, floor_file, "/bin/true".to_owned()]
    });
    let mut cases = vec![
        Case::new("bare exec /bin/true", vec!["/bin/true".into()]),
        Case::new("flock -n -F file /bin/true", flock(&["/bin/true"])),
    ];
    if let Some(argv) = &floor {
        cases.push(Case::new("floor: open+flock+exec (C)", argv.clone()));
    }
    for (name, binary) in &binaries {
        cases.push(Case::new(name, ec_launch(binary, &["/bin/true"])));
    }
    measure_interleaved(&mut cases);
    report(&mut cases, floor.is_some());

    println!(
        "\ncontention: {CONTENDERS} launchers released together on one source, until all losers exit 75"
    );
    let mut contenders = vec![("flock -n -E 75 -F".to_owned(), flock(&["sleep", "5"]))];
    for (name, binary) in &binaries {
        contenders.push((name.clone(), ec_launch(binary, &["sleep", "5"])));
    }
    if let Some(floor) = &floor {
        let mut argv = floor[..2].to_vec();
        argv.extend(["/bin/sleep".to_owned(), "5".to_owned()]);
        contenders.push(("floor (C)".to_owned(), argv));
    }
    let mut medians = Vec::new();
    for (name, argv) in &contenders {
        let mut times: Vec<Duration> = (0..CONTENTION_ROUNDS)
            .map(|_| contention(argv, work.path()))
            .collect();
        times.sort();
        let median = times[times.len() / 2];
        println!(
            "{name:<30} median {:>9}  min {:>9}  max {:>9}  ({CONTENTION_ROUNDS} rounds)",
            millis(median),
            millis(times[0]),
            millis(times[times.len() - 1])
        );
        medians.push(median);
    }
    for (index, (name, _)) in binaries.iter().enumerate() {
        println!(
            "{name} vs flock(1), 256 launchers: {:.2}x  (target: <= 1.00x)",
            medians[index + 1].as_secs_f64() / medians[0].as_secs_f64()
        );
    }

    if let Ok(started) = std::env::var("EC_LAUNCH_STARTED") {
        time_to_start(&started, &flock, &ec_launch, &binaries);
    }
}

/// Each launcher timed from spawn to its program's first byte on fd 3:
/// flock(1), the local `ec-launch`, and with `EC_BENCH_ETCD` cluster mode
/// (`ec-launch run --etcd`, which execs `ec-launch-cluster`).
fn time_to_start(
    started: &str,
    flock: &dyn Fn(&[&str]) -> Vec<String>,
    ec_launch: &dyn Fn(&str, &[&str]) -> Vec<String>,
    binaries: &[(String, String)],
) {
    println!("\ntime to the program's start (spawn to its first byte on fd 3)");
    let mut cases = vec![
        ("flock -n -F".to_owned(), flock(&[started]), START_ROUNDS),
        (
            binaries[0].0.clone(),
            ec_launch(&binaries[0].1, &[started]),
            START_ROUNDS,
        ),
    ];
    if let Ok(etcd) = std::env::var("EC_BENCH_ETCD") {
        let mut argv = ec_launch(&binaries[0].1, &[started]);
        argv.splice(2..2, ["--etcd".to_owned(), etcd]);
        cases.push((
            "ec-launch run --etcd (cluster)".to_owned(),
            argv,
            CLUSTER_START_ROUNDS,
        ));
    }
    for (name, argv, rounds) in &cases {
        for _ in 0..3 {
            start_once(argv);
        }
        let mut times: Vec<Duration> = (0..*rounds).map(|_| start_once(argv)).collect();
        times.sort();
        println!(
            "{name:<30} median {:>9}  min {:>9}  max {:>9}  ({rounds} runs)",
            micros(times[times.len() / 2]),
            micros(times[0]),
            micros(times[times.len() - 1])
        );
    }
}

/// Spawns `argv` with a pipe's write end on descriptor 3 and times until
/// the program writes to it; then waits for the launcher to exit.
fn start_once(argv: &[String]) -> Duration {
    let (mut reader, writer) = std::io::pipe().expect("pipe");
    let writer = OwnedFd::from(writer);
    let raw = writer.as_raw_fd();
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; the child only moves the pipe's
    // write end to descriptor 3 (without close-on-exec) before exec.
    unsafe {
        command.pre_exec(move || {
            if nix::libc::dup2(raw, 3) == 3 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let start = Instant::now();
    let mut child = command.spawn().expect("spawn");
    drop(writer);
    let mut byte = [0u8; 1];
    let read = reader.read(&mut byte).expect("read the start byte");
    let elapsed = start.elapsed();
    let status = child.wait().expect("wait");
    assert!(read == 1 && status.success(), "{argv:?}: {status}");
    elapsed
}

/// Runs every case once per round, in a fresh shuffled order each round,
/// after a warm-up (page cache, lock directory and lock files in place).
fn measure_interleaved(cases: &mut [Case]) {
    for case in cases.iter() {
        for _ in 0..WARMUP {
            run_once(&case.argv);
        }
    }
    let mut order: Vec<usize> = (0..cases.len()).collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..ROUNDS {
        shuffle(&mut order, &mut seed);
        for &i in &order {
            let elapsed = run_once(&cases[i].argv);
            cases[i].samples.push(elapsed);
        }
    }
}

/// Prints each case's figures, then each ec-launch build against flock(1)
/// and, with the floor, its overhead over a bare exec against the floor's.
fn report(cases: &mut [Case], with_floor: bool) {
    println!(
        "ec-launch launch benchmark ({ROUNDS} interleaved rounds, {} cores)",
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    );
    println!(
        "{:<30} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "command", "median", "mean", "p95", "min", "peak RSS"
    );
    let mut figures = Vec::new();
    for case in cases.iter_mut() {
        case.samples.sort();
        let n = case.samples.len();
        let median = case.samples[n / 2];
        let mean = case.samples.iter().sum::<Duration>() / u32::try_from(n).expect("sample count");
        let rss = peak_rss_kib(&case.argv);
        println!(
            "{:<30} {:>9} {:>9} {:>9} {:>9} {:>6} KiB",
            case.name,
            micros(median),
            micros(mean),
            micros(case.samples[n * 95 / 100]),
            micros(case.samples[0]),
            rss
        );
        figures.push((median, mean, rss));
    }
    let (bare_median, _, _) = figures[0];
    let (flock_median, flock_mean, flock_rss) = figures[1];
    let first = if with_floor { 3 } else { 2 };
    for (case, (median, mean, rss)) in cases.iter().zip(&figures).skip(first) {
        println!(
            "{} vs flock(1): median {:.2}x, mean {:+.1}%, peak RSS {:.2}x  (targets: <= 0.95x, <= 1.5x)",
            case.name,
            median.as_secs_f64() / flock_median.as_secs_f64(),
            percent(*mean, flock_mean),
            ratio(*rss, flock_rss),
        );
        if with_floor {
            let floor_overhead = figures[2].0.saturating_sub(bare_median);
            let overhead = median.saturating_sub(bare_median);
            println!(
                "{} overhead over a bare exec: {} against the floor's {}: {:.2}x  (target: <= 1.5x)",
                case.name,
                micros(overhead),
                micros(floor_overhead),
                overhead.as_secs_f64() / floor_overhead.as_secs_f64(),
            );
        }
    }
}

fn require(program: &str, args: &[&str]) {
    let ok = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        ok,
        "the benchmark needs {program}: apt-get install util-linux time"
    );
}

fn run_once(argv: &[String]) -> Duration {
    let start = Instant::now();
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn");
    let elapsed = start.elapsed();
    assert!(status.success(), "{argv:?} failed: {status}");
    elapsed
}

/// Median of GNU time's `%M` (max RSS in KiB) over a few runs.
fn peak_rss_kib(argv: &[String]) -> u64 {
    let mut samples: Vec<u64> = (0..RSS_SAMPLES)
        .map(|_| {
            let output = Command::new("/usr/bin/time")
                .args(["-f", "%M"])
                .args(argv)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .output()
                .expect("run /usr/bin/time");
            let text = String::from_utf8_lossy(&output.stderr);
            text.lines()
                .last()
                .unwrap_or("0")
                .trim()
                .parse()
                .unwrap_or(0)
        })
        .collect();
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// Releases `CONTENDERS` copies of a command at once (each reads a shared
/// pipe before exec'ing it) and times until all but the winner have exited.
fn contention(argv: &[String], dir: &Path) -> Duration {
    let (gate, gate_writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let words: Vec<String> = argv.iter().map(|w| format!("'{w}'")).collect();
    let script = format!("read _; exec {}", words.join(" "));
    let mut children: Vec<std::process::Child> = (0..CONTENDERS)
        .map(|_| {
            Command::new("sh")
                .arg("-c")
                .arg(&script)
                .current_dir(dir)
                .stdin(Stdio::from(OwnedFd::try_clone(&gate).expect("dup gate")))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn")
        })
        .collect();
    drop(gate);
    // Let every shell reach its read(2) before opening the gate.
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    drop(gate_writer);
    let mut busy = 0;
    while busy < CONTENDERS - 1 {
        children.retain_mut(|child| match child.try_wait().expect("try_wait") {
            Some(status) => {
                assert_eq!(status.code(), Some(75), "a loser must exit 75");
                busy += 1;
                false
            }
            None => true,
        });
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = start.elapsed();
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    elapsed
}

fn shuffle(order: &mut [usize], seed: &mut u64) {
    for i in (1..order.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let j = usize::try_from(*seed % (i as u64 + 1)).expect("index");
        order.swap(i, j);
    }
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn percent(value: Duration, reference: Duration) -> f64 {
    (value.as_secs_f64() / reference.as_secs_f64() - 1.0) * 100.0
}

#[allow(clippy::cast_precision_loss)]
fn ratio(value: u64, reference: u64) -> f64 {
    value as f64 / reference as f64
}
