//! A throw-away container whose PID 1 is the host's own systemd, for machines
//! whose PID 1 is not systemd (the dev and CI VMs).
//!
//! How, and why each step:
//! - The root is an overlayfs: the host `/` as read-only lower layer, a tmpfs
//!   upper layer. No image to build, and nothing on the host is written.
//! - Everything is mounted inside a private mount namespace (`unshare
//!   --mount`), under a private tmpfs on `/run`: the mounts vanish with the
//!   namespace, and `systemd-nspawn` keeps its state there, not on the host's
//!   `/run` (a plain directory on these hosts).
//! - `systemd-nspawn --register=no --keep-unit` needs no host systemd, D-Bus or
//!   machined. The launcher is first moved into per-run cgroup directories so
//!   nspawn's cgroups are made under directories the suite owns and removes.
//! - Every `*.wants` link is removed in the overlay, so only what the suite
//!   starts runs, and the suite's units and programs are copied in before boot
//!   (the container has its own `/tmp` and `/run`).
//! - The container is driven only through `nsenter --target <PID 1> --all
//!   --root`; `machinectl`, `systemctl -M` and the private bus do not work
//!   without a host systemd.
//! - Teardown: `systemctl poweroff`, then SIGTERM and SIGKILL by PID, then
//!   `rmdir` of the per-run cgroups, then a check that no process, mount or
//!   cgroup is left. `Drop` runs it when a scenario panics.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The argument that makes this binary the mount-namespace side of the
/// launcher (see [`container_root_main`]).
pub const CONTAINER_ROOT_ROLE: &str = "__container-root";
/// The host's systemd binary, booted as the container's PID 1.
const SYSTEMD: &str = "/lib/systemd/systemd";
/// A command run inside the container is killed after this long.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// What the container is built from, staged on the host before boot.
#[derive(Debug)]
pub struct Staging {
    dir: tempfile::TempDir,
}

impl Staging {
    pub fn new() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("ec-systemd-suite-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .map_err(|e| format!("cannot create a staging directory: {e}"))?;
        for sub in ["opt", "units"] {
            fs::create_dir(dir.path().join(sub))
                .map_err(|e| format!("cannot create the staging directory: {e}"))?;
        }
        Ok(Self { dir })
    }

    /// Copies `program` into the container's `/opt/ec-suite` as `name`.
    pub fn program(&self, program: &Path, name: &str) -> Result<(), String> {
        fs::copy(program, self.dir.path().join("opt").join(name))
            .map(drop)
            .map_err(|e| format!("cannot stage {}: {e}", program.display()))
    }

    /// Another name for a staged program (a multi-call binary's role).
    pub fn alias(&self, target: &str, name: &str) -> Result<(), String> {
        symlink(target, self.dir.path().join("opt").join(name))
            .map_err(|e| format!("cannot stage the alias {name}: {e}"))
    }

    pub fn unit(&self, name: &str, text: &str) -> Result<(), String> {
        fs::write(self.dir.path().join("units").join(name), text)
            .map_err(|e| format!("cannot stage the unit {name}: {e}"))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A booted container. Dropping it tears it down.
#[derive(Debug)]
pub struct Container {
    name: String,
    launcher: Option<Child>,
    leader: Option<i32>,
    cgroups: Vec<PathBuf>,
    console: PathBuf,
    torn_down: bool,
    pub boot_time: Duration,
}

/// What teardown found; every number must be zero for a clean run.
#[derive(Debug, Default)]
pub struct TeardownReport {
    pub processes_left: usize,
    pub namespaces_with_our_mounts: usize,
    pub cgroup_dirs_left: usize,
    pub launcher_alive: bool,
    pub took: Duration,
}

impl TeardownReport {
    pub fn clean(&self) -> bool {
        self.processes_left == 0
            && self.namespaces_with_our_mounts == 0
            && self.cgroup_dirs_left == 0
            && !self.launcher_alive
    }
}

/// Every requirement of the harness that is not met, as sentences.
pub fn missing_requirements() -> Vec<String> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("must run as root (it mounts, unshares and boots systemd)".into());
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.trim_end().ends_with("\toverlay"))
    {
        // The module may just not be loaded yet; loading it is what mount(8) would do.
        let _ = Command::new("modprobe").arg("overlay").status();
        let again = fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !again.lines().any(|l| l.trim_end().ends_with("\toverlay")) {
            missing.push("the kernel has no overlay file system (modprobe overlay)".into());
        }
    }
    if !Path::new(SYSTEMD).exists() {
        missing.push(format!("{SYSTEMD} is missing (apt-get install systemd)"));
    }
    for (tool, package) in [
        ("systemd-nspawn", "systemd-container"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("mount", "mount"),
    ] {
        if which(tool).is_none() {
            missing.push(format!("{tool} is missing (apt-get install {package})"));
        }
    }
    // The cluster scenario's etcd runs inside the container, from the host's
    // root the container overlays.
    for (binary, package) in [
        ("/usr/bin/etcd", "etcd-server"),
        ("/usr/bin/etcdctl", "etcd-client"),
    ] {
        if !Path::new(binary).exists() {
            missing.push(format!("{binary} is missing (apt-get install {package})"));
        }
    }
    if cgroup_roots().is_empty() {
        missing.push("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified".into());
    }
    missing
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        .to_str()
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(tool))
        .find(|path| path.is_file())
}

