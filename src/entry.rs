//! The start of both executables (ECP-0138): the command line from the C
//! `main`'s `argv`, the standard descriptors made safe, clap's answer with
//! credentials redacted, and an error as the one line it is reported in.
//! Each executable's `main.rs` is these steps and its own dispatch.

use std::error::Error as _;
use std::ffi::{CStr, OsStr, OsString, c_char, c_int};
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;

use clap::Parser;

use crate::cli::Cli;
use crate::error;
use crate::exit_code::ExitStatus;
use crate::redact;

/// The command line `main` received, byte-exact: one allocation for the
/// vector and one per argument, the same as `std::env::args_os()` costs.
///
/// # Safety
/// `argv` is null, or points to at least `argc` pointers, each null or to a
/// NUL-terminated string valid for the duration of the call.
#[allow(clippy::similar_names)] // C's names for them
pub unsafe fn arguments(argc: c_int, argv: *const *const c_char) -> Vec<OsString> {
    let count = usize::try_from(argc).unwrap_or(0);
    if argv.is_null() {
        return Vec::new();
    }
    let mut line = Vec::with_capacity(count);
    for index in 0..count {
        // SAFETY: `index < argc`, so the caller guarantees the slot is readable.
        let arg = unsafe { *argv.add(index) };
        if arg.is_null() {
            break;
        }
        // SAFETY: a non-null slot points to a NUL-terminated string (caller).
        let bytes = unsafe { CStr::from_ptr(arg) }.to_bytes();
        line.push(OsStr::from_bytes(bytes).to_owned());
    }
    line
}

/// Opens `/dev/null` on whichever of descriptors 0, 1 and 2 is closed, before
/// anything else is opened. A daemon-style caller (`<&-`) would otherwise
/// get the lock file on a standard descriptor: the program's own redirection
/// would drop the lock, and with 2 closed our log would go into the lock
/// file. Rust's own start-up does this; our C `main` skips it (ECP-0129).
/// False when a descriptor cannot be opened: then nothing is safe to open.
pub fn ensure_standard_descriptors() -> bool {
    for fd in 0..3 {
        // SAFETY: F_GETFD only reads the flags of descriptor `fd`, open or not.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            continue;
        }
        // SAFETY: a NUL-terminated static path; no pointer outlives the call.
        // Every lower descriptor is open, so the lowest free one is `fd`.
        let opened = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        if opened != fd {
            return false;
        }
    }
    true
}

/// The command line, or clap's answer to it: help and version as clap
/// prints them, and usage errors with every argument that carries a
/// credential redacted (clap quotes unexpected and invalid arguments).
pub fn parse_args(args: &[OsString]) -> Result<Cli, ExitStatus> {
    // The module's local launch, without building clap's command tree.
    if let Some(cli) = crate::fast_cli::parse(args) {
        return Ok(cli);
    }
    let error = match Cli::try_parse_from(args) {
        Ok(cli) => return Ok(cli),
        Err(error) => error,
    };
    if !error.use_stderr() {
        // --help, --version: not an error, and nothing of the user's in it.
        let _ = error.print();
        return Err(ExitStatus::Success);
    }
    let args: Vec<String> = args
        .iter()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    eprint!("{}", redact_arguments(&error.render().to_string(), &args));
    Err(ExitStatus::Usage)
}

/// `text` with every argument (and the value of every `--flag=value`) that
/// could hold a credential replaced by its redacted form, longest first so
/// a value inside a longer argument is not half-replaced.
fn redact_arguments(text: &str, args: &[String]) -> String {
    let mut candidates: Vec<&str> = args
        .iter()
        .flat_map(|arg| {
            let value = arg.split_once('=').map(|(_, value)| value);
            std::iter::once(arg.as_str()).chain(value)
        })
        .filter(|arg| !arg.is_empty())
        .collect();
    candidates.sort_by_key(|arg| std::cmp::Reverse(arg.len()));
    let mut text = text.to_owned();
    for arg in candidates {
        let shown = redact::redact_word(arg);
        if shown != arg {
            text = text.replace(arg, &shown);
        }
    }
    text
}

/// `error: <what>: <cause>: <cause>; <what to do>`, on one line.
pub fn error_line(error: &error::Error) -> String {
    let mut line = format!("error: {error}");
    let mut cause = error.source();
    while let Some(inner) = cause {
        let _ = write!(line, ": {inner}");
        cause = inner.source();
    }
    line.push_str("; ");
    line.push_str(error.hint());
    line
}

/// The exit status of a command's result, its error reported first.
pub fn finish(result: Result<ExitStatus, error::Error>) -> ExitStatus {
    match result {
        Ok(status) => status,
        Err(error) => {
            eprintln!("{}", error_line(&error));
            error.exit_status()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;
    use crate::source_key::KeyError;

    #[test]
    fn the_command_line_is_read_from_the_argv_main_receives_byte_exact() {
        let strings = [c"ec-launch", c"key", c"/run/l\xff", c""];
        let mut argv: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        // SAFETY: `argv` holds four valid C strings and a terminating null.
        let line = unsafe { arguments(4, argv.as_ptr()) };
        let expected: Vec<OsString> = strings
            .iter()
            .map(|s| OsStr::from_bytes(s.to_bytes()).to_owned())
            .collect();
        assert_eq!(line, expected);
        assert_eq!(line[2].as_bytes(), b"/run/l\xff");
    }

    #[test]
    fn an_empty_or_missing_argv_is_an_empty_command_line() {
        // SAFETY: a null `argv` is allowed and never read.
        assert!(unsafe { arguments(0, std::ptr::null()) }.is_empty());
        // SAFETY: as above; a negative count reads nothing.
        assert!(unsafe { arguments(-1, std::ptr::null()) }.is_empty());
    }

    #[test]
    fn the_parser_sees_the_given_arguments_not_the_processes_own() {
        let args: Vec<OsString> = ["ec-launch", "key", "http://h/x"]
            .iter()
            .map(OsString::from)
            .collect();
        let cli = parse_args(&args).expect("parses");
        assert!(matches!(cli.command, Command::Key(_)));
    }

    #[test]
    fn every_source_error_gives_its_advice_once() {
        let causes = || {
            [
                KeyError::Empty,
                KeyError::Whitespace,
                KeyError::NotAUrl("relative URL without a base".into()),
                KeyError::NoHost,
                KeyError::AtAfterHost,
                KeyError::PathUnresolvable {
                    path: "/dev/x".into(),
                    reason: "not found".into(),
                },
                KeyError::BadOverride,
            ]
        };
        let errors = causes()
            .into_iter()
            .map(error::Error::Key)
            .chain(causes().into_iter().map(error::Error::SourceArg));
        for error in errors {
            let line = error_line(&error);
            assert_eq!(line.matches("; ").count(), 1, "{line}");
            assert!(!line.ends_with("; "), "{line}");
        }
    }
}
