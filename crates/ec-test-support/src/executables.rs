//! The executables under test: `ec-launch`, which Cargo names to its own
//! package's tests (`CARGO_BIN_EXE_ec-launch`), and `ec-launch-cluster`,
//! which `ec-launch` execs from its own directory for `--etcd` (ECP-0138).
//! Cargo builds the second only for a build of the workspace (`cargo test`
//! at its root, every member a default member), not for `cargo test --test
//! integration`; so a suite checks that it is there and not older than the
//! sources, and fails saying how to build it, instead of testing a stale
//! cluster mode.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The cluster executable's file name (as the library's `handoff` has it).
pub const CLUSTER_EXECUTABLE: &str = "ec-launch-cluster";

/// `ec-launch-cluster` beside `ec_launch`, checked to exist and to be no
/// older than any source it is built from.
///
/// # Panics
/// When it is missing or stale, naming the command that builds it.
#[must_use]
pub fn cluster_beside(ec_launch: &Path) -> PathBuf {
    let path = ec_launch.with_file_name(CLUSTER_EXECUTABLE);
    let fix = "build it with `cargo build -p ec-launch-cluster` (a plain `cargo test` at the workspace root builds it too)";
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{} is missing ({e}): {fix}", path.display()));
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let sources = [
        root.join("src"),
        root.join("crates/ec-launch-cluster"),
        root.join("Cargo.toml"),
        root.join("Cargo.lock"),
    ];
    if let Some(newer) = sources.iter().find_map(|s| newer_than(s, built)) {
        panic!(
            "{} is older than {}: {fix}",
            path.display(),
            newer.display()
        );
    }
    path
}

/// A file at or under `path` modified after `built`, if any.
fn newer_than(path: &Path, built: SystemTime) -> Option<PathBuf> {
    let metadata = std::fs::metadata(path).ok()?;
    if metadata.is_dir() {
        return std::fs::read_dir(path)
            .ok()?
            .flatten()
            .find_map(|entry| newer_than(&entry.path(), built));
    }
    (metadata.modified().ok()? > built).then(|| path.to_owned())
}
