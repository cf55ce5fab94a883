//! The module checked against NixOS itself, and its output against systemd
//! itself (evolution/ECP-0137-the-module-checked-against-nixos.md).
//!
//! `tests/nix/nixos-check.nix` evaluates each scenario with NixOS's own
//! modules and prints what NixOS would write for it; this writes that into a
//! scratch root (units in `/etc/systemd/system`, the tmpfiles.d file,
//! `/etc/passwd` and `/etc/group`, a stand-in executable at each
//! `ExecStart`'s path, the host's upstream units in `/usr/lib/systemd/system`
//! for the targets NixOS would link there) and asks systemd what it makes of
//! it: `systemd-analyze verify` (any message fails), `systemd-tmpfiles
//! --create` (any message fails; the lock directory must come out as
//! declared), `systemd-analyze security --offline=true` (the exposure must
//! stay under the scenario's ceiling) and `systemd --test`, whose dump says
//! which values systemd read from each directive.
//!
//! The inputs are NixOS's module files and nixpkgs.lib, which are not part
//! of this repository: `EC_NIXOS_MODULES` and `EC_NIXPKGS_LIB` name them.
//! `.ci/run` sets both, so CI always runs these tests; without them a test
//! says that it was skipped and how to run it, and passes.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;

const LIB_ENV: &str = "EC_NIXPKGS_LIB";
const MODULES_ENV: &str = "EC_NIXOS_MODULES";

/// Where nixpkgs.lib and NixOS's module files are, when the caller said.
#[derive(Debug)]
pub struct NixosInputs {
    nixpkgs_lib: PathBuf,
    nixos_modules: PathBuf,
}

impl NixosInputs {
    /// The inputs, or `None` (the skip announced) when neither variable is
    /// set. One set without the other, or a path that is not there, fails:
    /// whoever set one meant the tests to run.
    #[track_caller]
    pub fn from_env(test: &str) -> Option<Self> {
        let lib = std::env::var_os(LIB_ENV).filter(|v| !v.is_empty());
        let modules = std::env::var_os(MODULES_ENV).filter(|v| !v.is_empty());
        let (nixpkgs_lib, nixos_modules) = match (lib, modules) {
            (Some(lib), Some(modules)) => (PathBuf::from(lib), PathBuf::from(modules)),
            (None, None) => {
                super::privilege::announce_skip(
                    test,
                    &format!(
                        "needs nixpkgs.lib and NixOS's module files, which are not in this repository; \
                         set {LIB_ENV}=/abs/path/nixpkgs-lib and {MODULES_ENV}=/abs/path/nixos-modules \
                         (CI: .ci/run sets them to ../shared/nixpkgs-lib and ../shared/nixos-modules; \
                         see docs/nixos-module.md, Checks)"
                    ),
                );
                return None;
            }
            (lib, _) => panic!(
                "{} is set but {} is not: the NixOS checks need both",
                if lib.is_some() { LIB_ENV } else { MODULES_ENV },
                if lib.is_some() { MODULES_ENV } else { LIB_ENV },
            ),
        };
        for (variable, path, inside) in [
            (LIB_ENV, &nixpkgs_lib, ""),
            (MODULES_ENV, &nixos_modules, "nixos/lib/utils.nix"),
        ] {
            assert!(
                path.is_absolute() && path.join(inside).exists(),
                "{variable}={} is not an absolute path to what it names",
                path.display()
            );
        }
        Some(Self {
            nixpkgs_lib,
            nixos_modules,
        })
    }

    /// `nix-instantiate --eval --strict --json FILE ARGS…` with the inputs
    /// set, as any user, touching no store. (Without `--show-trace`, which
    /// makes a failing evaluation many times slower; add it by hand to see
    /// where one failed.)
    #[track_caller]
    pub fn evaluate(&self, file: &str, args: &[&str]) -> Output {
        let nix_instantiate = super::require("nix-instantiate");
        let mut command = Command::new(nix_instantiate);
        command
            .current_dir(super::repo_root())
            .env(LIB_ENV, &self.nixpkgs_lib)
            .env(MODULES_ENV, &self.nixos_modules)
            .args(["--store", "dummy://", "--eval", "--strict", "--json"])
            .arg(file)
            .args(args);
        super::run(&mut command)
    }
}

