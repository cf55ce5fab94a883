//! Network namespaces for the partition tests: two namespaces joined by a
//! veth pair, etcd on one side, a node on the other; "cutting the cable" is
//! setting the node's end down. Tests bind nothing but loopback and the
//! addresses inside namespaces they created, and every namespace is deleted
//! when its owner is dropped (which also destroys the veth pair). Root only.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::testenv::wait_until;

/// A named network namespace (`/run/netns/NAME`), deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

static CREATED: AtomicUsize = AtomicUsize::new(0);

#[track_caller]
fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        crate::testenv::describe(&output)
    );
}

impl Netns {
    /// A fresh namespace with its loopback up; the name is unique to this
    /// process and call, short enough for interface names derived from it.
    #[track_caller]
    pub fn create(role: &str) -> Self {
        let name = format!(
            "ecl{}{}{}",
            role,
            std::process::id() % 100_000,
            CREATED.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS…`, panicking on failure.
    #[track_caller]
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Makes `command` start inside this namespace (setns(2) in the child
    /// before exec), so its PID is the program's own, as with a direct spawn.
    pub fn enter_on_spawn(&self, command: &mut Command) {
        let handle = fs::File::open(format!("/run/netns/{}", self.name)).expect("open the netns");
        let fd = handle.as_raw_fd();
        // SAFETY: between fork and exec the closure calls only setns(2),
        // which is async-signal-safe, on a descriptor the parent keeps open
        // (`handle` lives in the closure, so until the command is dropped).
        unsafe {
            command.pre_exec(move || {
                let _keep = &handle;
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }

    /// Runs `work` on a thread of its own that has entered this namespace
    /// (setns(2) moves only the calling thread), and returns its result.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let handle = fs::File::open(format!("/run/netns/{}", self.name)).expect("open the netns");
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns(2) on an open namespace descriptor; it
                    // changes only this thread, which ends after `work`.
                    let entered = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
                    work()
                })
                .join()
                .expect("the thread in the namespace panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Two namespaces and a veth pair between them: `etcd_side` (address
/// [`Link::ETCD_IP`]) and `node_side` ([`Link::NODE_IP`]).
#[derive(Debug)]
pub struct Link {
    // Dropped in this order: the node side, then the etcd side; deleting a
    // namespace destroys its end of the pair and so the pair.
    pub node_side: Netns,
    pub etcd_side: Netns,
    node_end: String,
}

impl Link {
    pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
    pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 2);

    #[track_caller]
    pub fn create() -> Self {
        let etcd_side = Netns::create("e");
        let node_side = Netns::create("n");
        let etcd_end = format!("{}v", etcd_side.name());
        let node_end = format!("{}v", node_side.name());
        ip(&[
            "link",
            "add",
            &etcd_end,
            "netns",
            etcd_side.name(),
            "type",
            "veth",
            "peer",
            "name",
            &node_end,
            "netns",
            node_side.name(),
        ]);
        for (side, end, address) in [
            (&etcd_side, &etcd_end, Self::ETCD_IP),
            (&node_side, &node_end, Self::NODE_IP),
        ] {
            side.ip(&["addr", "add", &format!("{address}/30"), "dev", end]);
            side.ip(&["link", "set", end, "up"]);
        }
        Self {
            node_side,
            etcd_side,
            node_end,
        }
    }

    /// Cuts the cable: the node's end goes down, so nothing the node sends
    /// reaches etcd and nothing comes back.
    #[track_caller]
    pub fn cut(&self) {
        self.node_side
            .ip(&["link", "set", self.node_end.as_str(), "down"]);
    }
}

/// One etcd member inside a namespace, listening for clients on
/// `ADDRESS:2379` (its peer port on the namespace's own loopback): the
/// ports are free because the namespace is new. Killed when dropped.
#[derive(Debug)]
pub struct EtcdInside {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl EtcdInside {
    #[track_caller]
    pub fn start(netns: &Netns, address: Ipv4Addr) -> Self {
        crate::etcd_server::require_etcd();
        let dir = tempfile::Builder::new()
            .prefix("ec-launch-etcd-netns")
            .tempdir()
            .expect("create etcd temp dir");
        let url = format!("http://{address}:2379");
        let log = fs::File::create(dir.path().join("etcd.log")).expect("create etcd log");
        let mut command = Command::new(crate::etcd_server::ETCD);
        command
            .args(["--name", "inside", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-cluster", "inside=http://127.0.0.1:2380"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup etcd log"))
            .stderr(log);
        netns.enter_on_spawn(&mut command);
        let mut etcd = Self {
            child: command.spawn().expect("spawn etcd"),
            url,
            dir,
        };
        let socket = SocketAddr::from((address, 2379));
        let healthy = wait_until(Duration::from_secs(30), || {
            netns.run(|| health(socket)) || etcd.child.try_wait().ok().flatten().is_some()
        });
        assert!(
            healthy && etcd.child.try_wait().ok().flatten().is_none(),
            "etcd in {} never became healthy; its log:\n{}",
            netns.name(),
            fs::read_to_string(etcd.dir.path().join("etcd.log")).unwrap_or_default()
        );
        etcd
    }

    /// Its client URL (the `--etcd` form).
    #[must_use]
    pub fn endpoints(&self) -> String {
        self.url.clone()
    }
}

/// True if etcd at `socket` answers `GET /health` with health true.
fn health(socket: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&socket, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut answer = String::new();
    write!(stream, "GET /health HTTP/1.0\r\nHost: {socket}\r\n\r\n").is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.contains("\"health\":\"true\"")
}

impl Drop for EtcdInside {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fixture's own checks: a namespace pair that does not connect, or a
/// cut that does not cut, would make the partition test prove nothing.
mod checks {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;

    use super::{EtcdInside, Link, health};
    use crate::testenv::require_root;

    #[test]
    #[cfg_attr(
        ec_tests_without_root,
        ignore = "needs root: run the tests as root, as CI does"
    )]
    fn the_node_side_reaches_the_etcd_side_until_the_link_is_cut() {
        require_root!("create network namespaces and a veth pair");
        let link = Link::create();
        let listener = link
            .etcd_side
            .run(|| TcpListener::bind((Link::ETCD_IP, 0)).expect("bind in the etcd namespace"));
        let address = listener.local_addr().unwrap();
        let connect = |address: SocketAddr| {
            link.node_side.run(move || {
                TcpStream::connect_timeout(&address, Duration::from_millis(500)).map(|mut s| {
                    s.write_all(b"x").unwrap();
                })
            })
        };
        connect(address).expect("connect across the link");
        let (mut accepted, _) = listener.accept().unwrap();
        let mut byte = [0; 1];
        accepted.read_exact(&mut byte).unwrap();
        // Not reachable from the host: only the namespaces have these addresses.
        assert!(TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_err());
        link.cut();
        assert!(connect(address).is_err(), "connected across a cut link");
    }

    #[test]
    #[cfg_attr(
        ec_tests_without_root,
        ignore = "needs root: run the tests as root, as CI does"
    )]
    fn etcd_inside_the_etcd_side_answers_the_node_side_only_while_linked() {
        require_root!("create network namespaces and a veth pair");
        let link = Link::create();
        let etcd = EtcdInside::start(&link.etcd_side, Link::ETCD_IP);
        let socket = SocketAddr::from((Link::ETCD_IP, 2379));
        assert_eq!(etcd.endpoints(), format!("http://{socket}"));
        assert!(link.node_side.run(|| health(socket)));
        link.cut();
        assert!(!link.node_side.run(|| health(socket)));
        assert!(
            link.etcd_side.run(|| health(socket)),
            "the etcd side still reaches it"
        );
    }
}
