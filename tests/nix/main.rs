//! The Nix files as far as Nix 2.8 (Debian's `nix-bin`) can check them
//! without nixpkgs: every `.nix` file parses, and `flake.lock` agrees with
//! the inputs `flake.nix` declares.
//!
//! These tests fail, never skip, when Nix is missing: CI installs `nix-bin`,
//! and a silently skipped check is a check nobody runs. They never touch the
//! system's Nix store or caches: parsing uses the `dummy://` store, and the
//! flake check copies `flake.nix` and `flake.lock` into a temporary
//! directory with its own store and cache, so it runs as any user and does
//! not depend on what git tracks. The module's build-time source check runs
//! here as its derivation would run it (`source_check`).
//!
//! The module itself is evaluated against NixOS's own modules
//! (`tests/nix/nixos.nix`), which need nixpkgs.lib and NixOS's module files
//! from outside the repository (`EC_NIXPKGS_LIB`, `EC_NIXOS_MODULES`; CI sets
//! both): its eval tests (`tests/nix/eval.nix`) and the real-NixOS check
//! (`nixos_check`: NixOS renders each scenario, systemd reads the result).
//! Without the two variables these tests say that they were skipped.

mod nixos_check;
mod source_check;

// The suites' shared support (ECP-0138). The systemd suite's reader of
// nixos/unit-policy.json is used here too, so a change to the file's shape
// that the suite cannot read fails here, where CI runs it.
use ec_test_support::{policy, privilege};

use std::env;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The nixpkgs revision the docs and the ECP promise; a relock must be a
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

/// The fenced `nix` code blocks of a Markdown file, in order.
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

/// The tuner-device example of `docs/nixos-module.md` is `tests/nix/devices-example.nix`,
/// which `tests/nix/eval.nix` evaluates (three waiting publishers on a
/// two-tuner box get `--tuners 2 --device …`, no assertion, no warning):
/// the documented configuration is the tested one.
#[test]
fn the_documented_tuner_example_is_the_one_eval_nix_evaluates() {
    let readme = fs::read_to_string(repo_root().join("docs/nixos-module.md"))
        .expect("cannot read docs/nixos-module.md");
    let example = fs::read_to_string(repo_root().join("tests/nix/devices-example.nix"))
        .expect("cannot read tests/nix/devices-example.nix");
    assert!(
        readme_nix_blocks(&readme).contains(&example),
        "docs/nixos-module.md has no ```nix block equal to tests/nix/devices-example.nix; \
         quote the file verbatim in its tuner devices section"
    );
}

/// The priority example of `docs/nixos-module.md` and of the README is
/// `tests/nix/priority-example.nix`, which `tests/nix/eval.nix` evaluates
/// (a recording at 300, background channels at 10, their flags, no
/// assertion, no warning).
#[test]
fn the_documented_priority_example_is_the_one_eval_nix_evaluates() {
    let example = fs::read_to_string(repo_root().join("tests/nix/priority-example.nix"))
        .expect("cannot read tests/nix/priority-example.nix");
    for page in ["docs/nixos-module.md", "README.md"] {
        let doc = fs::read_to_string(repo_root().join(page))
            .unwrap_or_else(|e| panic!("cannot read {page}: {e}"));
        assert!(
            readme_nix_blocks(&doc).contains(&example),
            "{page} has no ```nix block equal to tests/nix/priority-example.nix; \
             quote the file verbatim in its priorities section"
        );
    }
}

/// The two-node example of `docs/cluster.md` is `tests/nix/cluster-example.nix`,
/// which `tests/nix/eval.nix` evaluates for two host names (both nodes get
/// the same etcd flags and their own `--node`, no assertion, no warning):
/// the documented configuration is the tested one.
#[test]
fn the_documented_cluster_example_is_the_one_eval_nix_evaluates() {
    let readme = fs::read_to_string(repo_root().join("docs/cluster.md"))
        .expect("cannot read docs/cluster.md");
    let example = fs::read_to_string(repo_root().join("tests/nix/cluster-example.nix"))
        .expect("cannot read tests/nix/cluster-example.nix");
    assert!(
        readme_nix_blocks(&readme).contains(&example),
        "docs/cluster.md has no ```nix block equal to tests/nix/cluster-example.nix; \
         quote the file verbatim in its NixOS module part"
    );
}

