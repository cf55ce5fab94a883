//! The Nix files as far as Nix 2.8 (Debian's `nix-bin`) can check them
//! without nixpkgs: every `.nix` file parses, and `flake.lock` agrees with
//! the inputs `flake.nix` declares.
//!
//! These tests fail, never skip, when Nix is missing: CI installs `nix-bin`,
//! and a silently skipped check is a check nobody runs. They never touch the
//! system's Nix store or caches: parsing uses the `dummy://` store, and the
//! flake check copies `flake.nix` and `flake.lock` into a temporary
//! directory with its own store and cache, so it runs as any user and does
//! not depend on what git tracks. Evaluating the module needs a nixpkgs.lib
//! tree, which CI does not have; see `tests/nix/eval.nix` and the README.
//! The module's build-time source check runs here as its derivation would
//! run it (`source_check`).

// The systemd suite's reader of nixos/unit-policy.json, so a change to the
// file's shape that the suite cannot read fails here, where CI runs it.
#[allow(dead_code)]
#[path = "../systemd/policy.rs"]
mod policy;
mod source_check;

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The nixpkgs revision the README and the ECP promise; a relock must be a
/// deliberate change to this test too.
const NIXPKGS_REV: &str = "34268251cf5547d39063f2c5ea9a196246f7f3a6";
const NIXPKGS_NAR_HASH: &str = "sha256-G3tw/IXmaH6IQ2upZvhuN9sG8CkuX+BLuJDpE8hz0Ds=";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The path of `program` on `PATH`, or a panic that says how to get it.
#[track_caller]
fn require(program: &str) -> PathBuf {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{program} not found: apt-get install nix-bin"))
}

#[track_caller]
fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// Every `.nix` file in the repository, outside build output and hidden
/// directories (`.git`, the lead's scratch space).
fn nix_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let file_type = entry
            .file_type()
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
        if file_type.is_dir() {
            let skipped = name.starts_with('.') || name == "target" || name.starts_with("result");
            if !skipped {
                nix_files(&path, found);
            }
        } else if path.extension() == Some(OsStr::new("nix")) {
            found.push(path);
        }
    }
}

