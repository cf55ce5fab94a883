//! Holders that escaped the systemd service that launched them (ECP-0139).
//!
//! A held lock or slot is *escaped* when the run that took it is over and
//! nothing a service runs holds it any more: a helper moved to a scope or a
//! session, or left behind with the lock after its unit stopped. Every
//! later start of the channel would find the source busy forever.
//!
//! The judgement reads the record only for *which* run to ask about (its
//! `unit` and `cgroup`, written by the launcher at launch); whether that
//! run still has processes, and where each holding process sits, are asked
//! of the cgroup tree and `/proc` now. A record naming no `.service` (a
//! launcher started by hand runs in a session scope, `run-….scope` or no
//! unit) never makes a holder escaped, and neither does a holder inside any
//! `.service` cgroup: those are an operator's or a running service's.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::cgroup;
use crate::lock_record::LockRecord;
use crate::process::ProcessInfo;

/// The deepest a cgroup tree is searched for processes (v1 only: v2 says
/// `populated` itself).
const MAX_DEPTH: usize = 16;

/// This process's cgroup directory, as a path in the cgroup filesystem:
/// the `name=systemd` hierarchy's when it names a place below the root (a
/// hybrid host), else the unified hierarchy's.
#[must_use]
pub fn own_cgroup_dir() -> Option<PathBuf> {
    let cgroups = crate::proc_file::read_to_string(Path::new("/proc/self/cgroup")).ok()?;
    own_cgroup_dir_from(&cgroups)
}

/// [`own_cgroup_dir`] from the text of `/proc/self/cgroup`, read already.
#[must_use]
pub fn own_cgroup_dir_from(cgroups: &str) -> Option<PathBuf> {
    let mounts = crate::proc_file::read_to_string(Path::new("/proc/self/mountinfo")).ok()?;
    cgroup_dir(cgroups, &mounts)
}

/// [`own_cgroup_dir`] on the text of `/proc/<pid>/cgroup` and
/// `/proc/<pid>/mountinfo` (proc(5)).
#[must_use]
pub fn cgroup_dir(cgroups: &str, mounts: &str) -> Option<PathBuf> {
    let (systemd, unified) = cgroup::systemd_and_unified_paths(cgroups);
    let mount_of = |want_v2: bool| {
        mounts.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (root, point) = (*left.get(3)?, *left.get(4)?);
            let (fstype, options) = (*right.first()?, right.get(2).copied().unwrap_or(""));
            let matches = if want_v2 {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup" && options.split(',').any(|o| o == "name=systemd")
            };
            matches.then(|| (root.to_owned(), unescape_mount(point)))
        })
    };
    let join = |(root, point): (String, String), path: &str| {
        let relative = path
            .strip_prefix(root.trim_end_matches('/'))
            .unwrap_or(path)
            .trim_start_matches('/');
        let dir = Path::new(&point).join(relative);
        Some(dir)
    };
    if let Some(path) = systemd.filter(|p| *p != "/")
        && let Some(mount) = mount_of(false)
    {
        return join(mount, path);
    }
    join(mount_of(true)?, unified?)
}

/// Mount points in mountinfo escape space, tab, newline and backslash as
/// octal (`\040`).
fn unescape_mount(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && text.is_char_boundary(i + 4)
            && let Ok(value) = u8::from_str_radix(&text[i + 1..i + 4], 8)
        {
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True when a process is in the cgroup at `dir` or below it: v2 says so
/// in `cgroup.events`; on v1 `cgroup.procs` is read down the tree. A
/// directory that is gone has none.
#[must_use]
pub fn populated(dir: &Path) -> bool {
    if let Ok(events) = fs::read_to_string(dir.join("cgroup.events")) {
        return events.lines().any(|l| l.trim() == "populated 1");
    }
    has_processes(dir, 0)
}

fn has_processes(dir: &Path, depth: usize) -> bool {
    if fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty()) {
        return true;
    }
    depth < MAX_DEPTH
        && fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_type().is_ok_and(|t| t.is_dir()) && has_processes(&e.path(), depth + 1))
}

/// What a judge of escape needs to know about itself. Each is read when a
/// judgement first needs it: only a record of a service's run asks, so a
/// launcher that finds a source held by a process started by hand reads
/// neither the mount table nor its namespace for it (ECP-0128).
#[derive(Debug, Clone, Default)]
pub struct Judge {
    /// The asking process's cgroup directory: a launcher restarted in the
    /// recorded unit is that unit's new run, so the recorded run is over.
    pub own_cgroup: OnceLock<Option<PathBuf>>,
    /// The asking process's PID namespace: a record from another one was
    /// written where cgroup paths and PIDs may mean something else.
    pub pid_namespace: OnceLock<Option<u64>>,
    pub proc_root: PathBuf,
}

/// The judge for this process, made once (`status` asks per lock).
#[must_use]
pub fn judge() -> &'static Judge {
    static JUDGE: OnceLock<Judge> = OnceLock::new();
    JUDGE.get_or_init(Judge::for_this_process)
}

impl Judge {
    /// The judge for this process (`status` and `run`).
    #[must_use]
    pub fn for_this_process() -> Self {
        Self {
            own_cgroup: OnceLock::new(),
            pid_namespace: OnceLock::new(),
            proc_root: PathBuf::from("/proc"),
        }
    }

    fn own_cgroup(&self) -> Option<&Path> {
        self.own_cgroup.get_or_init(own_cgroup_dir).as_deref()
    }

    fn pid_namespace(&self) -> Option<u64> {
        *self
            .pid_namespace
            .get_or_init(|| crate::process::pid_namespace_of(Path::new("/proc"), "self"))
    }

