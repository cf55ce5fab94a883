//! Real etcd for tests: one member or a cluster of members on loopback, each
//! with its data directory and log in a temp directory, torn down on drop.
//!
//! Cluster mode is tested against the etcd it will meet in production
//! (Debian's `etcd-server`, 3.4), never a stand-in: the JSON gateway's quirks
//! (a lost lease's keepalive without `TTL`, a failed txn without
//! `succeeded`) are what the client must get right. A test that needs etcd
//! and finds no `/usr/bin/etcd` fails with "install etcd-server": CI installs
//! it, so a missing etcd is a broken environment, never a skip.
//!
//! Every member listens on ports the kernel handed out (bound to port 0,
//! then released just before etcd starts), so tests run in parallel. Each
//! member also has a plain-HTTP metrics listener: the harness asks it for
//! `/health` and `etcd_server_is_leader` without speaking TLS, whatever the
//! client URLs use. A member's log is kept in its temp directory and printed
//! when the test panics while the member is alive (on drop).
//!
//! Faults a test can inject: `stop_member` (SIGKILL and reap), `freeze` and
//! `thaw` (SIGSTOP/SIGCONT: a paused server keeps its sockets, so clients see
//! silence, not a refused connection) and `start_member` (restart a stopped
//! member on its data directory); for a single server also `restart_empty`
//! (a new data directory at the same URLs), `restart_as_another_cluster`
//! and `restore` from a `snapshot_save` (the store goes back in history).
//! TLS (`EtcdServer::start_tls`): a CA, a
//! server certificate for 127.0.0.1/localhost and a client certificate are
//! generated in-test with `rcgen`, with a second, unrelated CA and client
//! certificate for the wrong-CA tests; client-certificate authentication is
//! on. `enable_auth` adds root and a user whose role may read and write
//! [`AUTH_PREFIX`], then turns authentication on.
//!
//! Only the standard library, `nix`, `tempfile` and `rcgen`, so the
//! integration tests, the cluster crate's unit tests and the systemd suite
//! can all use it (this crate, ECP-0138).

#![allow(dead_code)] // each includer uses a part

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// etcd, looked up on `PATH` (Debian's `etcd-server` puts it in
/// `/usr/bin`; the Nix build's check phase puts nixpkgs' on `PATH`).
pub const ETCD: &str = "etcd";
/// etcdctl, likewise (Debian's `etcd-client`).
pub const ETCDCTL: &str = "etcdctl";

/// The key prefix the user made by `enable_auth` may read and write (and
/// watch): every key cluster mode writes is under it.
pub const AUTH_PREFIX: &str = "/every-channel/";

/// The password `enable_auth` gives root.
pub const ROOT_PASSWORD: &str = "root-pw-for-tests-only";

/// How long a member may take to report itself healthy.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// Panics with the install hint unless etcd is installed.
#[track_caller]
pub fn require_etcd() {
    for binary in [ETCD, ETCDCTL] {
        let on_path = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(binary).is_file()));
        assert!(
            on_path,
            "{binary} not found on PATH: install etcd-server and etcd-client (apt-get install etcd-server etcd-client); CI installs them"
        );
    }
}

/// The certificates and keys of a TLS setup, as PEM files in the temp dir.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signed the server's and the client's certificates.
    pub ca: PathBuf,
    /// The client certificate (CN `ec-launch-client`) and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// An unrelated CA, and a client certificate it signed: the server trusts
    /// neither, and neither trusts the server.
    pub other_ca: PathBuf,
    pub other_cert: PathBuf,
    pub other_key: PathBuf,
    /// The server's certificate and key (also its peer identity).
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// One etcd process and how to reach it.
#[derive(Debug)]
struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    metrics_url: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    frozen: bool,
}

/// A cluster of `n` members (one for [`EtcdServer`]), sharing a temp dir.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    token: String,
    tls: Option<TlsFiles>,
    extra_args: Vec<String>,
    /// After `enable_auth`, etcdctl must log in as root.
    auth: bool,
}

/// A single-member etcd: the common case.
#[derive(Debug)]
pub struct EtcdServer {
    cluster: EtcdCluster,
}

impl EtcdServer {
    /// One member over plain HTTP, healthy when this returns.
    #[track_caller]
    #[must_use]
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// One member with extra etcd flags (e.g. `--auth-token-ttl=1`).
    #[track_caller]
    #[must_use]
    pub fn start_with_args(args: &[&str]) -> Self {
        Self {
            cluster: EtcdCluster::launch(1, false, args),
        }
    }