/// The host cgroup hierarchies the launcher must join: the v2 hierarchy
/// (pure v2 host, or `unified` on a hybrid host) and, on a hybrid host, the
/// `name=systemd` v1 hierarchy nspawn also writes to.
fn cgroup_roots() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_owned()];
    }
    let mut roots = Vec::new();
    if root.join("unified/cgroup.controllers").exists() {
        roots.push(root.join("unified"));
        if root.join("systemd/cgroup.procs").exists() {
            roots.push(root.join("systemd"));
        }
    }
    roots
}

impl Container {
    /// Boots the container from `staging` and waits for systemd to be up.
    pub fn boot(staging: &Staging, log_dir: &Path) -> Result<Self, String> {
        let name = format!("ec-systemd-suite-{}", std::process::id());
        let console = log_dir.join("console.log");
        let mut container = Self {
            name: name.clone(),
            launcher: None,
            leader: None,
            cgroups: Vec::new(),
            console: console.clone(),
            torn_down: false,
            boot_time: Duration::ZERO,
        };
        let started = Instant::now();
        let mut joins = Vec::new();
        for root in cgroup_roots() {
            let dir = root.join(&name);
            fs::create_dir(&dir)
                .map_err(|e| format!("cannot create the cgroup {}: {e}", dir.display()))?;
            container.cgroups.push(dir.clone());
            joins.push(
                File::options()
                    .write(true)
                    .open(dir.join("cgroup.procs"))
                    .map_err(|e| format!("cannot open {}/cgroup.procs: {e}", dir.display()))?,
            );
        }
        let log = File::create(&console)
            .map_err(|e| format!("cannot create {}: {e}", console.display()))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let this = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--"])
            .arg(this)
            .args([OsStr::new(CONTAINER_ROOT_ROLE), OsStr::new(&name)])
            .arg(staging.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // SAFETY: between fork and exec the child only calls write(2) on
        // descriptors opened before the fork; it allocates nothing and takes
        // no lock. Writing "0" to cgroup.procs moves the writing process
        // (cgroups(7)), so unshare, nspawn and the container start inside the
        // per-run cgroups.
        unsafe {
            command.pre_exec(move || {
                for mut join in &joins {
                    join.write_all(b"0")?;
                }
                Ok(())
            });
        }
        let launcher = command
            .spawn()
            .map_err(|e| format!("cannot start unshare: {e}"))?;
        let launcher_pid = launcher.id();
        container.launcher = Some(launcher);
        container.leader = Some(container.wait_for_leader(launcher_pid)?);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut state = String::new();
        while Instant::now() < deadline {
            state = container
                .exec(&["systemctl", "is-system-running"])
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default();
            if state == "running" || state == "degraded" {
                container.boot_time = started.elapsed();
                return Ok(container);
            }
            if !container.launcher_alive() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "systemd in the container did not come up (state {state:?}); console:\n{}",
            container.console_tail()
        ))
    }