/// `docs/nixos-options.md` is what `tests/nix/options-doc.nix` renders from
/// the module's option declarations (`lib.optionAttrSetToDocList`): a
/// changed option, default or description without the regenerated reference
/// fails here. `EC_BLESS=1` writes the rendering instead of comparing.
#[test]
fn the_generated_options_reference_is_the_committed_one() {
    let test = "the_generated_options_reference_is_the_committed_one";
    let Some(inputs) = nixos_check::NixosInputs::from_env(test) else {
        return;
    };
    let output = inputs.evaluate("tests/nix/options-doc.nix", &[]);
    nixos_check::assert_clean_evaluation("tests/nix/options-doc.nix", &output);
    let generated: String = serde_json::from_slice(&output.stdout)
        .expect("tests/nix/options-doc.nix printed no JSON string");
    let path = repo_root().join("docs/nixos-options.md");
    if std::env::var_os("EC_BLESS").is_some_and(|v| v == "1") {
        fs::write(&path, &generated).expect("cannot write docs/nixos-options.md");
        return;
    }
    let committed = fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/nixos-options.md differs from the module's option declarations; \
         regenerate it with `EC_BLESS=1 cargo test --locked --test nix {test}` \
         (EC_NIXPKGS_LIB and EC_NIXOS_MODULES set) and commit it"
    );
}

/// `tests/nix/eval.nix`: the module's behaviour (the policy, hardening,
/// escaping, devices, cluster mode, every assertion and warning), against
/// NixOS's own `systemd.services` types and merges.
#[test]
fn the_module_eval_tests_pass_against_nixos_own_modules() {
    let Some(inputs) =
        nixos_check::NixosInputs::from_env("the_module_eval_tests_pass_against_nixos_own_modules")
    else {
        return;
    };
    let output = inputs.evaluate("tests/nix/eval.nix", &[]);
    nixos_check::assert_clean_evaluation("tests/nix/eval.nix", &output);
    let result: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("eval.nix printed no JSON");
    assert!(
        result["passed"].as_u64().is_some_and(|passed| passed > 100),
        "eval.nix ran too few checks: {}",
        result["passed"]
    );
}

/// The scenarios of `tests/nix/nixos-check.nix`, evaluated once for every
/// test that reads them; `None` when the inputs are missing (announced).
fn nixos_scenarios(test: &str) -> Option<&'static [nixos_check::Scenario]> {
    static SCENARIOS: std::sync::OnceLock<Vec<nixos_check::Scenario>> = std::sync::OnceLock::new();
    let inputs = nixos_check::NixosInputs::from_env(test)?;
    Some(SCENARIOS.get_or_init(|| nixos_check::scenarios(&inputs)))
}

/// The README's quick start, the devices example, both cluster nodes, a
/// credentials configuration and the eval tests' base configuration all
/// evaluate through NixOS with no failing assertion (NixOS's or ours) and
/// no warning but those a scenario expects.
#[test]
fn every_scenario_evaluates_through_nixos_without_assertions_or_unexpected_warnings() {
    let Some(scenarios) = nixos_scenarios(
        "every_scenario_evaluates_through_nixos_without_assertions_or_unexpected_warnings",
    ) else {
        return;
    };
    let names: Vec<&str> = scenarios.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "readme-quick-start",
        "devices-example",
        "priority-example",
        "cluster-example-node-a",
        "cluster-example-node-b",
        "credentials",
        "eval-tests-base",
    ] {
        assert!(
            names.contains(&expected),
            "no scenario {expected} in {names:?}"
        );
    }
    let mut failures = String::new();
    for scenario in scenarios {
        if !scenario.assertions.is_empty() {
            let _ = writeln!(
                failures,
                "{}: failing assertions: {:#?}",
                scenario.name, scenario.assertions
            );
        }
        let unexpected: Vec<&String> = scenario
            .warnings
            .iter()
            .filter(|w| {
                !scenario
                    .expected_warnings
                    .iter()
                    .any(|e| w.contains(e.as_str()))
            })
            .collect();
        let missing: Vec<&String> = scenario
            .expected_warnings
            .iter()
            .filter(|e| {
                scenario
                    .warnings
                    .iter()
                    .filter(|w| w.contains(e.as_str()))
                    .count()
                    != 1
            })
            .collect();
        if !unexpected.is_empty() || !missing.is_empty() {
            let _ = writeln!(
                failures,
                "{}: unexpected warnings {unexpected:#?}; expected once but not {missing:#?}",
                scenario.name
            );
        }
        if scenario.units.is_empty() {
            let _ = writeln!(failures, "{}: no unit", scenario.name);
        }
    }
    assert!(failures.is_empty(), "{failures}");
}