/// One configuration as NixOS renders it (`render` in nixos-check.nix).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scenario {
    pub name: String,
    pub units: BTreeMap<String, String>,
    pub tmpfiles: String,
    pub passwd: String,
    pub group: String,
    pub assertions: Vec<String>,
    pub warnings: Vec<String>,
    pub expected_warnings: Vec<String>,
    pub expect: BTreeMap<String, Expect>,
    pub exposure: BTreeMap<String, f64>,
    pub lock_dir: String,
    pub lock_group: String,
}

/// What systemd must read from one unit, as `systemd --test` dumps it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expect {
    /// `ExecStart=`'s argv before `$` substitution, so a literal `$` shows
    /// as `$$` (systemd.service(5), "Command lines").
    pub argv: Option<Vec<String>>,
    /// Entries that must be among `Environment=` (NixOS adds `PATH`).
    pub environment: Option<Vec<String>>,
    pub environment_files: Option<Vec<String>>,
    pub read_write_paths: Option<Vec<String>>,
    pub device_allow: Option<Vec<String>>,
}

/// Every scenario of nixos-check.nix, the README's quick start copied out
/// of README.md first.
#[track_caller]
pub fn scenarios(inputs: &NixosInputs) -> Vec<Scenario> {
    let readme = tempfile::tempdir().expect("cannot create a temporary directory");
    write_readme_flake(readme.path());
    let output = inputs.evaluate(
        "tests/nix/nixos-check.nix",
        &[
            "--argstr",
            "readmeDir",
            readme.path().to_str().expect("temporary path is UTF-8"),
        ],
    );
    assert_clean_evaluation("tests/nix/nixos-check.nix", &output);
    let all: ScenarioList = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("nixos-check.nix printed no scenarios: {e}"));
    all.scenarios
}

#[derive(Deserialize)]
struct ScenarioList {
    scenarios: Vec<Scenario>,
}

/// A successful evaluation that printed nothing on stderr: a trace or an
/// evaluation warning is as unexpected as a failure.
#[track_caller]
pub fn assert_clean_evaluation(file: &str, output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{file} does not evaluate:\n{}",
        stderr.trim()
    );
    assert!(
        stderr.trim().is_empty(),
        "{file} evaluated with messages on stderr:\n{}",
        stderr.trim()
    );
}

/// The README's node flake, as `flake.nix`, beside a `configuration.nix`
/// standing in for the node's existing configuration. The stand-in defines
/// nothing the quick start refers to: pasted verbatim into any node, the
/// quick start must evaluate without a warning (it once named an
/// `extraUnits` service that only this stand-in defined).
#[track_caller]
fn write_readme_flake(dir: &Path) {
    let readme =
        fs::read_to_string(super::repo_root().join("README.md")).expect("cannot read README.md");
    let flakes: Vec<String> = super::readme_nix_blocks(&readme)
        .into_iter()
        .filter(|block| block.contains("nixosSystem"))
        .collect();
    assert_eq!(flakes.len(), 1, "want one node flake in the README");
    fs::write(dir.join("flake.nix"), &flakes[0]).expect("cannot write the README's flake");
    fs::write(
        dir.join("configuration.nix"),
        "# The node's existing configuration, as far as the quick start refers to it.\n\
         { }\n",
    )
    .expect("cannot write configuration.nix");
}

/// A root directory holding what NixOS would write for one scenario.
pub struct ScratchRoot {
    dir: tempfile::TempDir,
    units: Vec<String>,
}