    /// The container's PID 1, seen from the host: the launcher's child that
    /// runs systemd.
    fn wait_for_leader(&mut self, launcher: u32) -> Result<i32, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let tasks = fs::read_dir(format!("/proc/{launcher}/task"))
                .into_iter()
                .flatten();
            for task in tasks.flatten() {
                let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
                for child in children.split_whitespace() {
                    let comm =
                        fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
                    if comm.trim() == "systemd" {
                        return child.parse().map_err(|_| "bad PID".to_owned());
                    }
                }
            }
            if !self.launcher_alive() {
                return Err(format!(
                    "the container launcher exited early; console:\n{}",
                    self.console_tail()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Err("no systemd appeared in the container within 30 s".into())
    }

    fn launcher_alive(&mut self) -> bool {
        self.launcher
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    pub fn console_tail(&self) -> String {
        let text = fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Runs `argv` inside the container (all its namespaces, its root), with
    /// a clean environment, and returns its output whatever the exit status.
    pub fn exec(&self, argv: &[&str]) -> Result<Output, String> {
        let leader = self.leader.ok_or("the container has no PID 1")?;
        let mut child = Command::new("nsenter")
            .args([
                "--target",
                &leader.to_string(),
                "--all",
                "--root",
                "--wd",
                "--",
            ])
            .args([
                "/usr/bin/env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
                "SYSTEMD_PAGER=",
                "SYSTEMD_COLORS=0",
            ])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run nsenter: {e}"))?;
        // Read the pipes on threads so a chatty command cannot block on a full pipe.
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let out = thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
            buf
        });
        let err = thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stderr, &mut buf);
            buf
        });
        let deadline = Instant::now() + EXEC_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{argv:?} in the container took over {EXEC_TIMEOUT:?}"
                ));
            }
            thread::sleep(Duration::from_millis(5));
        };
        Ok(Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
    }

    /// Runs `argv` inside the container and returns its stdout; a non-zero
    /// exit is an error carrying stderr.
    pub fn run(&self, argv: &[&str]) -> Result<String, String> {
        let output = self.exec(argv)?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "{argv:?} in the container failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    pub fn systemctl(&self, args: &[&str]) -> Result<String, String> {
        let mut command = vec!["systemctl"];
        command.extend_from_slice(args);
        self.run(&command)
    }

    /// One property of a unit, as `systemctl show -P` prints it.
    pub fn property(&self, unit: &str, property: &str) -> String {
        self.systemctl(&["show", "-P", property, unit])
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    }

    /// `systemctl is-active`'s answer; it exits non-zero for every state but
    /// `active`, so the answer is read whatever the exit status.
    pub fn state(&self, unit: &str) -> String {
        self.exec(&["systemctl", "is-active", unit]).map_or_else(
            |e| e,
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
    }

    /// The unit's journal, as plain messages.
    pub fn journal(&self, unit: &str) -> String {
        self.run(&["journalctl", "--no-pager", "-o", "cat", "-u", unit])
            .unwrap_or_default()
    }

    /// Saves the container's whole journal next to the console log.
    pub fn save_journal(&self, path: &Path) {
        if let Ok(text) = self.run(&["journalctl", "--no-pager", "-o", "short-monotonic"]) {
            let _ = fs::write(path, text);
        }
    }

    /// Powers the container off and removes everything the boot made.
    pub fn tear_down(&mut self) -> TeardownReport {
        let started = Instant::now();
        self.torn_down = true;
        let mut report = TeardownReport::default();
        if let Some(mut launcher) = self.launcher.take() {
            let launcher_pid = Pid::from_raw(i32::try_from(launcher.id()).unwrap_or(i32::MAX));
            let _ = self.exec(&["systemctl", "poweroff", "--no-block"]);
            let gone = |launcher: &mut Child, within: Duration| {
                let deadline = Instant::now() + within;
                while Instant::now() < deadline {
                    if matches!(launcher.try_wait(), Ok(Some(_))) {
                        return true;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                false
            };
            if !gone(&mut launcher, Duration::from_secs(20)) {
                eprintln!("teardown: container still up 20 s after poweroff; SIGTERM to nspawn");
                let _ = kill(launcher_pid, Signal::SIGTERM);
                if !gone(&mut launcher, Duration::from_secs(10)) {
                    eprintln!("teardown: SIGKILL to the container's PID 1 and to nspawn");
                    if let Some(leader) = self.leader {
                        // Killing a PID namespace's init kills the whole namespace.
                        let _ = kill(Pid::from_raw(leader), Signal::SIGKILL);
                    }
                    let _ = kill(launcher_pid, Signal::SIGKILL);
                }
            }
            let _ = launcher.wait();
            report.launcher_alive = kill(launcher_pid, None).is_ok();
        }
        self.leader = None;
        for dir in &self.cgroups {
            report.processes_left += count_processes(dir);
            remove_cgroup_tree(dir);
            if dir.exists() {
                report.cgroup_dirs_left += 1;
            }
        }
        report.namespaces_with_our_mounts = namespaces_mounting(&self.name);
        report.took = started.elapsed();
        report
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if !self.torn_down {
            let report = self.tear_down();
            eprintln!("teardown after a failure: {report:?}");
        }
    }
}

fn count_processes(dir: &Path) -> usize {
    let mut count = fs::read_to_string(dir.join("cgroup.procs")).map_or(0, |t| t.lines().count());
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            count += count_processes(&entry.path());
        }
    }
    count
}