/// `systemd-analyze verify` has nothing to say about any unit NixOS would
/// write for any scenario: no parse warning, no ignored value, no missing
/// program or dependency.
#[test]
fn systemd_analyze_verify_accepts_every_unit_nixos_writes() {
    let Some(scenarios) = nixos_scenarios("systemd_analyze_verify_accepts_every_unit_nixos_writes")
    else {
        return;
    };
    let mut failures = String::new();
    for scenario in scenarios {
        let root = nixos_check::ScratchRoot::write(scenario);
        let said = root.verify();
        if !said.is_empty() {
            let _ = writeln!(
                failures,
                "{}: systemd-analyze verify said:\n{said}",
                scenario.name
            );
        }
    }
    assert!(failures.is_empty(), "{failures}");
}

/// `systemd-tmpfiles --create` applies the tmpfiles.d file NixOS would write
/// to a scratch root without a word, and the lock directory comes out where
/// `sourceLockDir` says, mode 2775, root and the module's group.
#[test]
#[cfg_attr(
    ec_tests_without_root,
    ignore = "needs root: run the tests as root, as CI does"
)]
fn systemd_tmpfiles_creates_each_scenario_lock_directory_as_declared() {
    let test = "systemd_tmpfiles_creates_each_scenario_lock_directory_as_declared";
    if let Some(reason) = privilege::root_skip_reason("chown what systemd-tmpfiles creates") {
        privilege::announce_skip(test, &reason);
        return;
    }
    let Some(scenarios) = nixos_scenarios(test) else {
        return;
    };
    let mut failures = String::new();
    for scenario in scenarios {
        let root = nixos_check::ScratchRoot::write(scenario);
        let said = root.create_tmpfiles();
        if !said.is_empty() {
            let _ = writeln!(
                failures,
                "{}: systemd-tmpfiles said:\n{said}",
                scenario.name
            );
        }
        if let Some(problem) = nixos_check::lock_dir_problem(root.path(), scenario) {
            let _ = writeln!(failures, "{}: {problem}", scenario.name);
        }
    }
    assert!(failures.is_empty(), "{failures}");
}

/// `systemd-analyze security --offline=true` rates every unit of the module
/// at or below its ceiling (1.6, "OK", for a unit as the module hardens it;
/// a scenario that opens a device or relaxes a setting says its own).
#[test]
fn every_unit_stays_within_its_exposure_ceiling() {
    let Some(scenarios) = nixos_scenarios("every_unit_stays_within_its_exposure_ceiling") else {
        return;
    };
    let mut failures = String::new();
    let mut table = String::new();
    for scenario in scenarios {
        let root = nixos_check::ScratchRoot::write(scenario);
        for (unit, ceiling) in &scenario.exposure {
            let (exposure, said) = root.exposure(unit);
            let _ = writeln!(
                table,
                "{:<24} {unit:<48} {exposure:.1} (ceiling {ceiling:.1})",
                scenario.name
            );
            if exposure > *ceiling + 1e-9 {
                let _ = writeln!(
                    failures,
                    "{}: {unit}: exposure {exposure} above {ceiling}",
                    scenario.name
                );
            }
            if !said.is_empty() {
                let _ = writeln!(
                    failures,
                    "{}: {unit}: systemd-analyze security said: {said}",
                    scenario.name
                );
            }
        }
    }
    // Past the output capture, for docs/nixos-module.md's table.
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), table.as_bytes());
    assert!(failures.is_empty(), "{failures}\n{table}");
}