    /// Whether the holders of a lock or slot escaped the service its
    /// record names. `record_is_theirs`: the record's PID is the lock's
    /// taker or a holder (a record of an earlier holder says nothing of
    /// this one). `holders` are the processes the kernel shows holding
    /// it; `all_seen`: none was hidden from us.
    #[must_use]
    pub fn is_escaped(
        &self,
        record: Option<&LockRecord>,
        record_is_theirs: bool,
        holders: &[ProcessInfo],
        all_seen: bool,
    ) -> bool {
        let Some(record) = record.filter(|_| record_is_theirs) else {
            return false;
        };
        let (Some(unit), Some(recorded_dir)) = (&record.unit, &record.cgroup) else {
            return false;
        };
        if !unit.ends_with(".service") || holders.is_empty() || !all_seen {
            return false;
        }
        if record.pid_namespace.is_none() || record.pid_namespace != self.pid_namespace() {
            return false;
        }
        let recorded_dir = Path::new(recorded_dir);
        let run_over = self.own_cgroup() == Some(recorded_dir) || !populated(recorded_dir);
        run_over
            && holders.iter().all(|holder| {
                // A process gone meanwhile holds nothing; one whose cgroup
                // cannot be read is not known to be outside a service.
                fs::read_to_string(self.proc_root.join(holder.pid.to_string()).join("cgroup"))
                    .is_ok_and(|_| {
                        !cgroup::unit_of_pid(&self.proc_root, holder.pid)
                            .is_some_and(|u| u.ends_with(".service"))
                    })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/pids rw,nosuid shared:12 - cgroup cgroup rw,pids
";

    #[test]
    fn the_cgroup_directory_is_found_on_unified_and_hybrid_hosts() {
        let unified = "25 1 0:22 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup_dir("0::/system.slice/pub.service\n", unified),
            Some(PathBuf::from("/sys/fs/cgroup/system.slice/pub.service"))
        );
        assert_eq!(
            cgroup_dir(
                "1:name=systemd:/system.slice/a.service\n0::/\n",
                HYBRID_MOUNTS
            ),
            Some(PathBuf::from(
                "/sys/fs/cgroup/systemd/system.slice/a.service"
            ))
        );
        assert_eq!(
            cgroup_dir("1:name=systemd:/\n0::/t/fake.service\n", HYBRID_MOUNTS),
            Some(PathBuf::from("/sys/fs/cgroup/unified/t/fake.service"))
        );
        assert_eq!(cgroup_dir("0::/x\n", ""), None);
        let spaced = "25 1 0:22 / /a\\040b rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup_dir("0::/u\n", spaced), Some(PathBuf::from("/a b/u")));
    }

    #[test]
    fn a_cgroup_that_is_gone_has_no_processes_and_ours_has() {
        assert!(!populated(Path::new("/nonexistent/cgroup")));
        if let Some(own) = own_cgroup_dir() {
            assert!(populated(&own), "{own:?}");
        }
    }

    #[test]
    fn a_record_without_a_service_or_a_cgroup_never_makes_an_escaped_holder() {
        // A stand-in /proc: the holder sits in a session scope.
        let proc_root = tempfile::tempdir().unwrap();
        let holder_dir = proc_root.path().join("4242");
        fs::create_dir_all(&holder_dir).unwrap();
        fs::write(
            holder_dir.join("cgroup"),
            "0::/user.slice/session-4.scope\n",
        )
        .unwrap();
        let judge = Judge {
            own_cgroup: None.into(),
            pid_namespace: Some(7).into(),
            proc_root: proc_root.path().to_owned(),
        };
        let holder = ProcessInfo {
            pid: 4242,
            command: None,
            unit: None,
            since: None,
            start_ticks: None,
        };
        let mut record = LockRecord::for_this_launch("k", "s", "p", None);
        record.pid_namespace = Some(7);
        record.cgroup = Some("/nonexistent/x.service".into());
        let holders = std::slice::from_ref(&holder);
        let escaped = |r: &LockRecord| judge.is_escaped(Some(r), true, holders, true);
        assert!(!escaped(&record), "no unit");
        record.unit = Some("session-4.scope".into());
        assert!(!escaped(&record), "a scope is started by hand");
        record.unit = Some("gone.service".into());
        assert!(escaped(&record), "a service whose cgroup is gone");
        assert!(!judge.is_escaped(Some(&record), false, holders, true));
        assert!(!judge.is_escaped(Some(&record), true, holders, false));
        assert!(!judge.is_escaped(Some(&record), true, &[], true));
        // A holder inside a service is that service's.
        fs::write(
            holder_dir.join("cgroup"),
            "0::/system.slice/other.service\n",
        )
        .unwrap();
        assert!(!escaped(&record), "held inside a service");
        fs::write(
            holder_dir.join("cgroup"),
            "0::/user.slice/session-4.scope\n",
        )
        .unwrap();
        // Another PID namespace's record, and an older record.
        record.pid_namespace = Some(8);
        assert!(!escaped(&record), "another namespace");
        record.pid_namespace = Some(7);
        record.cgroup = None;
        assert!(!escaped(&record), "an older record");
        // The recorded unit restarted: its new run is the judge.
        record.cgroup = Some("/nonexistent/x.service".into());
        let restarted = Judge {
            own_cgroup: Some(PathBuf::from("/nonexistent/x.service")).into(),
            ..judge.clone()
        };
        assert!(restarted.is_escaped(Some(&record), true, holders, true));
    }
}