impl ScratchRoot {
    #[track_caller]
    pub fn write(scenario: &Scenario) -> Self {
        let dir = tempfile::tempdir().expect("cannot create a scratch root");
        // `systemd --test` reads it as nobody when the tests run as root.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .expect("cannot open the scratch root to other users");
        let root = dir.path();
        let units = root.join("etc/systemd/system");
        fs::create_dir_all(&units).expect("cannot create etc/systemd/system");
        for (name, text) in &scenario.units {
            fs::write(units.join(name), text)
                .unwrap_or_else(|e| panic!("cannot write {name}: {e}"));
            for program in exec_programs(text) {
                let path = root.join(program.trim_start_matches('/'));
                fs::create_dir_all(path.parent().expect("an absolute program path"))
                    .expect("cannot create a program's directory");
                fs::write(&path, "#!/bin/sh\nexit 0\n").expect("cannot write a stand-in program");
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .expect("cannot make a stand-in program executable");
            }
        }
        // NixOS links systemd's upstream units (sysinit.target,
        // network-online.target, …) into /etc/systemd/system; the host's
        // systemd has the same ones.
        copy_tree(&host_unit_dir(), &root.join("usr/lib/systemd/system"));
        let etc = root.join("etc");
        fs::write(etc.join("passwd"), &scenario.passwd).expect("cannot write etc/passwd");
        fs::write(etc.join("group"), &scenario.group).expect("cannot write etc/group");
        fs::create_dir_all(etc.join("tmpfiles.d")).expect("cannot create etc/tmpfiles.d");
        fs::write(etc.join("tmpfiles.d/00-nixos.conf"), &scenario.tmpfiles)
            .expect("cannot write 00-nixos.conf");
        Self {
            dir,
            units: scenario.units.keys().cloned().collect(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn root_arg(&self) -> String {
        format!("--root={}", self.path().display())
    }

    /// What `systemd-analyze verify` says about every unit; empty when it
    /// has nothing to say.
    #[track_caller]
    pub fn verify(&self) -> String {
        let output = super::run(
            Command::new(require_systemd_analyze())
                .arg("verify")
                .arg(self.root_arg())
                .arg("--man=no")
                .args(&self.units),
        );
        messages(&output)
    }

    /// What `systemd-tmpfiles --create` says about the rendered tmpfiles.d
    /// file, applied to the scratch root; empty when it has nothing to say.
    #[track_caller]
    pub fn create_tmpfiles(&self) -> String {
        let output = super::run(
            Command::new(super::require("systemd-tmpfiles"))
                .arg("--create")
                .arg(self.root_arg())
                .arg(self.path().join("etc/tmpfiles.d/00-nixos.conf")),
        );
        messages(&output)
    }

    /// `systemd-analyze security --offline=true`'s overall exposure of
    /// `unit`, and anything else it said.
    #[track_caller]
    pub fn exposure(&self, unit: &str) -> (f64, String) {
        let output = super::run(
            Command::new(require_systemd_analyze())
                .args(["security", "--offline=true", "--no-pager"])
                .arg(self.root_arg())
                .arg(unit),
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let marker = format!("Overall exposure level for {unit}: ");
        let exposure = stdout
            .lines()
            .find_map(|line| line.split_once(&marker).map(|(_, rest)| rest))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|figure| figure.parse().ok())
            .unwrap_or_else(|| {
                panic!("systemd-analyze security printed no exposure for {unit}:\n{stdout}")
            });
        (
            exposure,
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        )
    }

    /// The unit as systemd loaded it: `systemd --test`'s dump (run as
    /// nobody: it refuses root), with the scratch root's units first.
    #[track_caller]
    pub fn dump(&self, unit: &str) -> UnitDump {
        let systemd = ["/lib/systemd/systemd", "/usr/lib/systemd/systemd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|path| path.is_file())
            .expect(
                "no systemd binary in /lib/systemd or /usr/lib/systemd: apt-get install systemd",
            );
        let mut command = if nix::unistd::geteuid().is_root() {
            let mut command = Command::new(super::require("setpriv"));
            command
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(systemd);
            command
        } else {
            Command::new(systemd)
        };
        let mut unit_path = self.path().join("etc/systemd/system").into_os_string();
        // The trailing colon appends systemd's own unit directories.
        unit_path.push(":");
        command
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/nonexistent")
            .env("SYSTEMD_UNIT_PATH", unit_path)
            .args(["--test", "--system", "--no-pager", "--log-target=console"])
            .arg(format!("--unit={unit}"));
        let output = super::run(&mut command);
        let stdout = String::from_utf8_lossy(&output.stdout);
        UnitDump::parse(&stdout, unit).unwrap_or_else(|| {
            panic!(
                "systemd --test dumped no {unit}:\n{}{}",
                stdout,
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }
}

/// The fields of one unit in `systemd --test`'s dump: `Key: value` lines
/// (a value with a newline continues on lines that are not indented), and
/// each command's argv.
#[derive(Debug, Default)]
pub struct UnitDump {
    fields: Vec<(String, String)>,
    commands: BTreeMap<String, Vec<Vec<String>>>,
}

impl UnitDump {
    fn parse(dump: &str, unit: &str) -> Option<Self> {
        let header = format!("\t-> Unit {unit}:");
        let start = dump.find(&header)? + header.len();
        let body = &dump[start..];
        // The unit's block ends where the next one at its level starts.
        let end = body.find("\n\t-> ").unwrap_or(body.len());
        let mut parsed = Self::default();
        let mut command: Option<String> = None;
        for line in body[..end].split('\n').skip(1) {
            if let Some(field) = line.strip_prefix("\t\t") {
                if let Some(name) = field.strip_prefix("-> ").and_then(|f| f.strip_suffix(':')) {
                    command = Some(name.to_owned());
                } else if let Some(argv) = field.strip_prefix("\tCommand Line: ") {
                    let name = command.clone().unwrap_or_default();
                    parsed
                        .commands
                        .entry(name)
                        .or_default()
                        .push(parse_command_line(argv));
                } else if !field.starts_with('\t') {
                    command = None;
                    let (key, value) = field
                        .split_once(": ")
                        .unwrap_or((field.trim_end_matches(':'), ""));
                    parsed.fields.push((key.to_owned(), value.to_owned()));
                }
            } else if let Some((_, value)) = parsed.fields.last_mut() {
                value.push('\n');
                value.push_str(line);
            }
        }
        Some(parsed)
    }

    /// Every value of `key`, in order.
    pub fn values(&self, key: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The argv of each `key` command (`ExecStart`, …).
    pub fn argv(&self, key: &str) -> &[Vec<String>] {
        self.commands.get(key).map_or(&[], Vec::as_slice)
    }
}

/// One `Command Line:` of the dump: words separated by spaces, quoted ones
/// in double quotes with C escapes (systemd's `quote_command_line` with
/// `cescape`; `\$` for a `$`).
fn parse_command_line(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let Some(&first) = chars.peek() else {
            return words;
        };
        let mut word = String::new();
        if first == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => word.push_str(&unescape(&mut chars)),
                    c => word.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
}

/// One C escape after its backslash, as systemd's cescape writes them.
fn unescape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> String {
    match chars.next() {
        Some('n') => "\n".into(),
        Some('t') => "\t".into(),
        Some('r') => "\r".into(),
        Some('a') => "\u{7}".into(),
        Some('b') => "\u{8}".into(),
        Some('f') => "\u{c}".into(),
        Some('v') => "\u{b}".into(),
        Some(digit @ '0'..='7') => {
            let mut octal = String::from(digit);
            for _ in 0..2 {
                if let Some(&d @ '0'..='7') = chars.peek() {
                    octal.push(d);
                    chars.next();
                }
            }
            let byte = u8::from_str_radix(&octal, 8).expect("octal digits");
            char::from(byte).to_string()
        }
        Some(c) => c.to_string(),
        None => "\\".into(),
    }
}

/// The programs a unit's `ExecStart=` lines run: the first word of each,
/// unquoted as systemd unquotes it (the module and NixOS write JSON
/// strings), without the `-@:+!` prefixes.
fn exec_programs(unit: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|line| line.strip_prefix("ExecStart="))
        .filter(|value| !value.is_empty())
        .map(|value| {
            let value = value.trim_start_matches(['-', '@', ':', '+', '!']);
            let program = if value.starts_with('"') {
                let mut stream = serde_json::Deserializer::from_str(value).into_iter::<String>();
                stream.next().and_then(Result::ok).unwrap_or_else(|| {
                    panic!("ExecStart's program is not a quoted string: {value}")
                })
            } else {
                value.split(' ').next().unwrap_or_default().to_owned()
            };
            program.replace("%%", "%").replace("$$", "$")
        })
        .collect()
}

fn require_systemd_analyze() -> PathBuf {
    super::require("systemd-analyze")
}

/// The host systemd's unit directory.
fn host_unit_dir() -> PathBuf {
    ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.join("sysinit.target").exists())
        .expect("no systemd unit directory with sysinit.target: apt-get install systemd")
}

/// A copy of `from` at `to`, symlinks kept as links.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("cannot create {}: {e}", to.display()));
    for entry in
        fs::read_dir(from).unwrap_or_else(|e| panic!("cannot list {}: {e}", from.display()))
    {
        let entry = entry.expect("cannot list a unit directory");
        let target = to.join(entry.file_name());
        let kind = entry.file_type().expect("cannot stat a unit");
        if kind.is_symlink() {
            let link = fs::read_link(entry.path()).expect("cannot read a unit link");
            std::os::unix::fs::symlink(link, &target).expect("cannot copy a unit link");
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("cannot copy a unit");
        }
    }
}

/// stdout and stderr, trimmed: what a tool said.
fn messages(output: &Output) -> String {
    let mut said = String::new();
    for stream in [&output.stdout, &output.stderr] {
        let text = String::from_utf8_lossy(stream);
        if !text.trim().is_empty() {
            let _ = writeln!(said, "{}", text.trim());
        }
    }
    if !output.status.success() {
        let _ = writeln!(said, "(exit status {})", output.status);
    }
    said
}

/// The lock directory as systemd-tmpfiles left it: a directory, owned by
/// root and the module's group, mode 2775. `None` when it is right.
pub fn lock_dir_problem(root: &Path, scenario: &Scenario) -> Option<String> {
    let path = root.join(scenario.lock_dir.trim_start_matches('/'));
    let metadata = match fs::symlink_metadata(&path) {
        Ok(metadata) => metadata,
        Err(e) => return Some(format!("{}: {e}", path.display())),
    };
    let gid = scenario.group.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(&scenario.lock_group))
            .then(|| fields.nth(1).and_then(|gid| gid.parse::<u32>().ok()))
            .flatten()
    });
    let found = (
        metadata.is_dir(),
        metadata.mode() & 0o7777,
        metadata.uid(),
        Some(metadata.gid()),
    );
    (found != (true, 0o2775, 0, gid)).then(|| {
        format!(
            "{}: directory {}, mode {:o}, uid {}, gid {} (want a directory, 2775, root, {} = {gid:?})",
            OsStr::new(&path).to_string_lossy(),
            found.0,
            found.1,
            found.2,
            metadata.gid(),
            scenario.lock_group
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dumped_command_line_reads_back_into_its_words() {
        assert_eq!(
            parse_command_line(r#"/bin/echo "a\nb" "q\"x" "b\\s" "\001" é %u "\$\$HOME" "" ";""#),
            [
                "/bin/echo",
                "a\nb",
                "q\"x",
                "b\\s",
                "\u{1}",
                "é",
                "%u",
                "$$HOME",
                "",
                ";"
            ]
        );
    }

    #[test]
    fn the_programs_of_exec_start_lines_are_unquoted() {
        assert_eq!(
            exec_programs(
                "A=1\nExecStart=\"/nix/store/x-a/bin/a b\" \"run\"\nExecStart=\nExecStart=-/bin/sh -c x\n"
            ),
            ["/nix/store/x-a/bin/a b", "/bin/sh"]
        );
    }
}