/// What systemd reads from each directive is what the option said:
/// `systemd --test` loads the units NixOS would write and dumps the values
/// it parsed (`ExecStart`'s words, `Environment`, `EnvironmentFile`,
/// `ReadWritePaths`, `DeviceAllow`), compared with what each scenario
/// expects. (systemd 252's dump has no `LoadCredential`; `systemd-analyze
/// verify` speaks for it.)
#[test]
fn systemd_reads_each_value_the_module_writes_as_the_option_gave_it() {
    let Some(scenarios) =
        nixos_scenarios("systemd_reads_each_value_the_module_writes_as_the_option_gave_it")
    else {
        return;
    };
    let mut failures = String::new();
    let mut compared = 0;
    for scenario in scenarios.iter().filter(|s| !s.expect.is_empty()) {
        let root = nixos_check::ScratchRoot::write(scenario);
        for (unit, expect) in &scenario.expect {
            let dump = root.dump(unit);
            let mut differs =
                |what: &str, got: &dyn std::fmt::Debug, want: &dyn std::fmt::Debug| {
                    let _ = writeln!(
                        failures,
                        "{} {unit}: {what}:\n  systemd read {got:?}\n  the option said {want:?}",
                        scenario.name
                    );
                };
            if let Some(want) = &expect.argv {
                compared += 1;
                let got = dump.argv("ExecStart");
                if got != [want.clone()] {
                    differs("ExecStart", &got, want);
                }
            }
            // Lists systemd adds to: NixOS sets PATH, ProtectClock allows
            // char-rtc.
            for (key, want) in [
                ("Environment", &expect.environment),
                ("DeviceAllow", &expect.device_allow),
            ] {
                if let Some(want) = want {
                    compared += 1;
                    let got = dump.values(key);
                    if !want.iter().all(|entry| got.contains(&entry.as_str())) {
                        differs(key, &got, want);
                    }
                }
            }
            if let Some(want) = &expect.environment_files {
                compared += 1;
                let got = dump.values("EnvironmentFile");
                if got != *want {
                    differs("EnvironmentFile", &got, want);
                }
            }
            if let Some(want) = &expect.read_write_paths {
                compared += 1;
                // One line, the paths separated by spaces (with a space in a
                // path, only a single path can be told apart).
                let got = dump.values("ReadWritePaths");
                if got != [want.join(" ")] {
                    differs("ReadWritePaths", &got, want);
                }
            }
        }
    }
    assert!(compared > 0, "no scenario expects anything of systemd");
    assert!(failures.is_empty(), "{failures}");
}

/// A value systemd has no way to read back (a control character, a path it
/// would not take as written, a word that is not a time span or a user
/// name) fails evaluation with NixOS's type error naming the option, one
/// case per kind of option in `tests/nix/refusals.nix`.
#[test]
fn a_value_systemd_cannot_read_back_fails_with_a_type_error_naming_its_option() {
    let Some(inputs) = nixos_check::NixosInputs::from_env(
        "a_value_systemd_cannot_read_back_fails_with_a_type_error_naming_its_option",
    ) else {
        return;
    };
    let output = inputs.evaluate("tests/nix/refusals.nix", &["--argstr", "case", ""]);
    nixos_check::assert_clean_evaluation("tests/nix/refusals.nix", &output);
    let cases: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&output.stdout).expect("refusals.nix printed no cases");
    assert!(cases.len() >= 5, "too few cases: {cases:?}");
    let mut failures = String::new();
    for (case, option) in &cases {
        let output = inputs.evaluate("tests/nix/refusals.nix", &["--argstr", "case", case]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let wanted = format!("A definition for option `{option}' is not of type");
        if output.status.success() || !stderr.contains(&wanted) {
            let _ = writeln!(
                failures,
                "{case}: want a failure with {wanted:?}; exit {}, stdout {}, stderr:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                stderr.lines().take(3).collect::<Vec<_>>().join("\n")
            );
        }
    }
    assert!(failures.is_empty(), "{failures}");
}