    /// One member over HTTPS with client-certificate authentication on.
    #[track_caller]
    #[must_use]
    pub fn start_tls() -> Self {
        Self {
            cluster: EtcdCluster::launch(1, true, &[]),
        }
    }

    /// The client URL, `http://127.0.0.1:PORT` (`https` with TLS).
    #[must_use]
    pub fn url(&self) -> String {
        self.cluster.members[0].client_url.clone()
    }

    /// The same as [`Self::url`]: one endpoint.
    #[must_use]
    pub fn endpoints(&self) -> String {
        self.url()
    }

    /// The TLS files, when started with [`Self::start_tls`].
    #[must_use]
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.cluster.tls()
    }

    /// Adds root and `user` (with a role that may read and write
    /// [`AUTH_PREFIX`]) and turns authentication on.
    #[track_caller]
    pub fn enable_auth(&mut self, user: &str, password: &str) {
        self.cluster.enable_auth(user, password);
    }

    /// SIGSTOP: the server keeps its sockets and answers nothing.
    pub fn freeze(&mut self) {
        self.cluster.freeze(0);
    }

    /// SIGCONT after [`Self::freeze`].
    pub fn thaw(&mut self) {
        self.cluster.thaw(0);
    }

    /// Runs `etcdctl` against this server (as root once auth is on).
    #[track_caller]
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.cluster.etcdctl(args)
    }

    /// Stops the server and starts it again on the same URLs with an empty
    /// data directory, as after a lost disk: the same cluster ID (etcd
    /// derives it from the members and the token), history from revision 1.
    #[track_caller]
    pub fn restart_empty(&mut self) {
        self.cluster.restart_empty(0);
    }

    /// Like [`Self::restart_empty`], with another cluster token: a new
    /// cluster ID at the same URLs.
    #[track_caller]
    pub fn restart_as_another_cluster(&mut self) {
        self.cluster.token.push_str("-another");
        self.cluster.restart_empty(0);
    }

    /// `etcdctl snapshot save` to `path`.
    #[track_caller]
    pub fn snapshot_save(&self, path: &Path) {
        let path = path.to_str().expect("UTF-8 path");
        let saved = self.etcdctl(&["snapshot", "save", path]);
        assert!(
            saved.status.success(),
            "etcdctl snapshot save: {}",
            String::from_utf8_lossy(&saved.stderr)
        );
    }

    /// Stops the server, restores `snapshot` into a new data directory
    /// (`etcdctl snapshot restore`, as an operator restores a backup) with
    /// the same name, peer URL and token, so the same cluster ID, and
    /// starts it there: its revision goes back to the snapshot's.
    #[track_caller]
    pub fn restore(&mut self, snapshot: &Path) {
        self.cluster.restore(0, snapshot);
    }

    /// A path in the server's temp directory (e.g. for a user file).
    #[must_use]
    pub fn path(&self, name: &str) -> PathBuf {
        self.cluster.path(name)
    }

    /// The server's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        self.cluster.log(0)
    }
}

/// Distinguishes the clusters of one test process in `--initial-cluster-token`.
static CLUSTERS: AtomicU32 = AtomicU32::new(0);
/// Distinguishes the data directories of restarted members.
static DATA_DIRS: AtomicU32 = AtomicU32::new(0);

impl EtcdCluster {
    /// `n` members over plain HTTP, with a leader when this returns.
    #[track_caller]
    #[must_use]
    pub fn start(n: usize) -> Self {
        Self::launch(n, false, &[])
    }

