//! `ec-launch run`: take the source's lock, then become the program.
//!
//! The order matters: validate everything that can be validated (source,
//! key, arguments, the program's whole `argv` and environment) before
//! touching the lock directory, so bad input never costs a lock; take the lock before exec, so nothing runs without it; and
//! keep no process of ours afterwards, so the lock lives exactly as long as
//! the program and the children that inherit its descriptor.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cgroup;
use crate::cli::{OnBusy, RunArgs};
use crate::error::Error;
use crate::exec::{self, Launch};
use crate::exit_code::ExitStatus;
use crate::holder::{Absence, HolderScan, LockedInode};
use crate::lock::{self, Access, Acquired, BusyPolicy};
use crate::lock_record::LockRecord;
use crate::path_trust::{self, Launcher};
use crate::printable::{printable, printable_path, shell_word};
use crate::process::ProcessInfo;
use crate::redact::{redact_source, redact_word};
use crate::source_key::{self, SourceKey};
use crate::watchdog;

/// `run`'s validated settings.
#[derive(Debug)]
struct RunConfig {
    lock_dir: PathBuf,
    /// The source as the program needs it (may hold credentials).
    source: String,
    key: SourceKey,
    /// The key was named with `--key` (so `status` must be asked with `--key`).
    key_named: bool,
    policy: BusyPolicy,
    busy_status: ExitStatus,
    program: OsString,
    args: Vec<OsString>,
    progress_watchdog: bool,
}

impl RunConfig {
    fn from_args(args: RunArgs) -> Result<Self, Error> {
        crate::cli::ensure_lock_dir_given(&args.lock_dir)?;
        let source = match (&args.source, &args.source_file) {
            (Some(source), _) => source.clone(),
            (None, Some(path)) => read_source_file(path)?,
            // clap requires one of the two.
            (None, None) => String::new(),
        };
        // Also with --key: what is recorded and logged is what the program gets.
        source_key::ensure_source_text(&source)?;
        let key = match &args.key {
            // An operator-named key stands for a source we may not understand,
            // so the source itself is only required to be non-empty.
            Some(key) => SourceKey::from_override(key)?,
            None => SourceKey::from_source(&source)?,
        };
        let policy = match args.on_busy {
            OnBusy::Skip => BusyPolicy::Skip,
            OnBusy::Wait => BusyPolicy::Wait {
                timeout: args.wait_timeout,
            },
        };
        let mut command = args.command.into_iter();
        let program = command.next().unwrap_or_default();
        if program.is_empty() {
            return Err(Error::EmptyProgram);
        }
        Ok(Self {
            lock_dir: args.lock_dir,
            source,
            key,
            key_named: args.key.is_some(),
            policy,
            busy_status: ExitStatus::Busy(args.busy_exit_code),
            program,
            args: command.collect(),
            progress_watchdog: args.progress_watchdog,
        })
    }
}

/// The most `--source-file` may hold: a URL with its credentials is far
/// smaller, and a bound keeps `/dev/zero` or a huge file from eating memory.
const MAX_SOURCE_FILE: u64 = 64 * 1024;

