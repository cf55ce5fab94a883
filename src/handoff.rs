//! The hand-off to cluster mode (ECP-0138): `ec-launch run` and `status`
//! with `--etcd` (or `EC_LAUNCH_ETCD`) exec `ec-launch-cluster`, first
//! thing, with the same arguments and environment. The command operators
//! type and the module writes stays `ec-launch run --etcd … -- PROGRAM`,
//! while the local launcher links no etcd client, TLS or supervisor.
//!
//! Decided before the argument parser, on the raw command line, so a local
//! launch pays a scan of its arguments and nothing more. The scan need not
//! be a parser: the cluster executable parses with the same clap definition
//! first, so whatever it is handed (a usage error included) is answered
//! exactly as this executable would have answered it.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::Error;
use crate::exit_code::ExitStatus;

/// The cluster executable's file name, looked for beside this one.
pub const CLUSTER_EXECUTABLE: &str = "ec-launch-cluster";

/// The variable that, set, puts `run` and `status` in cluster mode (clap
/// reads it for `--etcd`; set but empty it is an empty endpoint, which
/// cluster mode refuses, so it is handed off too).
const ETCD_ENV: &str = "EC_LAUNCH_ETCD";

/// Whether `args` (with `argv[0]`) ask for cluster mode: the subcommand is
/// `run` or `status`, and `--etcd`/`--etcd=…` comes before any `--`, or
/// `EC_LAUNCH_ETCD` is set. The subcommand is the first argument that is
/// not an option: the only options before it (`-v`, `--help`,
/// `--version`) take no value.
pub fn cluster_asked(args: &[OsString]) -> bool {
    let mut rest = args.iter().skip(1).map(|arg| arg.as_bytes());
    let Some(subcommand) = rest.find(|arg| !arg.starts_with(b"-")) else {
        return false;
    };
    if subcommand != b"run" && subcommand != b"status" {
        return false;
    }
    rest.take_while(|arg| *arg != b"--")
        .any(|arg| arg == b"--etcd" || arg.starts_with(b"--etcd="))
        || std::env::var_os(ETCD_ENV).is_some()
}

/// Execs [`CLUSTER_EXECUTABLE`] from the directory of `/proc/self/exe`,
/// never from `PATH` (a unit's `PATH` is not the package's), with `args`
/// as they are (`argv[0]` too, so usage and errors read as they would
/// have here) and the environment. Returns only when it cannot be run:
/// the error is reported, 69.
pub fn exec_cluster(args: &[OsString]) -> ExitStatus {
    let error = match cluster_path() {
        Ok(path) => exec(&path, args),
        Err(error) => error,
    };
    eprintln!("{}", crate::entry::error_line(&error));
    error.exit_status()
}

/// `ec-launch-cluster` beside the running executable.
fn cluster_path() -> Result<PathBuf, Error> {
    let own = Path::new("/proc/self/exe");
    let unreadable = |source: std::io::Error| Error::ClusterExecutable {
        path: own.to_owned(),
        source: Errno::from_raw(source.raw_os_error().unwrap_or(0)),
    };
    let exe = std::fs::read_link(own).map_err(unreadable)?;
    Ok(exe
        .parent()
        .unwrap_or(Path::new("/"))
        .join(CLUSTER_EXECUTABLE))
}

fn exec(path: &Path, args: &[OsString]) -> Error {
    let failed = |source| Error::ClusterExecutable {
        path: path.to_owned(),
        source,
    };
    // Arguments come from C strings: none holds a NUL.
    let Ok(program) = CString::new(path.as_os_str().as_bytes()) else {
        return failed(Errno::EINVAL);
    };
    let line: Result<Vec<CString>, _> = args
        .iter()
        .map(|arg| CString::new(OsStr::as_bytes(arg)))
        .collect();
    let Ok(line) = line else {
        return failed(Errno::EINVAL);
    };
    match nix::unistd::execv(&program, &line) {
        Err(errno) => failed(errno),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(args: &[&str]) -> Vec<OsString> {
        std::iter::once("ec-launch")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// Without `EC_LAUNCH_ETCD` in the test's environment: each case is
    /// about the command line alone.
    fn asked(args: &[&str]) -> bool {
        assert!(
            std::env::var_os(ETCD_ENV).is_none(),
            "unset {ETCD_ENV} to run these tests"
        );
        cluster_asked(&line(args))
    }

    #[test]
    fn etcd_in_run_or_status_before_the_program_is_cluster_mode() {
        assert!(asked(&["run", "--etcd", "http://e:2379", "--", "p"]));
        assert!(asked(&["-v", "run", "--etcd=http://e:2379", "--", "p"]));
        assert!(asked(&["status", "--etcd", "http://e:2379"]));
        // Handed off even when malformed: the cluster executable's parser
        // answers it as this one's would.
        assert!(asked(&["run", "--etcd"]));
    }

    #[test]
    fn etcd_after_the_separator_or_in_another_subcommand_is_not_cluster_mode() {
        assert!(!asked(&["run", "--source", "s", "--", "p", "--etcd", "x"]));
        assert!(!asked(&["key", "--etcd", "x"]));
        assert!(!asked(&["run", "--etcd-ca", "x", "--", "p"]));
        assert!(!asked(&["run", "--source", "s", "--", "p"]));
        assert!(!asked(&[]));
        assert!(!asked(&["--etcd", "x"]));
    }
}
