//! The unit policy as the suite uses it: read from `nixos/unit-policy.json`,
//! the one file the NixOS module also reads, and rendered into `[Service]`
//! lines. Nothing here restates a policy value, so a change to the file
//! changes the units the suite boots; a key the renderer cannot express
//! fails the suite instead of being dropped.
//!
//! The file has two halves: `kill` (every unit the module touches, units
//! defined elsewhere included) and `restart` (the module's own units, which
//! `ec-launch run` starts). Every unit the suite boots runs through
//! `ec-launch run`, like a publisher, so it gets both.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

/// The repository's root, which the policy files are relative to: this
/// crate lives two levels below it (`crates/ec-test-support`).
fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The policy file, relative to the repository's root.
pub const POLICY_FILE: &str = "nixos/unit-policy.json";

/// Keys of the policy file that are not unit settings.
const NOT_SETTINGS: &[&str] = &["comment"];

/// The halves of the policy file; a publisher gets all of them.
const HALVES: &[&str] = &["kill", "restart"];

/// The unit policy, keys in alphabetical order (`serde_json`'s map order).
#[derive(Debug, Clone)]
pub struct UnitPolicy {
    settings: Vec<(String, Value)>,
}

/// How a unit's stop timeout is chosen: the policy default, or the value an
/// operator sets through the module's `stopTimeout` option. The suite uses the
/// option only to keep twenty stop cycles short; it says so by name.
#[derive(Debug, Clone, Copy)]
pub enum StopTimeout {
    PolicyDefault,
    ModuleOption(Duration),
}

impl UnitPolicy {
    pub fn path() -> PathBuf {
        repo_root().join(POLICY_FILE)
    }

    /// Reads and validates the policy file.
    pub fn load() -> Result<Self, String> {
        let path = Self::path();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read the unit policy {}: {e}", path.display()))?;
        Self::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        let object: Map<String, Value> =
            serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
        let mut settings = Vec::new();
        for (half, body) in object {
            if NOT_SETTINGS.contains(&half.as_str()) {
                continue;
            }
            if !HALVES.contains(&half.as_str()) {
                return Err(format!(
                    "unknown key {half:?}: the policy has the halves {HALVES:?} and a comment"
                ));
            }
            let Value::Object(body) = body else {
                return Err(format!("{half:?} is not an object of unit settings"));
            };
            for (key, value) in body {
                if settings.iter().any(|(known, _)| *known == key) {
                    return Err(format!("{key} is set in more than one half"));
                }
                // Rendering up front rejects values a unit file cannot carry.
                render_value(&key, &value)?;
                settings.push((key, value));
            }
        }
        if settings.is_empty() {
            return Err("the unit policy has no settings".into());
        }
        settings.sort_by(|(a, _), (b, _)| a.cmp(b));
        Ok(Self { settings })
    }

    /// The settings, rendered as systemd would read them.
    pub fn settings(&self) -> impl Iterator<Item = (&str, String)> {
        self.settings.iter().map(|(key, value)| {
            let text = render_value(key, value).expect("validated in from_json");
            (key.as_str(), text)
        })
    }

    /// The policy's default stop timeout, as written in the file.
    pub fn default_stop_timeout(&self) -> Result<Duration, String> {
        let text = self
            .settings()
            .find(|(key, _)| *key == "TimeoutStopSec")
            .map(|(_, value)| value)
            .ok_or("the unit policy sets no TimeoutStopSec")?;
        humantime::parse_duration(&text)
            .or_else(|_| text.parse::<u64>().map(Duration::from_secs))
            .map_err(|_| format!("TimeoutStopSec {text:?} is not a duration this suite can read"))
    }

    /// The `[Service]` lines of the policy, with the stop timeout chosen by `stop`.
    pub fn service_lines(&self, stop: StopTimeout) -> String {
        let mut lines = String::new();
        for (key, value) in self.settings() {
            let value = match (key, stop) {
                ("TimeoutStopSec", StopTimeout::ModuleOption(timeout)) => {
                    format!("{}ms", timeout.as_millis())
                }
                _ => value,
            };
            let _ = writeln!(lines, "{key}={value}");
        }
        lines
    }
}

/// The hardening file, relative to the crate root.
pub const HARDENING_FILE: &str = "nixos/unit-hardening.json";

