//! Diagnostics on stderr, never stdout (stdout belongs to `key`/`status`
//! output, and after exec to the program).
//!
//! The level comes from `-v` (info, debug, trace), overridden by
//! `EC_LAUNCH_LOG`. Not `RUST_LOG`: the exec'd program inherits our
//! environment, and an operator raising our verbosity must not raise its.
//! Under journald (`JOURNAL_STREAM` names our stderr, systemd.exec(5)) lines
//! carry no timestamp or colour: the journal adds its own metadata.

use std::io::{self, IsTerminal};
use std::os::fd::AsFd;

use tracing_subscriber::filter::LevelFilter;

/// The variable that overrides `-v`.
const LOG_ENV: &str = "EC_LAUNCH_LOG";

/// Installs the stderr logger.
pub fn init(verbosity: u8) {
    let from_env = std::env::var(LOG_ENV).ok();
    let parsed = from_env.as_deref().map(parse_level);
    let filter = match parsed {
        Some(Some(filter)) => filter,
        _ => match verbosity {
            0 => LevelFilter::INFO,
            1 => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        },
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_max_level(filter)
        .with_target(false);
    if stderr_is_journal() {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.with_ansi(io::stderr().is_terminal()).init();
    }
    if let (Some(value), Some(None)) = (from_env, parsed) {
        tracing::warn!(
            "{LOG_ENV}={value:?} is not a level (off, error, warn, info, debug, trace); using -v"
        );
    }
}

fn parse_level(text: &str) -> Option<LevelFilter> {
    match text.trim().to_ascii_lowercase().as_str() {
        "off" => Some(LevelFilter::OFF),
        "error" => Some(LevelFilter::ERROR),
        "warn" | "warning" => Some(LevelFilter::WARN),
        "info" => Some(LevelFilter::INFO),
        "debug" => Some(LevelFilter::DEBUG),
        "trace" => Some(LevelFilter::TRACE),
        _ => None,
    }
}

/// True when `JOURNAL_STREAM` (`<dev>:<inode>`) names our stderr, which is
/// how systemd.exec(5) says to detect a journal connection.
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(io::stderr().as_fd()) {
        Ok(stat) => stat.st_dev == dev && stat.st_ino == ino,
        Err(_) => false,
    }
}