#[test]
fn every_nix_file_parses() {
    let nix_instantiate = require("nix-instantiate");
    let mut files = Vec::new();
    nix_files(&repo_root(), &mut files);
    files.sort();
    for expected in [
        "flake.nix",
        "nix/package.nix",
        "nixos/module.nix",
        "tests/nix/eval.nix",
        "tests/nix/vm-test.nix",
    ] {
        assert!(
            files.contains(&repo_root().join(expected)),
            "{expected} is missing; found {files:?}"
        );
    }

    let failures: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let output = run(Command::new(&nix_instantiate)
                .args(["--store", "dummy://", "--parse"])
                .arg(file));
            (!output.status.success()).then(|| {
                format!(
                    "{}: {}",
                    file.display(),
                    String::from_utf8_lossy(&output.stderr).trim()
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "Nix files that do not parse:\n{}",
        failures.join("\n")
    );
}

/// `nix flake metadata` on a copy of `flake.nix` and `flake.lock`, offline
/// and forbidden to change the lock: it fails when `flake.nix` declares an
/// input the lock does not have (Nix tries to fetch it), when the lock has
/// an input `flake.nix` no longer declares, or when the lock is malformed.
/// It cannot check that the locked revision and hash exist; that needs the
/// network.
#[test]
fn flake_lock_matches_flake_inputs_offline() {
    let nix = require("nix");
    let scratch = tempfile::tempdir().expect("cannot create a temporary directory");
    let flake = scratch.path().join("flake");
    fs::create_dir(&flake).expect("cannot create the flake copy");
    for name in ["flake.nix", "flake.lock"] {
        fs::copy(repo_root().join(name), flake.join(name))
            .unwrap_or_else(|e| panic!("cannot copy {name}: {e}"));
    }

    let output = run(Command::new(&nix)
        .env("HOME", scratch.path())
        .env("XDG_CACHE_HOME", scratch.path().join("cache"))
        .args(["--extra-experimental-features", "nix-command flakes"])
        .arg("--store")
        .arg(scratch.path().join("store"))
        .args([
            "flake",
            "metadata",
            "--offline",
            "--no-update-lock-file",
            "--json",
        ])
        .arg(format!("path:{}", flake.display())));
    assert!(
        output.status.success(),
        "flake.lock does not match flake.nix (or is malformed); \
         `nix flake metadata --offline --no-update-lock-file` says:\n{}",
        String::from_utf8_lossy(&output.stderr).trim()
    );

    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("nix flake metadata printed no JSON");
    let locked = &metadata["locks"]["nodes"]["nixpkgs"]["locked"];
    assert_eq!(
        locked["rev"], NIXPKGS_REV,
        "nixpkgs is locked to another revision"
    );
    assert_eq!(
        locked["narHash"], NIXPKGS_NAR_HASH,
        "nixpkgs narHash changed"
    );
}

#[test]
fn flake_lock_pins_every_input_to_a_revision_and_hash() {
    let text = fs::read_to_string(repo_root().join("flake.lock")).expect("cannot read flake.lock");
    let lock: serde_json::Value = serde_json::from_str(&text).expect("flake.lock is not JSON");
    assert_eq!(lock["version"], 7, "flake.lock is not in the v7 format");
    let root = lock["root"].as_str().expect("flake.lock has no root node");
    let nodes = lock["nodes"].as_object().expect("flake.lock has no nodes");
    for (name, node) in nodes.iter().filter(|(name, _)| name.as_str() != root) {
        let locked = &node["locked"];
        let rev = locked["rev"].as_str().unwrap_or_default();
        assert!(
            rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()),
            "input {name} is not pinned to a full revision: {locked}"
        );
        let nar_hash = locked["narHash"].as_str().unwrap_or_default();
        assert!(
            nar_hash.starts_with("sha256-") && nar_hash.len() == 51,
            "input {name} has no sha256 narHash: {locked}"
        );
        assert!(
            locked["lastModified"].is_u64(),
            "input {name} has no lastModified: {locked}"
        );
    }
}

#[test]
fn the_unit_policy_reads_as_the_systemd_suite_reads_it() {
    let policy = policy::UnitPolicy::load().unwrap_or_else(|e| panic!("{e}"));
    // A publisher gets both halves: the values the module sets today.
    assert_eq!(
        policy.service_lines(policy::StopTimeout::PolicyDefault),
        "KillMode=control-group\nRestart=always\nRestartPreventExitStatus=75\n\
         SendSIGKILL=yes\nSuccessExitStatus=75\nTimeoutStopSec=10s\n"
    );
    for (shape, why) in [
        (
            r#"{"kill": {"KillMode": "control-group"}, "extra": {}}"#,
            "unknown key",
        ),
        (
            r#"{"kill": {"KillMode": "control-group"}, "restart": {"KillMode": "mixed"}}"#,
            "more than one half",
        ),
        (r#"{"KillMode": "control-group"}"#, "unknown key"),
    ] {
        let error = policy::UnitPolicy::from_json(shape).expect_err(shape);
        assert!(error.contains(why), "{shape}: {error}");
    }
}

/// The fenced `nix` code blocks of the README, in order.
fn readme_nix_blocks(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```nix") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The README's node flake is what operators paste into an existing
/// configuration: it must parse, declare the `nixpkgs` it builds with, and
/// make every other input follow it (one nixpkgs on the node, not several).
#[test]
fn the_readme_node_flake_parses_and_its_inputs_follow_its_nixpkgs() {
    let nix_instantiate = require("nix-instantiate");
    let readme = fs::read_to_string(repo_root().join("README.md")).expect("cannot read README.md");
    let blocks = readme_nix_blocks(&readme);
    let flakes: Vec<&String> = blocks
        .iter()
        .filter(|b| b.contains("nixosSystem"))
        .collect();
    assert_eq!(
        flakes.len(),
        1,
        "want one node flake in the README, found {}",
        flakes.len()
    );

    let scratch = tempfile::tempdir().expect("cannot create a temporary directory");
    let file = scratch.path().join("flake.nix");
    fs::write(&file, flakes[0]).expect("cannot write the README's flake");
    let output = run(Command::new(&nix_instantiate)
        .args([
            "--store", "dummy://", "--eval", "--strict", "--json", "--expr",
        ])
        .arg(format!("(import {}).inputs", file.display())));
    assert!(
        output.status.success(),
        "the README's node flake does not evaluate:\n{}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let inputs: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("nix-instantiate printed no JSON");
    let inputs = inputs.as_object().expect("inputs is not an attribute set");
    assert!(
        inputs.contains_key("nixpkgs"),
        "the README's node flake has no nixpkgs input: {inputs:?}"
    );
    for (name, input) in inputs.iter().filter(|(name, _)| name.as_str() != "nixpkgs") {
        assert_eq!(
            input["inputs"]["nixpkgs"]["follows"], "nixpkgs",
            "input {name} does not follow the node's nixpkgs: {input}"
        );
    }
}

/// The README's tuner-device example is `tests/nix/devices-example.nix`,
/// which `tests/nix/eval.nix` evaluates (three waiting publishers on a
/// two-tuner box get `--tuners 2 --device …`, no assertion, no warning):
/// the documented configuration is the tested one.
#[test]
fn the_readme_tuner_example_is_the_one_eval_nix_evaluates() {
    let readme = fs::read_to_string(repo_root().join("README.md")).expect("cannot read README.md");
    let example = fs::read_to_string(repo_root().join("tests/nix/devices-example.nix"))
        .expect("cannot read tests/nix/devices-example.nix");
    assert!(
        readme_nix_blocks(&readme).contains(&example),
        "README.md has no ```nix block equal to tests/nix/devices-example.nix; \
         quote the file verbatim in the NixOS module's tuner section"
    );
}

/// The README's two-node cluster example is `tests/nix/cluster-example.nix`,
/// which `tests/nix/eval.nix` evaluates for two host names (both nodes get
/// the same etcd flags and their own `--node`, no assertion, no warning):
/// the documented configuration is the tested one.
#[test]
fn the_readme_cluster_example_is_the_one_eval_nix_evaluates() {
    let readme = fs::read_to_string(repo_root().join("README.md")).expect("cannot read README.md");
    let example = fs::read_to_string(repo_root().join("tests/nix/cluster-example.nix"))
        .expect("cannot read tests/nix/cluster-example.nix");
    assert!(
        readme_nix_blocks(&readme).contains(&example),
        "README.md has no ```nix block equal to tests/nix/cluster-example.nix; \
         quote the file verbatim in the cluster section's NixOS module part"
    );
}
