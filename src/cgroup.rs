//! Which systemd unit a process runs in, read from `/proc/<pid>/cgroup`.
//!
//! systemd names a unit's cgroup after the unit (`…/system.slice/foo.service`),
//! so the unit is the innermost path component with a unit suffix. Both the
//! unified hierarchy (`0::/path`) and the hybrid layout's `name=systemd` line
//! are understood; on a hybrid host the unified line may be `/`, so the
//! `name=systemd` line wins when it names a unit. It can be present and say
//! nothing (`name=systemd:/`) when a unified-mode systemd runs in a container
//! on a hybrid host, so the unified line is then used. See cgroups(7) and
//! systemd.unit(5).

use std::path::Path;

/// Unit suffixes systemd uses for cgroup-owning units.
const UNIT_SUFFIXES: &[&str] = &[".service", ".scope", ".slice", ".socket", ".mount", ".swap"];

/// The cgroup paths in the contents of a `/proc/<pid>/cgroup` file
/// (cgroups(7)): the v1 `name=systemd` hierarchy's, and the unified (v2)
/// hierarchy's, each when present.
#[must_use]
pub fn systemd_and_unified_paths(contents: &str) -> (Option<&str>, Option<&str>) {
    let mut systemd = None;
    let mut unified = None;
    for line in contents.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if controllers == "name=systemd" {
            systemd = Some(path);
        } else if id == "0" && controllers.is_empty() {
            unified = Some(path);
        }
    }
    (systemd, unified)
}

/// The unit named by the contents of a `/proc/<pid>/cgroup` file, if any
/// (`run` reads its own once, for the unit and the cgroup directory).
/// Slices are returned only when nothing more specific is there.
#[must_use]
pub fn unit_from_cgroup(contents: &str) -> Option<String> {
    let (systemd_path, unified_path) = systemd_and_unified_paths(contents);
    systemd_path
        .and_then(unit_from_path)
        .or_else(|| unified_path.and_then(unit_from_path))
}

/// The innermost unit named in a cgroup path.
fn unit_from_path(path: &str) -> Option<String> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let suffix_of = |c: &&str| UNIT_SUFFIXES.iter().copied().find(|s| c.ends_with(*s));
    components
        .iter()
        .rev()
        .find(|c| suffix_of(c).is_some_and(|s| s != ".slice"))
        .or_else(|| {
            components
                .iter()
                .rev()
                .find(|c| suffix_of(c) == Some(".slice"))
        })
        .map(|c| (*c).to_owned())
}

/// The unit of process `pid` under `proc_root` (normally `/proc`), or `None`
/// when it has none or the process is gone or hidden.
#[must_use]
pub fn unit_of_pid(proc_root: &Path, pid: u32) -> Option<String> {
    let contents =
        crate::proc_file::read_to_string(&proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    unit_from_cgroup(&contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_hierarchy_names_the_service() {
        let text = "0::/system.slice/every-channel-publisher-wgbh.service\n";
        assert_eq!(
            unit_from_cgroup(text).as_deref(),
            Some("every-channel-publisher-wgbh.service")
        );
    }

    #[test]
    fn hybrid_hierarchy_prefers_the_name_systemd_line() {
        let text =
            "12:pids:/system.slice/a.service\n1:name=systemd:/system.slice/a.service\n0::/\n";
        assert_eq!(unit_from_cgroup(text).as_deref(), Some("a.service"));
    }

    #[test]
    fn an_empty_name_systemd_line_yields_to_the_unified_line() {
        // A unified-mode systemd in a container on a hybrid host.
        let text = "9:name=systemd:/\n8:pids:/\n0::/system.slice/pub-a.service\n";
        assert_eq!(unit_from_cgroup(text).as_deref(), Some("pub-a.service"));
    }

    #[test]
    fn nested_cgroups_inside_a_unit_name_the_unit() {
        let text = "0::/system.slice/pub.service/helpers\n";
        assert_eq!(unit_from_cgroup(text).as_deref(), Some("pub.service"));
    }

    #[test]
    fn user_sessions_name_their_scope_and_bare_roots_name_nothing() {
        let text = "0::/user.slice/user-1000.slice/session-4.scope\n";
        assert_eq!(unit_from_cgroup(text).as_deref(), Some("session-4.scope"));
        assert_eq!(unit_from_cgroup("0::/\n"), None);
        assert_eq!(unit_from_cgroup(""), None);
    }
}