/// Reads one source from a file: one line (`\n` or `\r\n` ends it), blank
/// lines ignored. The line is taken as it is: whitespace in it is refused
/// later, never trimmed, so the program gets exactly what was keyed.
/// Only a regular file of at most [`MAX_SOURCE_FILE`] bytes is read; a FIFO
/// or device is refused before it is opened (and, should the path change in
/// between, opening does not block and the opened file is checked again).
fn read_source_file(path: &Path) -> Result<String, Error> {
    let read_error = |source| Error::ReadSourceFile {
        path: path.to_owned(),
        source,
    };
    let ensure_regular = |metadata: &fs::Metadata| {
        if metadata.is_file() {
            Ok(())
        } else {
            Err(Error::SourceFileNotRegular {
                path: path.to_owned(),
                kind: path_trust::kind(metadata.file_type()),
            })
        }
    };
    ensure_regular(&fs::metadata(path).map_err(read_error)?)?;
    let flags = (nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOCTTY).bits();
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(read_error)?;
    ensure_regular(&file.metadata().map_err(read_error)?)?;
    let mut bytes = Vec::new();
    file.take(MAX_SOURCE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_SOURCE_FILE {
        return Err(Error::SourceFileTooLarge {
            path: path.to_owned(),
            limit: MAX_SOURCE_FILE,
        });
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let source = lines.next().ok_or_else(|| Error::SourceFileEmpty {
        path: path.to_owned(),
    })?;
    if lines.next().is_some() {
        return Err(Error::SourceFileMultiline {
            path: path.to_owned(),
        });
    }
    Ok(source.to_owned())
}

/// Runs `ec-launch run`. On success this never returns: the process is the
/// program now. It returns the busy status, or an error.
///
/// # Errors
/// Invalid input, lock directory or file problems, or a failed exec.
pub fn run(args: RunArgs) -> Result<ExitStatus, Error> {
    if args.wait_timeout.is_some() && args.on_busy == OnBusy::Skip {
        tracing::warn!("--wait-timeout has no effect with --on-busy skip");
    }
    let config = RunConfig::from_args(args)?;
    let lock_path = config.key.lock_path(&config.lock_dir);
    let prepared = exec::prepare(&Launch {
        program: &config.program,
        args: &config.args,
        source: &config.source,
        key: config.key.as_str(),
        lock_path: &lock_path,
    })?;
    // Logged and recorded: a URL given as the program must not show its credential.
    let program_name = redact_word(&config.program.to_string_lossy());
    let redacted = redact_source(&config.source);
    tracing::debug!(source = %redacted, key = %config.key, lock_file = %lock_path.display(), policy = ?config.policy, "launch validated");
    let watchdog_plan = if config.progress_watchdog {
        watchdog::plan(&config.source)?
    } else {
        None
    };
    // Only now, with nothing left to validate, is the lock directory touched.
    let me = Launcher::current();
    lock::ensure_lock_dir(&config.lock_dir, &me)?;
    // Forked before the lock file is opened, so it never has the descriptor;
    // kept until exec, which closes its pipe and tells it the program runs.
    let _monitor = watchdog_plan.as_ref().map(watchdog::start).transpose()?;

    let mut wait_started = None;
    let mut announce_wait = |file: &fs::File| {
        wait_started = Some(Instant::now());
        let until = match config.policy {
            BusyPolicy::Wait { timeout: Some(t) } => format!(" (up to {})", seconds(t)),
            _ => String::new(),
        };
        tracing::info!(
            key = %printable(config.key.as_str()),
            lock_file = %printable_path(&lock_path),
            "source busy: held by {}; waiting{until} before starting {} (see `{}`)",
            describe_holders(&config, file),
            printable(&program_name),
            status_command(&config),
        );
    };
    let acquired = lock::acquire(&lock_path, config.policy, &me, &mut announce_wait)?;
    match acquired {
        Acquired::Held(held) => {
            match held.access {
                Access::ReadWrite => {
                    let mut record = LockRecord::for_this_launch(
                        config.key.as_str(),
                        &redacted,
                        &program_name,
                        cgroup::own_unit(),
                    );
                    record.lock_dir_inode = fs::metadata(&config.lock_dir).ok().map(|m| m.ino());
                    if let Err(e) = record.write_into(&held.lock) {
                        tracing::warn!(lock_file = %lock_path.display(), "holding the lock, but cannot write the launch record: {e}");
                    }
                }
                Access::ReadOnly => tracing::warn!(
                    lock_file = %lock_path.display(),
                    "holding the lock through a read-only descriptor (the file belongs to another user); its launch record is not updated"
                ),
            }
            let waited = wait_started
                .map(|start| format!(" after waiting {:.1}s", start.elapsed().as_secs_f64()))
                .unwrap_or_default();
            tracing::info!(key = %printable(config.key.as_str()), lock_file = %printable_path(&lock_path), "source lock acquired{waited}; starting {}", printable(&program_name));
            Err(exec::exec(prepared, &held))
        }
        Acquired::Busy { file, timed_out } => {
            report_busy(&config, &lock_path, &file, timed_out, &program_name);
            Ok(config.busy_status)
        }
    }
}

/// One warning: who holds the source (from the kernel), since when, and
/// what we did instead.
fn report_busy(
    config: &RunConfig,
    lock_path: &Path,
    file: &fs::File,
    timed_out: bool,
    program: &str,
) {
    let waited = match config.policy {
        BusyPolicy::Wait { timeout: Some(t) } if timed_out => {
            format!("gave up waiting after {}; ", seconds(t))
        }
        _ => String::new(),
    };
    tracing::warn!(
        key = %printable(config.key.as_str()),
        lock_file = %printable_path(lock_path),
        "source busy: held by {}; {waited}not starting {}, exiting {} (see `{}`)",
        describe_holders(config, file),
        printable(program),
        config.busy_status.code(),
        status_command(config),
    );
}

/// Who holds the lock on `file`, from the kernel: the taker when its own
/// descriptors still hold the lock (a few stats: a reused PID does not
/// pass), else every process the scan of `/proc` finds sharing it. Under a
/// burst of duplicate launches the cheap path keeps each loser cheap.
fn describe_holders(config: &RunConfig, file: &fs::File) -> String {
    let inode = LockedInode::of_file(file).ok();
    let record = LockRecord::read_from(file);
    let mut scan = HolderScan::lock_table(Path::new("/proc"));
    if let Some(inode) = inode
        && !scan.verify_takers(inode, record.as_ref())
    {
        scan = HolderScan::take(
            Path::new("/proc"),
            &config.lock_dir,
            &BTreeSet::from([inode]),
        );
    }
    let holders = inode
        .map(|i| scan.holders(i, record.as_ref()))
        .unwrap_or_default();
    let mut described: Vec<String> = holders.iter().map(describe_holder).collect();
    if described.is_empty() {
        described.push("a process this user cannot see".into());
    }
    let absent = inode
        .map(|i| scan.absent_takers(i, &holders))
        .unwrap_or_default();
    let exited: Vec<String> = absent
        .iter()
        .filter(|(_, why)| *why != Absence::Unverified)
        .map(|(pid, _)| pid.to_string())
        .collect();
    if !exited.is_empty() {
        described.push(format!("inherited from exited pid {}", exited.join(", ")));
    }
    described.join(", ")
}

/// The `status` command that shows this source's holders, quoted so it works
/// when pasted into a shell (a test runs it). An operator-named key is
/// asked for with `--key`, which takes it as it is.
fn status_command(config: &RunConfig) -> String {
    let key_flag = if config.key_named { "--key " } else { "" };
    format!(
        "ec-launch status --lock-dir {} {key_flag}{}",
        shell_word(&printable_path(&config.lock_dir)),
        shell_word(config.key.as_str()),
    )
}

/// `pid 4242 (ec-node) in x.service since 2026-…`.
/// Text from `/proc` is escaped: the log line goes to a terminal or the
/// journal, and a command name can be set to anything.
fn describe_holder(holder: &ProcessInfo) -> String {
    let mut text = format!("pid {}", holder.pid);
    if let Some(command) = &holder.command {
        let _ = write!(text, " ({})", printable(command));
    }
    match &holder.unit {
        Some(unit) => {
            let _ = write!(text, " in {}", printable(unit));
        }
        None => text.push_str(" outside any systemd unit"),
    }
    if let Some(since) = &holder.since {
        let _ = write!(text, " since {since}");
    }
    text
}

fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}