/// Removes a cgroup directory and its children, deepest first (cgroup
/// directories are removed with rmdir(2), never by deleting their files).
fn remove_cgroup_tree(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

/// How many processes still see a mount named after this run.
fn namespaces_mounting(tag: &str) -> usize {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            fs::read_to_string(e.path().join("mountinfo")).is_ok_and(|text| text.contains(tag))
        })
        .count()
}

/// The mount-namespace side of the launcher: runs inside `unshare --mount`,
/// builds the overlay root, copies the staged units and programs in, and
/// execs `systemd-nspawn`. Arguments: `NAME STAGING_DIR`.
pub fn container_root_main(args: &[String]) -> ExitCode {
    let (Some(name), Some(staging)) = (args.first(), args.get(1)) else {
        eprintln!("usage: {CONTAINER_ROOT_ROLE} NAME STAGING_DIR");
        return ExitCode::from(2);
    };
    match build_root(name, Path::new(staging)) {
        Ok(root) => {
            let error = Command::new("systemd-nspawn")
                .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
                .arg("--quiet")
                .arg("--directory")
                .arg(&root)
                .args(["--machine", name])
                .args([
                    "--register=no",
                    "--keep-unit",
                    "--private-network",
                    "--link-journal=no",
                    "--resolv-conf=off",
                    "--timezone=off",
                    "--console=pipe",
                    "--boot",
                    "--",
                    "systemd.show_status=false",
                ])
                .exec();
            eprintln!("cannot exec systemd-nspawn: {error}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("cannot build the container root: {e}");
            ExitCode::from(1)
        }
    }
}

fn build_root(name: &str, staging: &Path) -> Result<PathBuf, String> {
    let mount = |args: &[&str]| -> Result<(), String> {
        let status = Command::new("mount")
            .args(args)
            .status()
            .map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("mount {args:?}: {status}"))
        }
    };
    // Our /run first: nspawn's state and the overlay's layers live there.
    mount(&[
        "-t",
        "tmpfs",
        "-o",
        "mode=0755,size=2g",
        &format!("{name}-run"),
        "/run",
    ])?;
    let base = PathBuf::from("/run").join(name);
    let (upper, work, root) = (base.join("upper"), base.join("work"), base.join("root"));
    for dir in [&upper, &work, &root] {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let options = format!(
        "lowerdir=/,upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    mount(&[
        "-t",
        "overlay",
        "-o",
        &options,
        &format!("{name}-root"),
        root.to_str().ok_or("non-UTF-8 path")?,
    ])?;

    let units = root.join("etc/systemd/system");
    fs::create_dir_all(&units).map_err(|e| e.to_string())?;
    // Disable every unit the host enabled: only what the suite starts runs.
    for entry in fs::read_dir(&units).map_err(|e| e.to_string())?.flatten() {
        if entry.file_name().to_string_lossy().ends_with(".wants") {
            fs::remove_dir_all(entry.path()).map_err(|e| e.to_string())?;
        }
    }
    let target = "[Unit]\nDescription=ec-launch systemd suite (boot target)\nRequires=basic.target\nAfter=basic.target\nAllowIsolate=yes\n";
    fs::write(units.join("ec-suite.target"), target).map_err(|e| e.to_string())?;
    let default = units.join("default.target");
    let _ = fs::remove_file(&default);
    symlink("ec-suite.target", &default).map_err(|e| e.to_string())?;
    for entry in fs::read_dir(staging.join("units"))
        .map_err(|e| e.to_string())?
        .flatten()
    {
        fs::copy(entry.path(), units.join(entry.file_name())).map_err(|e| e.to_string())?;
    }
    // A machine-id of its own, so the container's journal is not the host's.
    let machine_id = fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map_err(|e| e.to_string())?
        .trim()
        .replace('-', "");
    fs::write(root.join("etc/machine-id"), format!("{machine_id}\n")).map_err(|e| e.to_string())?;

    let opt = root.join(crate::programs::SUITE_DIR.trim_start_matches('/'));
    fs::create_dir_all(&opt).map_err(|e| e.to_string())?;
    for entry in fs::read_dir(staging.join("opt"))
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let to = opt.join(entry.file_name());
        if entry.file_type().is_ok_and(|t| t.is_symlink()) {
            let target = fs::read_link(entry.path()).map_err(|e| e.to_string())?;
            symlink(target, &to).map_err(|e| e.to_string())?;
        } else {
            fs::copy(entry.path(), &to).map_err(|e| e.to_string())?;
        }
    }
    Ok(root)
}