/// Parts of the hardening file that are not unit settings.
const HARDENING_NOT_SETTINGS: &[&str] = &["comment", "why"];

/// Parts of the hardening file that hold unit settings (`defaults` the
/// module sets with `mkDefault`, `lists` at normal priority); a publisher
/// unit of the module gets all of them.
const HARDENING_PARTS: &[&str] = &["defaults", "lists"];

/// The sandbox the module gives every publisher, read from
/// `nixos/unit-hardening.json`, so the suite's units forbid what deployed
/// units forbid (a syscall, an address family, a path).
#[derive(Debug, Clone)]
pub struct Hardening {
    lines: String,
}

impl Hardening {
    pub fn load() -> Result<Self, String> {
        let path = repo_root().join(HARDENING_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        let object: Map<String, Value> =
            serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
        let mut lines = String::new();
        for (part, body) in object {
            if HARDENING_NOT_SETTINGS.contains(&part.as_str()) {
                continue;
            }
            if !HARDENING_PARTS.contains(&part.as_str()) {
                return Err(format!(
                    "unknown key {part:?}: the file has {HARDENING_PARTS:?}, a comment and why"
                ));
            }
            let Value::Object(body) = body else {
                return Err(format!("{part:?} is not an object of unit settings"));
            };
            for (key, value) in body {
                // A list is one directive per item, as NixOS renders it:
                // joined, `~@privileged` would be read as a syscall name.
                let items = match value {
                    Value::Array(items) => items,
                    scalar => vec![scalar],
                };
                for item in items {
                    let _ = writeln!(lines, "{key}={}", render_value(&key, &item)?);
                }
            }
        }
        if lines.is_empty() {
            return Err("the hardening file has no settings".into());
        }
        Ok(Self { lines })
    }

    /// The `[Service]` lines of a publisher on a network source with its
    /// locks in `lock_dir`: the file's settings plus what the module
    /// computes per unit (the lock directory writable, no devices).
    pub fn publisher_lines(&self, lock_dir: &str) -> String {
        format!(
            "{}ReadWritePaths={lock_dir}\nPrivateDevices=yes\n",
            self.lines
        )
    }
}

fn render_value(key: &str, value: &Value) -> Result<String, String> {
    let scalar = |v: &Value| match v {
        Value::Bool(true) => Ok("yes".to_owned()),
        Value::Bool(false) => Ok("no".to_owned()),
        Value::Number(n) => Ok(n.to_string()),
        Value::String(s) if !s.contains('\n') => Ok(s.clone()),
        other => Err(format!(
            "policy key {key}: {other} cannot be written as a unit setting"
        )),
    };
    match value {
        Value::Array(items) => Ok(items
            .iter()
            .map(scalar)
            .collect::<Result<Vec<_>, _>>()?
            .join(" ")),
        other => scalar(other),
    }
}

/// The `systemctl show` property systemd reports for a policy key, and the
/// value it reports for the policy's value, when the two are spelled
/// differently from the unit file. `None` for keys whose show output the suite
/// does not know; those are checked against `systemctl cat` only.
pub fn expected_show(key: &str, rendered: &str) -> Option<(&'static str, String)> {
    let duration = |text: &str| {
        humantime::parse_duration(text).map_or_else(
            |_| text.to_owned(),
            |d| humantime::format_duration(d).to_string(),
        )
    };
    match key {
        "KillMode" => Some(("KillMode", rendered.to_owned())),
        "SendSIGKILL" => Some(("SendSIGKILL", rendered.to_owned())),
        "Restart" => Some(("Restart", rendered.to_owned())),
        "TimeoutStopSec" => Some(("TimeoutStopUSec", duration(rendered))),
        "SuccessExitStatus" => Some(("SuccessExitStatus", rendered.to_owned())),
        "RestartPreventExitStatus" => Some(("RestartPreventExitStatus", rendered.to_owned())),
        _ => None,
    }
}

/// A unit file for the suite. `service` holds the `[Service]` body.
pub fn unit_file(description: &str, service: &str) -> String {
    unit_file_with(description, "", service)
}

/// A unit file with more `[Unit]` lines (`unit`, each ending in a newline),
/// e.g. the `Wants=`/`After=` of a unit that needs another one running.
pub fn unit_file_with(description: &str, unit: &str, service: &str) -> String {
    format!("[Unit]\nDescription={description}\n{unit}\n[Service]\n{service}")
}