    #[track_caller]
    fn launch(n: usize, tls: bool, extra_args: &[&str]) -> Self {
        require_etcd();
        let dir = tempfile::Builder::new()
            .prefix("ec-launch-etcd")
            .tempdir()
            .expect("create etcd temp dir");
        let tls = tls.then(|| generate_tls(dir.path()));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listeners: Vec<TcpListener> = (0..n * 3)
            .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port"))
            .collect();
        let port = |i: usize| listeners[i].local_addr().expect("local addr").port();
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("{scheme}://127.0.0.1:{}", port(3 * i)),
                peer_url: format!("http://127.0.0.1:{}", port(3 * i + 1)),
                metrics_url: format!("http://127.0.0.1:{}", port(3 * i + 2)),
                data_dir: dir.path().join(format!("m{i}.data")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
                frozen: false,
            })
            .collect();
        let token = format!(
            "ec-launch-test-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let mut cluster = Self {
            dir,
            members,
            token,
            tls,
            extra_args: extra_args.iter().map(|&a| a.to_owned()).collect(),
            auth: false,
        };
        // Release the ports as late as possible: etcd binds them next.
        drop(listeners);
        for i in 0..n {
            cluster.spawn(i, "new");
        }
        for i in 0..n {
            cluster.wait_healthy(i);
        }
        cluster
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let member = &self.members[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .expect("open etcd log");
        let mut command = Command::new(ETCD);
        command
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &member.client_url])
            .args(["--advertise-client-urls", &member.client_url])
            .args(["--listen-peer-urls", &member.peer_url])
            .args(["--initial-advertise-peer-urls", &member.peer_url])
            .args(["--listen-metrics-urls", &member.metrics_url])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            // Fast elections: tests of leader loss wait for them.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(&self.extra_args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup etcd log"))
            .stderr(log);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command.spawn().expect("spawn etcd");
        let member = &mut self.members[i];
        member.child = Some(child);
        member.frozen = false;
    }

    #[track_caller]
    fn wait_healthy(&mut self, i: usize) {
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            if let Some(body) = http_get(&self.members[i].metrics_url, "/health")
                && body.contains("\"health\":\"true\"")
            {
                return;
            }
            let exited = self.members[i]
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("poll etcd"));
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "etcd member {i} {} (exit {exited:?}); its log:\n{}",
                if exited.is_some() {
                    "exited while starting"
                } else {
                    "never became healthy"
                },
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The client URLs of all members, comma-separated (the `--etcd` form).
    #[must_use]
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of member `i`.
    #[must_use]
    pub fn url(&self, i: usize) -> String {
        self.members[i].client_url.clone()
    }

    /// The TLS files, when the cluster uses TLS.
    #[must_use]
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The index of the member that is leader now, waiting (up to the
    /// start patience) for an election to finish.
    #[track_caller]
    #[must_use]
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            for (i, member) in self.members.iter().enumerate() {
                if member.child.is_none() || member.frozen {
                    continue;
                }
                if let Some(metrics) = http_get(&member.metrics_url, "/metrics")
                    && metrics.lines().any(|l| l == "etcd_server_is_leader 1")
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no etcd member became leader");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.members[i].frozen = false;
    }

    /// Restarts stopped member `i` on its data directory; healthy on return.
    #[track_caller]
    pub fn start_member(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i, "existing");
        self.wait_healthy(i);
    }

    /// A fresh data directory for member `i` (the old one is kept).
    fn new_data_dir(&mut self, i: usize) -> PathBuf {
        let n = DATA_DIRS.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.path().join(format!("m{i}.data.{n}"));
        self.members[i].data_dir.clone_from(&dir);
        dir
    }

    /// See [`EtcdServer::restart_empty`].
    #[track_caller]
    fn restart_empty(&mut self, i: usize) {
        self.stop_member(i);
        self.new_data_dir(i);
        self.spawn(i, "new");
        self.wait_healthy(i);
    }

    /// See [`EtcdServer::restore`].
    #[track_caller]
    fn restore(&mut self, i: usize, snapshot: &Path) {
        self.stop_member(i);
        let dir = self.new_data_dir(i);
        let member = &self.members[i];
        let restored = Command::new(ETCDCTL)
            .env_clear()
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(snapshot)
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&dir)
            .args([
                "--initial-cluster",
                &format!("{}={}", member.name, member.peer_url),
            ])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-advertise-peer-urls", &member.peer_url])
            .output()
            .expect("run etcdctl snapshot restore");
        assert!(
            restored.status.success(),
            "etcdctl snapshot restore: {}",
            String::from_utf8_lossy(&restored.stderr)
        );
        self.spawn(i, "new");
        self.wait_healthy(i);
    }

    /// SIGSTOPs member `i`: it keeps its sockets and answers nothing.
    pub fn freeze(&mut self, i: usize) {
        self.signal(i, Signal::SIGSTOP);
        self.members[i].frozen = true;
    }

    /// SIGCONTs member `i` after [`Self::freeze`].
    pub fn thaw(&mut self, i: usize) {
        self.signal(i, Signal::SIGCONT);
        self.members[i].frozen = false;
    }

    fn signal(&self, i: usize, signal: Signal) {
        let child = self.members[i].child.as_ref().expect("member is running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
        kill(pid, signal).expect("signal etcd");
    }

    /// Adds root and `user` (role `ec-launch`: read and write on
    /// [`AUTH_PREFIX`]) and turns authentication on.
    #[track_caller]
    pub fn enable_auth(&mut self, user: &str, password: &str) {
        let root = format!("root:{ROOT_PASSWORD}");
        let user_arg = format!("{user}:{password}");
        let steps: [&[&str]; 6] = [
            &["user", "add", &root, "--interactive=false"],
            &["role", "add", "ec-launch"],
            &[
                "role",
                "grant-permission",
                "ec-launch",
                "--prefix=true",
                "readwrite",
                AUTH_PREFIX,
            ],
            &["user", "add", &user_arg, "--interactive=false"],
            &["user", "grant-role", user, "ec-launch"],
            &["auth", "enable"],
        ];
        for step in steps {
            let output = self.etcdctl(step);
            assert!(
                output.status.success(),
                "etcdctl {step:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        self.auth = true;
    }

    /// Runs `etcdctl` against all running members (with the client
    /// certificate under TLS, and as root once auth is on).
    #[track_caller]
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let endpoints = self
            .members
            .iter()
            .filter(|m| m.child.is_some() && !m.frozen)
            .map(|m| m.client_url.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let mut command = Command::new(ETCDCTL);
        command
            .env_clear()
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .arg("--dial-timeout=5s")
            .arg("--command-timeout=10s");
        if let Some(tls) = &self.tls {
            command
                .arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.cert)
                .arg("--key")
                .arg(&tls.key);
        }
        if self.auth {
            command.arg(format!("--user=root:{ROOT_PASSWORD}"));
        }
        command.args(args).output().expect("run etcdctl")
    }

    /// A path in the cluster's temp directory.
    #[must_use]
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Member `i`'s log so far.
    #[must_use]
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for i in 0..self.members.len() {
            if panicking && self.members[i].child.is_some() {
                let log = self.log(i);
                // The tail: a start-up log alone is a few hundred lines.
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                let mut text = String::new();
                for line in tail.iter().rev() {
                    let _ = writeln!(text, "  {line}");
                }
                eprintln!("--- etcd member {i} log (tail) ---\n{text}");
            }
            if let Some(child) = &mut self.members[i].child {
                // SIGKILL works on a stopped process too.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A plain-HTTP GET of `path` on `base` (`http://host:port`): the body of a
/// 200 answer, or `None` on any failure.
fn http_get(base: &str, path: &str) -> Option<String> {
    let addr: SocketAddr = base.strip_prefix("http://")?.parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_owned()))
}

/// A CA, a server certificate and a client certificate it signed, and an
/// unrelated CA with its own client certificate, written as PEM under `dir`.
fn generate_tls(dir: &Path) -> TlsFiles {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        fs::write(&path, pem).expect("write PEM");
        path
    };
    let ca = |cn: &str| {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA");
        (cert.pem(), Issuer::new(params, key))
    };
    let leaf = |issuer: &Issuer<'_, KeyPair>, cn: &str, server: bool| {
        let key = KeyPair::generate().expect("generate key");
        let names = if server {
            vec!["localhost".to_owned()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        if server {
            params
                .subject_alt_names
                .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        // etcd's server certificate is also its client identity to peers.
        params.extended_key_usages = if server {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        let cert = params.signed_by(&key, issuer).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    };
    let (ca_pem, ca_issuer) = ca("ec-launch test CA");
    let (other_ca_pem, other_issuer) = ca("unrelated test CA");
    let (server_pem, server_key) = leaf(&ca_issuer, "etcd test server", true);
    let (client_pem, client_key) = leaf(&ca_issuer, "ec-launch-client", false);
    let (other_pem, other_key) = leaf(&other_issuer, "ec-launch-client", false);
    TlsFiles {
        ca: write("ca.pem", &ca_pem),
        cert: write("client.pem", &client_pem),
        key: write("client-key.pem", &client_key),
        other_ca: write("other-ca.pem", &other_ca_pem),
        other_cert: write("other-client.pem", &other_pem),
        other_key: write("other-client-key.pem", &other_key),
        server_cert: write("server.pem", &server_pem),
        server_key: write("server-key.pem", &server_key),
    }
}
