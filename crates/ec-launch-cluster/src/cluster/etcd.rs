//! The etcd client of cluster mode: etcd 3.4's JSON gateway (`/v3/…`) over
//! blocking HTTP (`ureq`, rustls), with only the calls a lease-held lock
//! needs (ECP-0134).
//!
//! Every call is bounded: the connect and the whole call each take at most
//! `call_timeout` (the fence's TTL/6), so a renewal cannot outlast its share
//! of the lease, and an answer is read up to a size limit. A watch stream is
//! read for a bounded window and then made again from the same revision, so
//! a half-open connection cannot block a waiting claimant forever.
//!
//! Endpoints fail over: a call starts at the endpoint that last answered,
//! and goes on to the next one only when the request was certainly not
//! applied (the connection was refused or never set up, the TLS handshake
//! failed). After a member answered "no leader", the next call starts at
//! the next endpoint. Once a request may have reached etcd,
//! its result is unknown and the error says so ([`EtcdError::is_ambiguous`]):
//! a txn that timed out may have created the key, and the caller must count
//! it as "maybe acquired" (revoke the lease, start over), never retry it
//! blindly. The next call then starts at the next endpoint.
//!
//! The gateway's quirks are part of the contract: int64s are strings, keys
//! and values base64, a zero field is omitted: a keepalive of a lease that
//! is gone answers without `TTL`, a txn whose compare failed has no
//! `succeeded`.
//!
//! Credentials: the password from `--etcd-user-file` is sent only in the
//! body of `/v3/auth/authenticate`; the token it buys goes in the
//! `Authorization` header and is renewed once when etcd calls it invalid
//! (simple tokens expire). Neither is ever in an error, a log line or a
//! `Debug` output ([`Secret`]). TLS trusts only the `--etcd-ca` file, never a
//! bundled web PKI, and presents the client certificate when one is given.

use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::printable::printable_path;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

/// The most an answer may hold; a list of every key of a big cluster fits.
const ANSWER_LIMIT: u64 = 8 << 20;
/// The most one message of a watch stream may hold.
const WATCH_LINE_LIMIT: u64 = 1 << 20;
/// The most a `--etcd-user-file` may hold (one `user:password` line).
const USER_FILE_LIMIT: u64 = 4096;
/// The most a PEM file may hold.
const PEM_LIMIT: u64 = 1 << 20;
/// The read-only calls `connect` makes first; see [`classify`].
const FIRST_CONTACT: [&str; 2] = [AUTHENTICATE, "/v3/maintenance/status"];
const AUTHENTICATE: &str = "/v3/auth/authenticate";
/// gRPC's codes the gateway passes on (grpc/codes).
const CODE_NOT_FOUND: i64 = 5;
const CODE_PERMISSION_DENIED: i64 = 7;
const CODE_UNAVAILABLE: i64 = 14;
const CODE_UNAUTHENTICATED: i64 = 16;

/// How to reach etcd: the validated form of the `--etcd*` flags.
#[derive(Debug, Clone)]
pub struct EtcdConnect {
    pub endpoints: Vec<url::Url>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub user_file: Option<PathBuf>,
    pub call_timeout: Duration,
}

/// A client of one etcd cluster; clones share the connection pool, the
/// endpoint last known good and the auth token.
#[derive(Clone, Debug)]
pub struct EtcdClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    agent: ureq::Agent,
    endpoints: Vec<url::Url>,
    /// The endpoint the next call starts at: the last that answered.
    current: AtomicUsize,
    call_timeout: Duration,
    /// How long one watch stream is read before it is made again.
    watch_window: Duration,
    credentials: Option<Credentials>,
    token: Mutex<Option<Secret>>,
    /// The cluster ID of the first answer with a header; 0 until then.
    /// Every later answer must come from the same cluster (ECP-0135).
    cluster: AtomicU64,
}

#[derive(Debug)]
struct Credentials {
    user: String,
    password: Secret,
}

/// A password or token: shown as `<redacted>`, so a `{:?}` of anything that
/// holds one cannot leak it.
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A lease etcd granted: its ID and the TTL the server chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: Duration,
}

/// A key as etcd stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

impl KeyValue {
    /// A key as a create txn at `revision` left it: made and last changed
    /// there, under `lease`.
    #[must_use]
    pub fn created(key: Vec<u8>, value: Vec<u8>, revision: i64, lease: i64) -> Self {
        Self {
            key,
            value,
            create_revision: revision,
            mod_revision: revision,
            lease,
        }
    }
}

/// What a create txn did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The key did not exist and is ours now, at `revision`.
    Ours { revision: i64 },
    /// The key exists: `holder` as the txn saw it at `revision`.
    Held { holder: KeyValue, revision: i64 },
}

/// What a response's header says about the store that answered
/// (ECP-0135): which cluster, and how far its history has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// 0 when the answer had none.
    pub cluster_id: u64,
    /// The store's revision when the member answered; 0 when absent.
    pub revision: i64,
}

/// What a keepalive answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    /// The TTL the server set; `None` when the lease is gone.
    pub ttl: Option<Duration>,
    /// The answering member's revision: below the revision of a key we
    /// took, the store may have gone back (ECP-0135).
    pub revision: i64,
}

/// One change of a watched key, with the value it had before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// DELETE (a revoke, an expiry, a hand delete); otherwise a PUT.
    pub deleted: bool,
    /// The key after the change (for a DELETE: the key and its
    /// `mod_revision`, the revision of the delete).
    pub kv: KeyValue,
    /// The key before the change (`prev_kv`), when etcd still had it.
    pub prev: Option<KeyValue>,
}

/// One message of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchMessage {
    pub header: Header,
    /// History up to here was compacted away: events may be missing.
    pub compact_revision: i64,
    pub events: Vec<Event>,
}

/// What to watch: a key or a prefix, from a revision, with or without
/// PUT events. The previous value comes with every event.
#[derive(Debug, Clone, Copy)]
pub struct WatchSpec<'a> {
    pub key: &'a [u8],
    pub prefix: bool,
    pub start_revision: i64,
    pub puts: bool,
}

/// How [`EtcdClient::wait_for_delete`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchOutcome {
    /// Deletes happened: the DELETE events of one message, each with the
    /// value its key had (which says whether it was released cleanly).
    Deleted(Vec<Event>),
    /// Nothing can be told from the watch: history was compacted away, or
    /// the store answered with a revision below the one we had seen (it
    /// was restored or restarted empty). Look again.
    LookAgain,
    /// `until` passed first.
    TimedOut,
}

/// Why an etcd call failed. Display names the operation and the endpoint,
/// never a password, a token or a key's bytes.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A flag's value cannot be used (exit 64).
    #[error("{what}: {reason}")]
    BadConfig { what: &'static str, reason: String },
    /// A `--etcd-ca/cert/key/user-file` cannot be read (exit 66).
    #[error("cannot read {what} {path:?}")]
    FileUnreadable {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// No endpoint could be reached; nothing was applied (exit 69).
    #[error("cannot reach etcd at {endpoints} ({operation}): {reason}")]
    Unreachable {
        operation: &'static str,
        endpoints: String,
        reason: String,
    },
    /// The TLS handshake failed, e.g. the server's certificate is not
    /// signed by `--etcd-ca` (exit 69).
    #[error("TLS with etcd at {endpoint} failed ({operation}): {reason}")]
    Tls {
        operation: &'static str,
        endpoint: String,
        reason: String,
    },
    /// etcd refused our credentials: the password, the user, or the client
    /// certificate (exit 77).
    #[error("etcd at {endpoint} refused our credentials ({operation}): {reason}")]
    AuthRejected {
        operation: &'static str,
        endpoint: String,
        reason: String,
    },
    /// The request may have reached etcd and no answer came: its outcome is
    /// unknown (exit 69).
    #[error("etcd at {endpoint} did not answer {operation} after it was sent: {reason}")]
    Ambiguous {
        operation: &'static str,
        endpoint: String,
        reason: String,
    },
    /// etcd answered with an error (exit 69).
    #[error("etcd at {endpoint} refused {operation}: {message} (gRPC code {code})")]
    Rejected {
        operation: &'static str,
        endpoint: String,
        code: i64,
        message: String,
    },
    /// The answer came from another etcd cluster than the one this client
    /// first talked to: etcd was restored from a backup as a new cluster,
    /// or an endpoint now names another cluster. Whatever was held in the
    /// first is not held in this one (exit 69).
    #[error(
        "etcd at {endpoint} answered {operation} as cluster {seen:x}, not as cluster {expected:x} where this launcher started"
    )]
    OtherCluster {
        operation: &'static str,
        endpoint: String,
        expected: u64,
        seen: u64,
    },
    /// The answer cannot be understood; whatever was asked may have been
    /// done (exit 69).
    #[error("etcd at {endpoint} gave an answer to {operation} that cannot be understood: {reason}")]
    Malformed {
        operation: &'static str,
        endpoint: String,
        reason: String,
    },
}

impl EtcdError {
    /// True when the request may have been applied: the caller must treat
    /// a create as "maybe acquired" (revoke its lease and start over).
    #[must_use]
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, Self::Ambiguous { .. } | Self::Malformed { .. })
    }

    /// True when etcd says our lease is gone (it expired while we waited,
    /// or was revoked): nothing is held under it any more.
    #[must_use]
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, Self::Rejected { code, message, .. }
            if *code == CODE_NOT_FOUND && message.contains("lease not found"))
    }

    /// True when the store that answered is not the one we started with
    /// (another cluster ID): nothing we held there is held here.
    #[must_use]
    pub fn is_store_changed(&self) -> bool {
        matches!(self, Self::OtherCluster { .. })
    }
}

/// Reads one `--etcd` value as a URL; what it may be is checked by
/// [`EtcdClient::connect`]. The text is never echoed: it may carry a
/// password someone put in the URL.
///
/// # Errors
/// [`EtcdError::BadConfig`] when it is not a URL.
pub fn parse_endpoint(text: &str) -> Result<url::Url, EtcdError> {
    if text.is_empty() {
        return Err(EtcdError::BadConfig {
            what: "--etcd",
            reason: "an endpoint is empty (an empty EC_LAUNCH_ETCD, or a stray comma)".into(),
        });
    }
    url::Url::parse(text.trim_end_matches('/')).map_err(|e| EtcdError::BadConfig {
        what: "--etcd",
        reason: format!(
            "an endpoint is not a URL ({e}); give each as http://host:port or https://host:port, separated by commas"
        ),
    })
}

impl EtcdClient {
    /// Validates the endpoints, reads the CA, certificate, key and user
    /// files, and (with a user file) authenticates.
    ///
    /// # Errors
    /// [`EtcdError::BadConfig`] for an endpoint with userinfo, a path or a
    /// scheme other than http/https, an https endpoint without a CA, half a
    /// client certificate, or a malformed file; [`EtcdError::FileUnreadable`];
    /// and any error of `/v3/auth/authenticate`.
    pub fn connect(cfg: &EtcdConnect) -> Result<Self, EtcdError> {
        ensure_endpoints(&cfg.endpoints)?;
        let needs_tls = cfg.endpoints.iter().any(|u| u.scheme() == "https");
        let mut tls = TlsConfig::builder();
        match &cfg.ca_file {
            Some(path) => {
                let certs = read_certificates(path, "--etcd-ca")?;
                tls = tls.root_certs(RootCerts::new_with_certs(&certs));
            }
            None if needs_tls => {
                return Err(EtcdError::BadConfig {
                    what: "--etcd",
                    reason: "an https endpoint needs --etcd-ca, the CA that signed etcd's certificate (no public CA is trusted for the lock service)".into(),
                });
            }
            // Plain http: no handshake will ask for roots.
            None => tls = tls.root_certs(RootCerts::Specific(Arc::new(Vec::new()))),
        }
        match (&cfg.cert_file, &cfg.key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certificates(cert, "--etcd-cert")?;
                let key = read_private_key(key)?;
                tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
            }
            (None, None) => {}
            _ => {
                return Err(EtcdError::BadConfig {
                    what: "--etcd-cert/--etcd-key",
                    reason: "one was given without the other".into(),
                });
            }
        }
        let credentials = cfg.user_file.as_deref().map(read_user_file).transpose()?;
        // One process-wide provider: ring, the only one compiled in. A
        // second install (another client) is refused harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .https_only(false)
            .tls_config(tls.build())
            .timeout_connect(Some(cfg.call_timeout))
            .timeout_global(Some(cfg.call_timeout))
            .max_redirects(0)
            .user_agent(concat!("ec-launch/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let client = Self {
            inner: Arc::new(Inner {
                agent,
                endpoints: cfg.endpoints.clone(),
                current: AtomicUsize::new(0),
                call_timeout: cfg.call_timeout,
                watch_window: (cfg.call_timeout * 6).max(Duration::from_secs(1)),
                credentials,
                token: Mutex::new(None),
                cluster: AtomicU64::new(0),
            }),
        };
        // Credentials are checked at start, where a refusal is an operator's
        // error (77), not a fault in the middle of a run: the password by
        // authenticating, a client certificate by a read-only probe.
        if client.inner.credentials.is_some() {
            client.authenticate()?;
        } else if needs_tls {
            client.call("status probe", "/v3/maintenance/status", &json!({}))?;
        }
        Ok(client)
    }

    /// Grants a lease of `ttl` (whole seconds, at least 1).
    ///
    /// # Errors
    /// Any [`EtcdError`]; an ambiguous one may have granted a lease that
    /// then expires unused.
    pub fn grant(&self, ttl: Duration) -> Result<Lease, EtcdError> {
        const OP: &str = "lease grant";
        let seconds = ttl.as_secs().max(1);
        let (answer, endpoint) = self.call(
            OP,
            "/v3/lease/grant",
            &json!({ "TTL": seconds.to_string() }),
        )?;
        let id = int_field(&answer, "ID");
        if id == 0 {
            return Err(malformed(OP, &endpoint, "no lease ID"));
        }
        Ok(Lease {
            id,
            ttl: seconds_field(&answer, "TTL"),
        })
    }

    /// Renews lease `id` once: the TTL as the server set it, `None` when
    /// the lease is gone (expired or revoked: no `TTL` in the answer), and
    /// the answering member's revision.
    ///
    /// # Errors
    /// Any [`EtcdError`]: the renewal may or may not have happened.
    pub fn keep_alive(&self, id: i64) -> Result<KeepAlive, EtcdError> {
        self.keep_alive_via(id, None)
    }

    /// [`EtcdClient::keep_alive`] sent to every endpoint at once; the first
    /// answer counts. For a retry after a failed renewal: when a frozen
    /// leader hangs the member we asked (and the next in line is that
    /// leader), trying one endpoint per call timeout can use up the fence
    /// budget before a live member is reached. A keepalive is idempotent,
    /// so sending it several times costs nothing but requests.
    ///
    /// # Errors
    /// The last endpoint's error when none answered.
    pub fn keep_alive_anywhere(&self, id: i64) -> Result<KeepAlive, EtcdError> {
        let count = self.inner.endpoints.len();
        if count == 1 {
            return self.keep_alive(id);
        }
        let (answers, answered) = std::sync::mpsc::channel();
        for index in 0..count {
            let client = self.clone();
            let answers = answers.clone();
            // Each is bounded by the call timeout; a straggler finishes on
            // its own after the first answer is taken.
            let spawned = std::thread::Builder::new()
                .name("ec-keepalive".into())
                .spawn(move || {
                    let _ = answers.send(client.keep_alive_via(id, Some(index)));
                });
            if spawned.is_err() {
                return self.keep_alive(id);
            }
        }
        drop(answers);
        let mut last = None;
        for answer in answered {
            match answer {
                Ok(ttl) => return Ok(ttl),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::Unreachable {
            operation: "lease keepalive",
            endpoints: self.all_endpoints(),
            reason: "no endpoint answered".into(),
        }))
    }

    fn keep_alive_via(&self, id: i64, only: Option<usize>) -> Result<KeepAlive, EtcdError> {
        const OP: &str = "lease keepalive";
        let (answer, endpoint) = self.call_via(
            OP,
            "/v3/lease/keepalive",
            &json!({ "ID": id.to_string() }),
            only,
        )?;
        let Some(result) = answer.get("result") else {
            return Err(malformed(OP, &endpoint, "no result"));
        };
        Ok(KeepAlive {
            ttl: positive_ttl(result),
            revision: header_revision(result),
        })
    }

    /// Revokes lease `id`, deleting its keys at once; a lease that is
    /// already gone is not an error.
    ///
    /// # Errors
    /// Any other [`EtcdError`].
    pub fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        match self.call(
            "lease revoke",
            "/v3/lease/revoke",
            &json!({ "ID": id.to_string() }),
        ) {
            Ok(_) => Ok(()),
            Err(EtcdError::Rejected { code, .. }) if code == CODE_NOT_FOUND => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Creates `key` with `value` under `lease` if it does not exist (one
    /// txn: `create_revision == 0`); otherwise says who holds it.
    ///
    /// # Errors
    /// Any [`EtcdError`]; an ambiguous one may have created the key.
    pub fn create(&self, key: &[u8], value: &[u8], lease: i64) -> Result<Created, EtcdError> {
        const OP: &str = "create txn";
        ensure_lease(OP, lease)?;
        let key64 = BASE64.encode(key);
        let request = json!({
            "compare": [{
                "key": key64, "target": "CREATE", "result": "EQUAL", "create_revision": "0"
            }],
            "success": [{ "request_put": {
                "key": key64, "value": BASE64.encode(value), "lease": lease.to_string()
            }}],
            "failure": [{ "request_range": { "key": key64 } }],
        });
        let (answer, endpoint) = self.call(OP, "/v3/kv/txn", &request)?;
        let revision = header_revision(&answer);
        if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
            return Ok(Created::Ours { revision });
        }
        // The compare failed: the range in the same txn saw the holder.
        let holder = answer
            .pointer("/responses/0/response_range/kvs/0")
            .map(key_value)
            .transpose()
            .map_err(|reason| malformed(OP, &endpoint, reason))?
            .ok_or_else(|| malformed(OP, &endpoint, "a failed create without the holder"))?;
        Ok(Created::Held { holder, revision })
    }

    /// [`EtcdClient::create`] in a node's turn (ECP-0140): creates `key`
    /// only if it does not exist **and** `turn`'s `mod_revision` is still
    /// `turn_revision` (0: the turn key does not exist; etcd compares a
    /// missing key as all zeros), and puts `turn` in the same txn, both
    /// under `lease`. `Ok(None)`: the key is free but the turn moved (another
    /// launcher of the node claimed since the look): look again.
    ///
    /// # Errors
    /// Any [`EtcdError`]; an ambiguous one may have created the key.
    pub fn create_in_turn(
        &self,
        key: &[u8],
        value: &[u8],
        lease: i64,
        (turn, turn_value, turn_revision): (&[u8], &[u8], i64),
    ) -> Result<Option<Created>, EtcdError> {
        const OP: &str = "create-in-turn txn";
        ensure_lease(OP, lease)?;
        let key64 = BASE64.encode(key);
        let turn64 = BASE64.encode(turn);
        let request = json!({
            "compare": [
                { "key": key64, "target": "CREATE", "result": "EQUAL", "create_revision": "0" },
                {
                    "key": turn64, "target": "MOD", "result": "EQUAL",
                    "mod_revision": turn_revision.to_string()
                }
            ],
            "success": [
                { "request_put": {
                    "key": key64, "value": BASE64.encode(value), "lease": lease.to_string()
                }},
                { "request_put": {
                    "key": turn64, "value": BASE64.encode(turn_value), "lease": lease.to_string()
                }}
            ],
            "failure": [{ "request_range": { "key": key64 } }],
        });
        let (answer, endpoint) = self.call(OP, "/v3/kv/txn", &request)?;
        let revision = header_revision(&answer);
        if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
            if revision == 0 {
                return Err(malformed(
                    OP,
                    &endpoint,
                    "a txn that succeeded without a revision",
                ));
            }
            return Ok(Some(Created::Ours { revision }));
        }
        let holder = answer
            .pointer("/responses/0/response_range/kvs/0")
            .map(key_value)
            .transpose()
            .map_err(|reason| malformed(OP, &endpoint, reason))?;
        Ok(holder.map(|holder| Created::Held { holder, revision }))
    }

    /// Rewrites `keys` (key, new value) in one txn, each under `lease`,
    /// only if every one of them is still under `lease`: `true` when done.
    /// A clean release marks its keys so (ECP-0135), guarded so that it can
    /// never write over a key that is no longer ours.
    ///
    /// # Errors
    /// Any [`EtcdError`]; an ambiguous one may have written them.
    pub fn put_if_leased(&self, keys: &[(&[u8], &[u8])], lease: i64) -> Result<bool, EtcdError> {
        ensure_lease("guarded put txn", lease)?;
        let compare: Vec<Value> = keys
            .iter()
            .map(|(key, _)| {
                json!({
                    "key": BASE64.encode(key), "target": "LEASE", "result": "EQUAL",
                    "lease": lease.to_string()
                })
            })
            .collect();
        let success: Vec<Value> = keys
            .iter()
            .map(|(key, value)| {
                json!({ "request_put": {
                    "key": BASE64.encode(key), "value": BASE64.encode(value),
                    "lease": lease.to_string()
                }})
            })
            .collect();
        let request = json!({ "compare": compare, "success": success });
        let (answer, _) = self.call("guarded put txn", "/v3/kv/txn", &request)?;
        Ok(answer.get("succeeded").and_then(Value::as_bool) == Some(true))
    }

    /// Forgets the cluster this client first talked to: the next answer
    /// names the one to hold to. For a claim that starts over after the
    /// store changed (ECP-0135): from then on the new store is the truth.
    pub fn forget_cluster(&self) {
        self.inner.cluster.store(0, Ordering::SeqCst);
    }

    /// How long one watch stream is read before it is made again.
    #[must_use]
    pub fn watch_window(&self) -> Duration {
        self.inner.watch_window
    }

    /// The bound of every call.
    #[must_use]
    pub fn call_timeout(&self) -> Duration {
        self.inner.call_timeout
    }

    /// The key, if it exists, and the store's revision. A linearizable
    /// read: the member answers only once it has applied everything the
    /// cluster committed before the read, so a revision below one we saw
    /// written means the store went back (ECP-0135).
    ///
    /// # Errors
    /// Any [`EtcdError`].
    pub fn get(&self, key: &[u8]) -> Result<(Option<KeyValue>, i64), EtcdError> {
        const OP: &str = "get";
        let (answer, endpoint) =
            self.call(OP, "/v3/kv/range", &json!({ "key": BASE64.encode(key) }))?;
        let kv = kvs(&answer)
            .map_err(|reason| malformed(OP, &endpoint, reason))?
            .into_iter()
            .next();
        Ok((kv, header_revision(&answer)))
    }

    /// Every key under `prefix`, in key order.
    ///
    /// # Errors
    /// Any [`EtcdError`].
    pub fn list(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, EtcdError> {
        const OP: &str = "list";
        let request = json!({
            "key": BASE64.encode(prefix), "range_end": BASE64.encode(prefix_end(prefix))
        });
        let (answer, endpoint) = self.call(OP, "/v3/kv/range", &request)?;
        kvs(&answer).map_err(|reason| malformed(OP, &endpoint, reason))
    }

    /// Every key under `prefix`, in key order, and the store's revision
    /// they were read at (one range: one consistent view).
    ///
    /// # Errors
    /// Any [`EtcdError`].
    pub fn list_at(&self, prefix: &[u8]) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        const OP: &str = "list";
        let request = json!({
            "key": BASE64.encode(prefix), "range_end": BASE64.encode(prefix_end(prefix))
        });
        let (answer, endpoint) = self.call(OP, "/v3/kv/range", &request)?;
        let kvs = kvs(&answer).map_err(|reason| malformed(OP, &endpoint, reason))?;
        Ok((kvs, header_revision(&answer)))
    }

    /// Puts `key` = `value` under `lease`, whatever was there.
    ///
    /// # Errors
    /// Any [`EtcdError`]; an ambiguous one may have put it.
    pub fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<(), EtcdError> {
        ensure_lease("put", lease)?;
        let request = json!({
            "key": BASE64.encode(key), "value": BASE64.encode(value), "lease": lease.to_string()
        });
        self.call("put", "/v3/kv/put", &request).map(drop)
    }

    /// Creates `key` with `value` under `lease` only if nothing under
    /// `prefix` was written after `revision` (every key there has a
    /// `mod_revision` at or below it: etcd 3.3+ compares a whole range) and
    /// `key` does not exist; deletes the keys `and_delete` in the same txn. A
    /// decision made on a look at `revision` is then made on the store as
    /// it is: a put after the look, even one deleted again, fails it.
    /// Deletes after the look do not, and need not: they only free what
    /// the look counted as taken. `Some(revision)`: created, at that
    /// revision (the txn's: the key's create and mod revision); `None`:
    /// something changed, look again.
    ///
    /// # Errors
    /// Any [`EtcdError`]; an ambiguous one may have created the key.
    pub fn create_if_unchanged(
        &self,
        prefix: &[u8],
        revision: i64,
        key: &[u8],
        value: &[u8],
        lease: i64,
        and_delete: &[&[u8]],
    ) -> Result<Option<i64>, EtcdError> {
        const OP: &str = "create-if-unchanged txn";
        ensure_lease(OP, lease)?;
        let key64 = BASE64.encode(key);
        let absent = json!({
            "key": key64, "target": "CREATE", "result": "EQUAL", "create_revision": "0"
        });
        let put = put_op(key, value, lease);
        let Some((answer, endpoint)) =
            self.txn_if_unchanged(OP, (prefix, revision), Some(absent), vec![put], and_delete)?
        else {
            return Ok(None);
        };
        // Every write of one txn has the txn's revision, which the header
        // carries; without it the key's history cannot be judged.
        match header_revision(&answer) {
            0 => Err(malformed(
                OP,
                &endpoint,
                "a txn that succeeded without a revision",
            )),
            revision => Ok(Some(revision)),
        }
    }

    /// Puts `puts` (key, value) under `lease` only if nothing under
    /// `prefix` was written after `revision` (as
    /// [`EtcdClient::create_if_unchanged`], whether or not the keys exist),
    /// and deletes `and_delete` in the same txn: a preemption request made
    /// on a look is made on the store as it is (ECP-0139). `true`: written.
    ///
    /// # Errors
    /// Any [`EtcdError`]; an ambiguous one may have written them.
    pub fn put_if_unchanged(
        &self,
        prefix: &[u8],
        revision: i64,
        puts: &[(&[u8], &[u8])],
        lease: i64,
        and_delete: &[&[u8]],
    ) -> Result<bool, EtcdError> {
        const OP: &str = "put-if-unchanged txn";
        ensure_lease(OP, lease)?;
        let puts = puts
            .iter()
            .map(|(key, value)| put_op(key, value, lease))
            .collect();
        Ok(self
            .txn_if_unchanged(OP, (prefix, revision), None, puts, and_delete)?
            .is_some())
    }

    /// One txn: `puts` and deletes of `and_delete`, if nothing under the
    /// prefix was written after the revision (and `also` holds); the
    /// answer when it succeeded.
    fn txn_if_unchanged(
        &self,
        operation: &'static str,
        (prefix, revision): (&[u8], i64),
        also: Option<Value>,
        puts: Vec<Value>,
        and_delete: &[&[u8]],
    ) -> Result<Option<(Value, String)>, EtcdError> {
        let mut success = puts;
        for other in and_delete {
            success.push(json!({ "request_delete_range": { "key": BASE64.encode(other) } }));
        }
        let mut compare = vec![json!({
            "key": BASE64.encode(prefix), "range_end": BASE64.encode(prefix_end(prefix)),
            "target": "MOD", "result": "LESS", "mod_revision": (revision + 1).to_string()
        })];
        compare.extend(also);
        let request = json!({ "compare": compare, "success": success });
        let (answer, endpoint) = self.call(operation, "/v3/kv/txn", &request)?;
        if answer.get("succeeded").and_then(Value::as_bool) != Some(true) {
            return Ok(None);
        }
        Ok(Some((answer, endpoint)))
    }

    /// The time lease `id` has left; `None` when it is gone.
    ///
    /// # Errors
    /// Any [`EtcdError`].
    pub fn time_to_live(&self, id: i64) -> Result<Option<Duration>, EtcdError> {
        let (answer, _) = self.call(
            "lease time-to-live",
            "/v3/lease/timetolive",
            &json!({ "ID": id.to_string() }),
        )?;
        Ok(positive_ttl(&answer))
    }

    /// Blocks until a DELETE event for `key` (or any key under it when
    /// `prefix`) after `after_revision`, or `until` passes. Reconnects a
    /// broken watch stream (bounded per-stream read time, then re-watch)
    /// so a half-open connection cannot block forever. Compacted history,
    /// or a store whose revision is now below `after_revision` (restored
    /// from a backup, restarted empty: no delete will ever come), is
    /// [`WatchOutcome::LookAgain`]: the caller looks again, which is always
    /// safe.
    ///
    /// The stream alone is never trusted to bring the delete: after each
    /// window that showed none, the key (or the prefix) is read again. A
    /// delete the read shows is given half a window more on a new stream
    /// (made just before the window's end, its event may be on its way,
    /// with the clean-release mark the caller wants), and when that shows
    /// nothing either (a member, gateway or proxy that made the watch and
    /// then sent nothing; a loaded member whose catch-up outlasts every
    /// window), it is [`WatchOutcome::LookAgain`]. A waiter so learns of any
    /// delete within a window and a half of it, whatever the stream does. A key found
    /// unchanged is watched from the read's revision in the next window,
    /// not from the old one again: the history to replay does not grow
    /// with the wait.
    ///
    /// # Errors
    /// Any [`EtcdError`] of making the watch (the wait is read-only: none
    /// is ambiguous in effect); [`EtcdError::OtherCluster`] when another
    /// cluster answers.
    pub fn wait_for_delete(
        &self,
        key: &[u8],
        prefix: bool,
        after_revision: i64,
        until: Option<Instant>,
    ) -> Result<WatchOutcome, EtcdError> {
        let mut spec = WatchSpec {
            key,
            prefix,
            start_revision: after_revision + 1,
            puts: false,
        };
        // A read showed a delete the stream had not: one short window more
        // from the same start, so a delete made just before a window's end
        // (its event on the way) is still seen, with the value it had.
        let mut gone = false;
        loop {
            let now = Instant::now();
            let window = if gone {
                self.inner.watch_window / 2
            } else {
                self.inner.watch_window
            };
            let window_end = match until {
                Some(until) if until <= now => return Ok(WatchOutcome::TimedOut),
                Some(until) => until.min(now + window),
                None => now + window,
            };
            let outcome = self.watch(&spec, window_end, &mut |message| {
                if message.compact_revision > 0
                    || (message.header.revision > 0 && message.header.revision < after_revision)
                {
                    return Some(WatchOutcome::LookAgain);
                }
                let deleted: Vec<Event> = message
                    .events
                    .iter()
                    .filter(|e| e.deleted)
                    .cloned()
                    .collect();
                (!deleted.is_empty()).then_some(WatchOutcome::Deleted(deleted))
            })?;
            if let Some(outcome) = outcome {
                return Ok(outcome);
            }
            if until.is_some_and(|until| until <= Instant::now()) {
                return Ok(WatchOutcome::TimedOut);
            }
            if gone {
                tracing::info!(
                    "etcd: a read shows a delete that the watch stream did not show, even in a window more; looking again (the release was not seen, so a take waits the lock delay)"
                );
                return Ok(WatchOutcome::LookAgain);
            }
            match self.deleted_unseen(key, prefix, after_revision) {
                Ok(None) => gone = true,
                // The same key since: none of its deletes can lie behind
                // the read. (Under a prefix a key made and deleted since
                // could: that one's watch keeps its start.)
                Ok(Some(read_at)) if !prefix => {
                    spec.start_revision = spec.start_revision.max(read_at + 1);
                }
                Ok(Some(_)) => {}
                Err(e) if e.is_store_changed() => return Err(e),
                // The read proves nothing either way: watch on.
                Err(e) => tracing::debug!("etcd: reading again after a quiet watch window: {e}"),
            }
        }
    }

    /// After a watch window that showed no delete of `key` (or under it when
    /// `prefix`) after `after_revision`: `None` when a read shows one
    /// happened anyway (the key, or a key under the prefix as it was at
    /// `after_revision`, is gone or was made again since) or the store went
    /// back; otherwise the read's revision, up to which nothing was deleted.
    fn deleted_unseen(
        &self,
        key: &[u8],
        prefix: bool,
        after_revision: i64,
    ) -> Result<Option<i64>, EtcdError> {
        let (now, read_at) = if prefix {
            self.list_at(key)?
        } else {
            let (kv, read_at) = self.get(key)?;
            (kv.into_iter().collect(), read_at)
        };
        if read_at < after_revision {
            return Ok(None);
        }
        let kept = if prefix {
            self.list_as_of(key, after_revision)?.iter().all(|then| {
                now.iter()
                    .any(|kv| kv.key == then.key && kv.create_revision == then.create_revision)
            })
        } else {
            // The caller saw the key held at `after_revision`.
            now.iter()
                .any(|kv| kv.key == key && kv.create_revision <= after_revision)
        };
        Ok(kept.then_some(read_at))
    }

    /// The keys under `prefix` as they were at `revision`, with their
    /// create revisions (a range at a past revision). Compacted history is
    /// an error.
    fn list_as_of(&self, prefix: &[u8], revision: i64) -> Result<Vec<KeyValue>, EtcdError> {
        const OP: &str = "list";
        let request = json!({
            "key": BASE64.encode(prefix), "range_end": BASE64.encode(prefix_end(prefix)),
            "revision": revision.to_string(), "keys_only": true,
        });
        let (answer, endpoint) = self.call(OP, "/v3/kv/range", &request)?;
        kvs(&answer).map_err(|reason| malformed(OP, &endpoint, reason))
    }

    /// One watch stream until `window_end`: each message goes to
    /// `on_message` until it returns `Some`, which is returned; `None` when
    /// the window ended, or the stream ended or broke, after the watch was
    /// made (the caller makes it again). Every message's header is checked
    /// against the cluster this client first saw.
    ///
    /// # Errors
    /// Any [`EtcdError`] of making the watch; a stream error or cancel;
    /// [`EtcdError::OtherCluster`].
    pub fn watch<T>(
        &self,
        spec: &WatchSpec<'_>,
        window_end: Instant,
        on_message: &mut dyn FnMut(&WatchMessage) -> Option<T>,
    ) -> Result<Option<T>, EtcdError> {
        const OP: &str = "watch";
        let mut request = json!({
            "key": BASE64.encode(spec.key),
            "start_revision": spec.start_revision.max(1).to_string(),
            "prev_kv": true,
        });
        if !spec.puts {
            request["filters"] = json!(["NOPUT"]);
        }
        if spec.prefix {
            request["range_end"] = Value::String(BASE64.encode(prefix_end(spec.key)));
        }
        let request = json!({ "create_request": request });
        let mut reauthenticated = false;
        loop {
            let window = window_end.saturating_duration_since(Instant::now());
            let (response, endpoint) = self.send(OP, "/v3/watch", &request, Some(window))?;
            let mut lines = BufReader::new(response.into_body().into_reader());
            let mut created = false;
            loop {
                let mut line = Vec::new();
                let read = (&mut lines)
                    .take(WATCH_LINE_LIMIT)
                    .read_until(b'\n', &mut line);
                match read {
                    // The stream ended or broke, or the window passed, after
                    // the watch was made: make it again.
                    Ok(0) | Err(_) if created => return Ok(None),
                    Ok(0) => {
                        return Err(EtcdError::Unreachable {
                            operation: OP,
                            endpoints: endpoint,
                            reason: "the watch stream ended before the watch was made".into(),
                        });
                    }
                    Ok(_) if !line.ends_with(b"\n") && line.len() as u64 >= WATCH_LINE_LIMIT => {
                        return Err(malformed(OP, &endpoint, "a watch message over 1 MiB"));
                    }
                    Ok(_) => {}
                    Err(error) => {
                        return Err(EtcdError::Unreachable {
                            operation: OP,
                            endpoints: endpoint,
                            reason: format!(
                                "no answer to the watch: {}",
                                read_error_in_operator_terms(&error)
                            ),
                        });
                    }
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let message: Value = serde_json::from_slice(&line)
                    .map_err(|e| malformed(OP, &endpoint, e.to_string()))?;
                let result = message.get("result");
                // A stream error, or a watch etcd canceled (an expired
                // token or a missing permission arrives as a cancel). A
                // compaction past the start revision also cancels, with
                // `compact_revision` set: that one is the caller's to judge.
                let compacted = result.is_some_and(|r| int_field(r, "compact_revision") > 0);
                let failure = gateway_error(&message).or_else(|| {
                    let result = result?;
                    (result.get("canceled").and_then(Value::as_bool) == Some(true) && !compacted)
                        .then(|| {
                            let reason = result.get("cancel_reason").and_then(Value::as_str);
                            (0, reason.unwrap_or("canceled, no reason given").to_owned())
                        })
                });
                if let Some((code, text)) = failure {
                    if is_invalid_token(code, &text) && self.can_reauthenticate(reauthenticated) {
                        reauthenticated = true;
                        self.authenticate()?;
                        break;
                    }
                    return Err(refusal(OP, &endpoint, code, text));
                }
                let Some(result) = result else {
                    return Err(malformed(OP, &endpoint, "a watch message without result"));
                };
                let header = header_of(result);
                self.ensure_same_cluster(OP, &endpoint, header)?;
                if result.get("created").and_then(Value::as_bool) == Some(true) {
                    created = true;
                }
                let parsed = WatchMessage {
                    header,
                    compact_revision: int_field(result, "compact_revision"),
                    events: events(result).map_err(|reason| malformed(OP, &endpoint, reason))?,
                };
                if let Some(done) = on_message(&parsed) {
                    return Ok(Some(done));
                }
                if compacted {
                    // Canceled by etcd: nothing more comes on this stream.
                    return Ok(None);
                }
            }
        }
    }

    /// Holds every answer to the cluster of the first one (ECP-0135): an
    /// answer from another cluster is [`EtcdError::OtherCluster`].
    fn ensure_same_cluster(
        &self,
        operation: &'static str,
        endpoint: &str,
        header: Header,
    ) -> Result<(), EtcdError> {
        if header.cluster_id == 0 {
            return Ok(());
        }
        match self.inner.cluster.compare_exchange(
            0,
            header.cluster_id,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => Ok(()),
            Err(expected) if expected == header.cluster_id => Ok(()),
            Err(expected) => Err(EtcdError::OtherCluster {
                operation,
                endpoint: endpoint.to_owned(),
                expected,
                seen: header.cluster_id,
            }),
        }
    }

    /// Buys a token with the user file's name and password.
    fn authenticate(&self) -> Result<(), EtcdError> {
        const OP: &str = "authenticate";
        let Some(credentials) = &self.inner.credentials else {
            return Ok(());
        };
        let request = json!({ "name": credentials.user, "password": credentials.password.0 });
        let (answer, endpoint) = match self.call(OP, AUTHENTICATE, &request) {
            Ok(answer) => answer,
            Err(EtcdError::Rejected {
                endpoint,
                code,
                message,
                ..
            }) if code == 3
                || code == CODE_UNAUTHENTICATED
                || message.contains("authentication failed") =>
            {
                return Err(EtcdError::AuthRejected {
                    operation: OP,
                    endpoint,
                    reason: message,
                });
            }
            Err(error) => return Err(error),
        };
        let Some(token) = answer.get("token").and_then(Value::as_str) else {
            return Err(malformed(
                OP,
                &endpoint,
                "no token (is auth enabled on etcd?)",
            ));
        };
        *self.token_slot() = Some(Secret(token.to_owned()));
        Ok(())
    }

    fn token_slot(&self) -> std::sync::MutexGuard<'_, Option<Secret>> {
        self.inner
            .token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn can_reauthenticate(&self, already: bool) -> bool {
        !already && self.inner.credentials.is_some()
    }

    /// A unary call: the answer's JSON and the endpoint that gave it. A
    /// token etcd calls invalid is renewed and the call made once more (the
    /// request was refused, so nothing was applied).
    fn call(
        &self,
        operation: &'static str,
        path: &str,
        body: &Value,
    ) -> Result<(Value, String), EtcdError> {
        self.call_via(operation, path, body, None)
    }

    /// [`EtcdClient::call`], at endpoint `only` alone when given.
    fn call_via(
        &self,
        operation: &'static str,
        path: &str,
        body: &Value,
        only: Option<usize>,
    ) -> Result<(Value, String), EtcdError> {
        let mut reauthenticated = false;
        loop {
            let (response, endpoint) = self.send_via(operation, path, body, None, only)?;
            let bytes = response
                .into_body()
                .with_config()
                .limit(ANSWER_LIMIT)
                .read_to_vec()
                .map_err(|error| {
                    self.advance_from(&endpoint);
                    EtcdError::Ambiguous {
                        operation,
                        endpoint: endpoint.clone(),
                        reason: format!("reading the answer: {}", in_operator_terms(&error, None)),
                    }
                })?;
            let answer: Value = serde_json::from_slice(&bytes)
                .map_err(|e| malformed(operation, &endpoint, e.to_string()))?;
            let Some((code, message)) = gateway_error(&answer) else {
                // A keepalive's header is inside its `result`.
                let header = header_of(answer.get("result").unwrap_or(&answer));
                self.ensure_same_cluster(operation, &endpoint, header)?;
                return Ok((answer, endpoint));
            };
            if is_invalid_token(code, &message)
                && path != AUTHENTICATE
                && self.can_reauthenticate(reauthenticated)
            {
                reauthenticated = true;
                self.authenticate()?;
                continue;
            }
            if is_maybe_applied(&message) {
                self.advance_from(&endpoint);
                return Err(EtcdError::Ambiguous {
                    operation,
                    endpoint,
                    reason: message,
                });
            }
            if code == CODE_UNAVAILABLE {
                // "no leader": this member is cut off; try another next time.
                self.advance_from(&endpoint);
            }
            return Err(refusal(operation, &endpoint, code, message));
        }
    }

    /// Sends one POST, failing over across endpoints while the request was
    /// certainly not applied, within one `call_timeout` overall (or
    /// `stream_window` for a watch stream).
    fn send(
        &self,
        operation: &'static str,
        path: &str,
        body: &Value,
        stream_window: Option<Duration>,
    ) -> Result<(ureq::http::Response<ureq::Body>, String), EtcdError> {
        self.send_via(operation, path, body, stream_window, None)
    }

    /// [`EtcdClient::send`], at endpoint `only` alone (no failover) when given.
    fn send_via(
        &self,
        operation: &'static str,
        path: &str,
        body: &Value,
        stream_window: Option<Duration>,
        only: Option<usize>,
    ) -> Result<(ureq::http::Response<ureq::Body>, String), EtcdError> {
        let inner = &self.inner;
        let count = inner.endpoints.len();
        let (start, steps) = match only {
            Some(index) => (index % count, 1),
            None => (inner.current.load(Ordering::Relaxed) % count, count),
        };
        let deadline = Instant::now() + inner.call_timeout;
        let body = body.to_string();
        let mut last = None;
        for step in 0..steps {
            let index = (start + step) % count;
            let endpoint = &inner.endpoints[index];
            let shown = shown_endpoint(endpoint);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let url = format!("{}{}", endpoint.as_str().trim_end_matches('/'), path);
            let mut request = inner.agent.post(&url).content_type("application/json");
            // Authenticating sends no token: the one we have may be the
            // expired one it replaces (other threads keep using it meanwhile).
            let token = if path == AUTHENTICATE {
                None
            } else {
                self.token_slot().as_ref().map(|t| t.0.clone())
            };
            if let Some(token) = token {
                request = request.header("Authorization", token);
            }
            // Connecting gets less than the whole budget: a connect that
            // times out is then reported as one (certainly not sent, not
            // ambiguous), and a host that never answers leaves time for
            // the next endpoint.
            let mut connect = left.mul_f64(0.9);
            if step + 1 < steps {
                connect = connect.min(inner.call_timeout / 2);
            }
            if let Some(window) = stream_window {
                connect = connect.min(window.mul_f64(0.9));
            }
            let config = request.config().timeout_connect(Some(connect));
            let request = match stream_window {
                // The window bounds the stream; its answer must start in time.
                Some(window) => config
                    .timeout_global(Some(window.max(Duration::from_millis(1))))
                    .timeout_recv_response(Some(left)),
                None => config.timeout_global(Some(left)),
            }
            .build();
            let first_tls_contact = endpoint.scheme() == "https" && FIRST_CONTACT.contains(&path);
            let budget = stream_window.map_or(left, |window| window.max(Duration::from_millis(1)));
            match classify(request.send(&body), first_tls_contact, budget) {
                Attempt::Answered(response) => {
                    inner.current.store(index, Ordering::Relaxed);
                    let status = response.status().as_u16();
                    if status != 200 && !is_json(&response) {
                        return Err(rejected(
                            operation,
                            &shown,
                            0,
                            format!("HTTP status {status}"),
                        ));
                    }
                    return Ok((response, shown));
                }
                Attempt::NotSent(kind, reason) => {
                    tracing::debug!(
                        "etcd {operation} at {shown}: {reason}; trying the next endpoint"
                    );
                    last = Some((kind, shown, reason));
                    // Should the time run out, the next call starts there.
                    inner.current.store((index + 1) % count, Ordering::Relaxed);
                }
                Attempt::MaybeSent(reason) => {
                    inner.current.store((index + 1) % count, Ordering::Relaxed);
                    return Err(EtcdError::Ambiguous {
                        operation,
                        endpoint: shown,
                        reason,
                    });
                }
            }
        }
        Err(match last {
            Some((NotSentKind::Tls, endpoint, reason)) => EtcdError::Tls {
                operation,
                endpoint,
                reason,
            },
            Some((NotSentKind::CertRejected, endpoint, reason)) => EtcdError::AuthRejected {
                operation,
                endpoint,
                reason,
            },
            Some((NotSentKind::Unreachable, _, reason)) => EtcdError::Unreachable {
                operation,
                endpoints: self.all_endpoints(),
                reason,
            },
            None => EtcdError::Unreachable {
                operation,
                endpoints: self.all_endpoints(),
                reason: format!("no answer within {:?}", inner.call_timeout),
            },
        })
    }

    /// After a failure at `endpoint`, the next call starts at the next one.
    fn advance_from(&self, endpoint: &str) {
        let inner = &self.inner;
        if let Some(index) = inner
            .endpoints
            .iter()
            .position(|e| shown_endpoint(e) == endpoint)
        {
            inner
                .current
                .store((index + 1) % inner.endpoints.len(), Ordering::Relaxed);
        }
    }

    fn all_endpoints(&self) -> String {
        self.inner
            .endpoints
            .iter()
            .map(shown_endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What became of one attempt at one endpoint.
enum Attempt {
    Answered(ureq::http::Response<ureq::Body>),
    /// Certainly not applied: try the next endpoint.
    NotSent(NotSentKind, String),
    /// May have reached etcd: the outcome is unknown.
    MaybeSent(String),
}

#[derive(Debug, Clone, Copy)]
enum NotSentKind {
    Unreachable,
    Tls,
    CertRejected,
}

/// Sorts one attempt's result. `first_tls_contact`: a read-only first
/// call over https (authenticate, or the status probe), where a connection
/// closed before any answer is the server refusing our client certificate:
/// TLS 1.3 verifies it after the client's side of the handshake is done, so
/// the refusal arrives as a closed connection on the first request.
fn classify(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    first_tls_contact: bool,
    budget: Duration,
) -> Attempt {
    use ureq::Timeout;
    let error = match result {
        Ok(response) => return Attempt::Answered(response),
        Err(error) => error,
    };
    let reason = in_operator_terms(&error, Some(budget));
    if let Some(tls) = rustls_error(&error) {
        return match tls {
            rustls::Error::AlertReceived(alert) if is_certificate_alert(*alert) => {
                Attempt::NotSent(NotSentKind::CertRejected, reason)
            }
            _ => Attempt::NotSent(NotSentKind::Tls, reason),
        };
    }
    match &error {
        ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::BadUri(_)
        | ureq::Error::Timeout(Timeout::Resolve | Timeout::Connect) => {
            Attempt::NotSent(NotSentKind::Unreachable, reason)
        }
        ureq::Error::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::AddrNotAvailable
                    | io::ErrorKind::NetworkUnreachable
                    | io::ErrorKind::HostUnreachable
            ) =>
        {
            Attempt::NotSent(NotSentKind::Unreachable, reason)
        }
        ureq::Error::Io(io)
            if first_tls_contact
                && matches!(
                    io.kind(),
                    io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::UnexpectedEof
                ) =>
        {
            Attempt::NotSent(
                NotSentKind::CertRejected,
                format!(
                    "{reason}: etcd closed the TLS connection before answering, so it did not accept our client certificate"
                ),
            )
        }
        // A write failed: the request never reached etcd whole, so it
        // cannot have been applied.
        ureq::Error::Io(io) if io.kind() == io::ErrorKind::BrokenPipe => {
            Attempt::NotSent(NotSentKind::Unreachable, reason)
        }
        _ => Attempt::MaybeSent(reason),
    }
}

/// A client error as an operator reads it in the journal: a timeout says
/// which wait ran out (and, when known, how long the call had), not the
/// HTTP library's name for it (`timeout: global`); other errors as the
/// library words them (a refused connection, a TLS alert).
fn in_operator_terms(error: &ureq::Error, budget: Option<Duration>) -> String {
    use ureq::Timeout;
    let ureq::Error::Timeout(timeout) = error else {
        return error.to_string();
    };
    let what = match timeout {
        Timeout::Resolve => "etcd's host name did not resolve",
        Timeout::Connect => "no connection to etcd",
        Timeout::SendRequest | Timeout::SendBody | Timeout::PerWrite | Timeout::Await100 => {
            "the request was not sent to etcd"
        }
        Timeout::RecvResponse => "etcd's answer did not begin",
        Timeout::RecvBody | Timeout::PerRead => "etcd's answer did not arrive whole",
        // Global, PerCall, and any kind a later ureq adds.
        _ => "no answer from etcd",
    };
    match budget {
        Some(budget) => format!(
            "{what} within the call's deadline of {}",
            humantime::format_duration(Duration::from_millis(
                u64::try_from(budget.as_millis()).unwrap_or(u64::MAX)
            ))
        ),
        None => format!("{what} before the call's deadline"),
    }
}

/// An I/O error from reading an answer's body, with a ureq error inside it
/// put in the operator's terms.
fn read_error_in_operator_terms(error: &io::Error) -> String {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<ureq::Error>())
    {
        Some(inner) => in_operator_terms(inner, None),
        None => error.to_string(),
    }
}

/// The rustls error under a ureq error, if the failure was TLS's.
fn rustls_error(error: &ureq::Error) -> Option<&rustls::Error> {
    match error {
        ureq::Error::Rustls(tls) => Some(tls),
        ureq::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>(),
        _ => None,
    }
}

/// Alerts a server sends when it does not accept our client certificate
/// (RFC 8446 6.2): a credentials problem, not a transport one.
fn is_certificate_alert(alert: rustls::AlertDescription) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        alert,
        A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::CertificateRequired
    )
}

fn is_json(response: &ureq::http::Response<ureq::Body>) -> bool {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The error of a gateway answer: `{"error": "…", "code": N}` (unary) or
/// `{"error": {"grpc_code": N, "message": "…"}}` (streams).
fn gateway_error(answer: &Value) -> Option<(i64, String)> {
    match answer.get("error")? {
        Value::String(message) => Some((
            answer.get("code").and_then(Value::as_i64).unwrap_or(0),
            message.clone(),
        )),
        Value::Object(error) => Some((
            error.get("grpc_code").and_then(Value::as_i64).unwrap_or(0),
            error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message")
                .to_owned(),
        )),
        _ => None,
    }
}

fn is_invalid_token(code: i64, message: &str) -> bool {
    code == CODE_UNAUTHENTICATED
        || message.contains("invalid auth token")
        || message.contains("code = Unauthenticated")
}

/// etcd's errors after a proposal was made: it may still commit.
fn is_maybe_applied(message: &str) -> bool {
    ["request timed out", "leader changed", "timed out due to"]
        .iter()
        .any(|m| message.contains(m))
}

/// etcd's answer refusing a request: a missing permission is a credentials
/// problem (77), anything else [`rejected`].
fn refusal(operation: &'static str, endpoint: &str, code: i64, message: String) -> EtcdError {
    if code == CODE_PERMISSION_DENIED || message.contains("permission denied") {
        return EtcdError::AuthRejected {
            operation,
            endpoint: endpoint.to_owned(),
            reason: message,
        };
    }
    rejected(operation, endpoint, code, message)
}

fn rejected(operation: &'static str, endpoint: &str, code: i64, message: String) -> EtcdError {
    if code == CODE_UNAVAILABLE {
        // "no leader" and the like: nothing was applied.
        return EtcdError::Unreachable {
            operation,
            endpoints: endpoint.to_owned(),
            reason: message,
        };
    }
    EtcdError::Rejected {
        operation,
        endpoint: endpoint.to_owned(),
        code,
        message,
    }
}

fn malformed(operation: &'static str, endpoint: &str, reason: impl Into<String>) -> EtcdError {
    EtcdError::Malformed {
        operation,
        endpoint: endpoint.to_owned(),
        reason: reason.into(),
    }
}

/// A key written without a lease would never expire: lease 0 (a lease
/// swapped out by a stop request on another thread) is refused as lost.
/// Also for a claim that would read a key without a lease as ours.
///
/// # Errors
/// [`EtcdError::Rejected`] as "lease not found" (lost: start over).
pub fn ensure_lease(operation: &'static str, lease: i64) -> Result<(), EtcdError> {
    if lease == 0 {
        return Err(EtcdError::Rejected {
            operation,
            endpoint: "(none: not sent)".into(),
            code: CODE_NOT_FOUND,
            message: "lease not found: no lease to write under (revoked by a stop request)".into(),
        });
    }
    Ok(())
}

/// An endpoint as errors show it: scheme, host and port (nothing else can
/// be in it: [`ensure_endpoints`]).
fn shown_endpoint(url: &url::Url) -> String {
    url.as_str().trim_end_matches('/').to_owned()
}

/// Refuses endpoints a client cannot use or must not print: only
/// `http`/`https` with a host and nothing after it; userinfo would put a
/// credential where logs show the endpoint.
fn ensure_endpoints(endpoints: &[url::Url]) -> Result<(), EtcdError> {
    let bad = |reason: String| EtcdError::BadConfig {
        what: "--etcd",
        reason,
    };
    if endpoints.is_empty() {
        return Err(bad("no endpoint given".into()));
    }
    for url in endpoints {
        // Never print a URL with userinfo: name its host only.
        let host = url.host_str().unwrap_or("(no host)");
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(format!(
                "the endpoint for {host} has user information; put credentials in --etcd-user-file"
            )));
        }
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!(
                "the endpoint for {host} is not http:// or https://"
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("an endpoint has no host".into()));
        }
        if url.path() != "/" && !url.path().is_empty()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(bad(format!(
                "the endpoint for {host} has a path, query or fragment; give scheme://host:port only"
            )));
        }
    }
    Ok(())
}

/// Reads a file of at most `limit` bytes.
fn read_limited(path: &Path, what: &'static str, limit: u64) -> Result<Vec<u8>, EtcdError> {
    let unreadable = |source| EtcdError::FileUnreadable {
        what,
        path: path.to_owned(),
        source,
    };
    let file = fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > limit {
        return Err(EtcdError::BadConfig {
            what,
            reason: format!("the file is larger than {limit} bytes"),
        });
    }
    Ok(bytes)
}

fn read_certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<Certificate<'static>>, EtcdError> {
    let pem = read_limited(path, what, PEM_LIMIT)?;
    let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(cert)) => Some(cert),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(EtcdError::BadConfig {
            what,
            reason: format!("\"{}\" holds no PEM certificate", printable_path(path)),
        });
    }
    Ok(certs)
}

fn read_private_key(path: &Path) -> Result<PrivateKey<'static>, EtcdError> {
    const WHAT: &str = "--etcd-key";
    let pem = read_limited(path, WHAT, PEM_LIMIT)?;
    ureq::tls::parse_pem(&pem)
        .find_map(|item| match item {
            Ok(PemItem::PrivateKey(key)) => Some(key),
            _ => None,
        })
        .ok_or_else(|| EtcdError::BadConfig {
            what: WHAT,
            reason: format!("\"{}\" holds no PEM private key", printable_path(path)),
        })
}

/// `user:password` on one line (a trailing newline is fine). The password
/// may hold `:`; neither part may be empty. The file's text is never quoted
/// in an error.
fn read_user_file(path: &Path) -> Result<Credentials, EtcdError> {
    const WHAT: &str = "--etcd-user-file";
    let bytes = read_limited(path, WHAT, USER_FILE_LIMIT)?;
    let bad = |reason: &str| EtcdError::BadConfig {
        what: WHAT,
        reason: format!(
            "\"{}\" {reason}; write one line user:password",
            printable_path(path)
        ),
    };
    let text = String::from_utf8(bytes).map_err(|_| bad("is not UTF-8"))?;
    let line = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if line.contains(['\n', '\r']) {
        return Err(bad("holds more than one line"));
    }
    let Some((user, password)) = line.split_once(':') else {
        return Err(bad("has no `:` between user and password"));
    };
    if user.is_empty() || password.is_empty() {
        return Err(bad("has an empty user or password"));
    }
    Ok(Credentials {
        user: user.to_owned(),
        password: Secret(password.to_owned()),
    })
}

/// The first key after every key that starts with `prefix` (etcd's
/// `range_end` for a prefix): the last byte below 0xff incremented, the
/// bytes after it dropped; all 0xff means "to the end" (`\0`).
/// A txn's put of `key` under `lease`.
fn put_op(key: &[u8], value: &[u8], lease: i64) -> Value {
    json!({ "request_put": {
        "key": BASE64.encode(key), "value": BASE64.encode(value), "lease": lease.to_string()
    }})
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// An int64 field of the gateway (a string, or absent for zero).
fn int_field(object: &Value, name: &str) -> i64 {
    match object.get(name) {
        Some(Value::String(text)) => text.parse().unwrap_or(0),
        Some(Value::Number(number)) => number.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn seconds_field(object: &Value, name: &str) -> Duration {
    Duration::from_secs(u64::try_from(int_field(object, name)).unwrap_or(0))
}

/// A lease's TTL when positive; `None` when absent, 0 or -1 (gone).
fn positive_ttl(object: &Value) -> Option<Duration> {
    (int_field(object, "TTL") > 0).then(|| seconds_field(object, "TTL"))
}

fn header_revision(answer: &Value) -> i64 {
    answer.get("header").map_or(0, |h| int_field(h, "revision"))
}

/// The header of an answer (or of a stream message's `result`). The
/// cluster ID is a uint64, which the gateway writes as a string.
fn header_of(answer: &Value) -> Header {
    let Some(header) = answer.get("header") else {
        return Header::default();
    };
    let cluster_id = match header.get("cluster_id") {
        Some(Value::String(text)) => text.parse().unwrap_or(0),
        Some(Value::Number(number)) => number.as_u64().unwrap_or(0),
        _ => 0,
    };
    Header {
        cluster_id,
        revision: int_field(header, "revision"),
    }
}

/// The events of a watch message (`type` is absent for a PUT: zero).
fn events(result: &Value) -> Result<Vec<Event>, String> {
    let Some(events) = result.get("events") else {
        return Ok(Vec::new());
    };
    let Value::Array(events) = events else {
        return Err("events is not a list".into());
    };
    events
        .iter()
        .map(|event| {
            let deleted = match event.get("type") {
                None => false,
                Some(Value::String(kind)) if kind == "PUT" => false,
                Some(Value::String(kind)) if kind == "DELETE" => true,
                Some(other) => return Err(format!("an event of unknown type {other}")),
            };
            let kv = event
                .get("kv")
                .map(key_value)
                .transpose()?
                .ok_or("an event without kv")?;
            let prev = event.get("prev_kv").map(key_value).transpose()?;
            Ok(Event { deleted, kv, prev })
        })
        .collect()
}

fn kvs(answer: &Value) -> Result<Vec<KeyValue>, String> {
    match answer.get("kvs") {
        None => Ok(Vec::new()),
        Some(Value::Array(kvs)) => kvs.iter().map(key_value).collect(),
        Some(_) => Err("kvs is not a list".into()),
    }
}

fn key_value(kv: &Value) -> Result<KeyValue, String> {
    let bytes = |name: &str| match kv.get(name) {
        None => Ok(Vec::new()),
        Some(Value::String(text)) => BASE64
            .decode(text)
            .map_err(|e| format!("{name} is not base64: {e}")),
        Some(_) => Err(format!("{name} is not a string")),
    };
    Ok(KeyValue {
        key: bytes("key")?,
        value: bytes("value")?,
        create_revision: int_field(kv, "create_revision"),
        mod_revision: int_field(kv, "mod_revision"),
        lease: int_field(kv, "lease"),
    })
}

#[cfg(test)]
mod tests {
    //! Against real etcd (the harness in `crates/ec-test-support/src/etcd_server.rs`).

    use super::*;
    use crate::cluster::etcd_server::{EtcdCluster, EtcdServer, TlsFiles};
    use crate::error::Error;
    use crate::exit_code::ExitStatus;

    const TIMEOUT: Duration = Duration::from_millis(1500);

    fn config(endpoints: &str) -> EtcdConnect {
        EtcdConnect {
            endpoints: endpoints
                .split(',')
                .map(|e| url::Url::parse(e).expect("endpoint URL"))
                .collect(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            user_file: None,
            call_timeout: TIMEOUT,
        }
    }

    fn client(etcd: &EtcdServer) -> EtcdClient {
        EtcdClient::connect(&config(&etcd.url())).expect("connect")
    }

    fn tls_config(etcd: &EtcdServer, ca: &Path, cert: Option<(&Path, &Path)>) -> EtcdConnect {
        EtcdConnect {
            ca_file: Some(ca.to_owned()),
            cert_file: cert.map(|c| c.0.to_owned()),
            key_file: cert.map(|c| c.1.to_owned()),
            ..config(&etcd.url())
        }
    }

    fn status_of(error: EtcdError) -> ExitStatus {
        Error::from(error).exit_status()
    }

    /// A loopback URL nothing listens on.
    fn dead_endpoint() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        format!("http://127.0.0.1:{port}")
    }

    /// A loopback URL that never completes a connection: a listener whose
    /// accept queue (backlog 0) is full drops further SYNs, like a
    /// host that went away without a reset. Keep the guard alive.
    fn blackhole_endpoint() -> (String, Vec<std::net::TcpStream>, std::net::TcpListener) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        rustix::net::listen(&listener, 0).expect("listen with backlog 0");
        let addr = listener.local_addr().expect("addr");
        let mut fillers = Vec::new();
        // Fill the queue until a connect hangs.
        while fillers.len() < 8 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(stream) => fillers.push(stream),
                Err(_) => break,
            }
        }
        (format!("http://{addr}"), fillers, listener)
    }

    #[test]
    fn a_first_endpoint_that_never_connects_leaves_time_for_the_next_and_is_skipped_after() {
        let etcd = EtcdServer::start();
        let (blackhole, _fillers, _listener) = blackhole_endpoint();
        let client =
            EtcdClient::connect(&config(&format!("{blackhole},{}", etcd.url()))).expect("connect");
        let started = Instant::now();
        let lease = client.grant(Duration::from_secs(5));
        let took = started.elapsed();
        assert!(lease.is_ok(), "{lease:?} after {took:?}");
        assert!(took < TIMEOUT, "{took:?}");
        let started = Instant::now();
        client.grant(Duration::from_secs(5)).expect("second grant");
        let took = started.elapsed();
        assert!(
            took < TIMEOUT / 3,
            "the second call tried the dead endpoint again: {took:?}"
        );
        // Alone, it is unreachable: a connect that never finished sent nothing.
        let alone = EtcdClient::connect(&config(&blackhole)).expect("connect");
        let error = alone
            .grant(Duration::from_secs(5))
            .expect_err("never connects");
        assert!(matches!(error, EtcdError::Unreachable { .. }), "{error}");
    }

    #[test]
    fn a_granted_lease_renews_with_the_servers_ttl_and_a_revoked_one_renews_to_none() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let lease = client.grant(Duration::from_secs(5)).expect("grant");
        assert_eq!(lease.ttl, Duration::from_secs(5));
        let renewed = client.keep_alive(lease.id).expect("keepalive");
        assert_eq!(renewed.ttl, Some(Duration::from_secs(5)));
        assert!(renewed.revision > 0, "the answer's revision: {renewed:?}");
        let left = client.time_to_live(lease.id).expect("ttl");
        assert!(
            left.is_some_and(|l| l <= Duration::from_secs(5)),
            "{left:?}"
        );
        client.revoke(lease.id).expect("revoke");
        assert_eq!(client.keep_alive(lease.id).expect("keepalive").ttl, None);
        assert_eq!(client.time_to_live(lease.id).expect("ttl"), None);
        client
            .revoke(lease.id)
            .expect("revoking a gone lease is fine");
    }

    #[test]
    fn a_lease_that_expired_on_the_server_renews_to_none() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let lease = client.grant(Duration::from_secs(1)).expect("grant");
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(client.keep_alive(lease.id).expect("keepalive").ttl, None);
    }

    #[test]
    fn create_takes_a_free_key_and_names_the_holder_of_a_taken_one() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let first = client.grant(Duration::from_secs(10)).expect("grant");
        let second = client.grant(Duration::from_secs(10)).expect("grant");
        let key = b"/every-channel/t/sources/a";
        let Created::Ours { revision } = client.create(key, b"one", first.id).expect("create")
        else {
            panic!("a free key was not taken");
        };
        let Created::Held {
            holder,
            revision: seen,
        } = client.create(key, b"two", second.id).expect("create")
        else {
            panic!("a held key was taken twice");
        };
        assert_eq!(holder.value, b"one");
        assert_eq!(holder.lease, first.id);
        assert_eq!(holder.create_revision, revision);
        assert!(seen >= revision);
        let (kv, _) = client.get(key).expect("get");
        assert_eq!(kv.expect("key exists").value, b"one");
        client.revoke(first.id).expect("revoke");
        assert_eq!(
            client.get(key).expect("get").0,
            None,
            "revoke deletes the key"
        );
        assert!(matches!(
            client.create(key, b"two", second.id).expect("create"),
            Created::Ours { .. }
        ));
    }

    #[test]
    fn list_returns_the_keys_under_a_prefix_and_no_others() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let lease = client.grant(Duration::from_secs(10)).expect("grant");
        for key in ["/p/a", "/p/b", "/p0", "/q"] {
            client
                .create(key.as_bytes(), b"v", lease.id)
                .expect("create");
        }
        let keys: Vec<Vec<u8>> = client
            .list(b"/p/")
            .expect("list")
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, [b"/p/a".to_vec(), b"/p/b".to_vec()]);
    }

    #[test]
    fn a_client_can_be_shared_by_threads() {
        fn shareable<T: Send + Sync + Clone>() {}
        shareable::<EtcdClient>();
    }

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn a_watch_wakes_on_the_delete_after_the_revision_and_times_out_without_one() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let lease = client.grant(Duration::from_secs(10)).expect("grant");
        let Created::Ours { revision } = client.create(b"/w/k", b"v", lease.id).expect("create")
        else {
            panic!("not created");
        };
        let started = Instant::now();
        let until = Some(started + Duration::from_millis(700));
        assert_eq!(
            client
                .wait_for_delete(b"/w/k", false, revision, until)
                .expect("watch"),
            WatchOutcome::TimedOut
        );
        assert!(started.elapsed() >= Duration::from_millis(700));
        // A delete that happened before the watch was made still counts.
        client.revoke(lease.id).expect("revoke");
        let until = Some(Instant::now() + Duration::from_secs(5));
        for (key, prefix) in [(&b"/w/k"[..], false), (&b"/w/"[..], true)] {
            let outcome = client
                .wait_for_delete(key, prefix, revision, until)
                .expect("watch");
            let WatchOutcome::Deleted(events) = &outcome else {
                panic!("{outcome:?}");
            };
            // The delete comes with the value the key had.
            assert_eq!(events.len(), 1, "{events:?}");
            assert!(events[0].deleted);
            assert_eq!(events[0].kv.key, b"/w/k");
            assert_eq!(
                events[0].prev.as_ref().map(|p| &p.value[..]),
                Some(&b"v"[..])
            );
        }
    }

    #[test]
    fn a_wait_on_a_store_that_went_back_or_was_compacted_looks_again() {
        let mut etcd = EtcdServer::start();
        let client = client(&etcd);
        let lease = client.grant(Duration::from_secs(30)).expect("grant");
        let Created::Ours { revision } = client.create(b"/w/k", b"v", lease.id).expect("create")
        else {
            panic!("not created");
        };
        let until = Some(Instant::now() + Duration::from_secs(5));
        // History compacted past the revision waited from.
        client.create(b"/w/other", b"v", lease.id).expect("create");
        let (_, now) = client.get(b"/w/other").expect("get");
        assert!(
            etcd.etcdctl(&["compaction", &now.to_string()])
                .status
                .success()
        );
        assert_eq!(
            client
                .wait_for_delete(b"/w/k", false, revision - 1, until)
                .expect("watch"),
            WatchOutcome::LookAgain
        );
        // Restarted empty: the revision waited from is in its future, and
        // no delete of the key will ever come.
        etcd.restart_empty();
        let until = Some(Instant::now() + Duration::from_secs(10));
        assert_eq!(
            client
                .wait_for_delete(b"/w/k", false, revision, until)
                .expect("watch"),
            WatchOutcome::LookAgain
        );
    }

    #[test]
    fn an_answer_from_another_cluster_is_refused_until_the_client_forgets_the_first() {
        let mut etcd = EtcdServer::start();
        let client = client(&etcd);
        client.grant(Duration::from_secs(30)).expect("grant");
        etcd.restart_as_another_cluster();
        let error = client
            .grant(Duration::from_secs(30))
            .expect_err("another cluster");
        assert!(error.is_store_changed(), "{error}");
        assert!(!error.is_ambiguous());
        assert_eq!(status_of(error), ExitStatus::Unavailable);
        let watched = client
            .wait_for_delete(
                b"/w/k",
                false,
                1,
                Some(Instant::now() + Duration::from_secs(5)),
            )
            .expect_err("another cluster");
        assert!(watched.is_store_changed(), "{watched}");
        client.forget_cluster();
        client
            .grant(Duration::from_secs(30))
            .expect("the new cluster, once the first is forgotten");
    }

    #[test]
    fn a_guarded_put_writes_only_keys_still_under_the_lease() {
        let etcd = EtcdServer::start();
        let client = client(&etcd);
        let ours = client.grant(Duration::from_secs(30)).expect("grant").id;
        let theirs = client.grant(Duration::from_secs(30)).expect("grant").id;
        client.create(b"/g/a", b"1", ours).expect("create");
        client.create(b"/g/b", b"1", theirs).expect("create");
        assert!(
            !client
                .put_if_leased(&[(b"/g/a", b"2"), (b"/g/b", b"2")], ours)
                .expect("txn"),
            "wrote over a key under another lease"
        );
        assert_eq!(client.get(b"/g/a").expect("get").0.unwrap().value, b"1");
        assert!(client.put_if_leased(&[(b"/g/a", b"2")], ours).expect("txn"));
        let (a, _) = client.get(b"/g/a").expect("get");
        let a = a.unwrap();
        assert_eq!((a.value.as_slice(), a.lease), (&b"2"[..], ours));
        // No key is ever written without a lease.
        assert!(
            client
                .create(b"/g/c", b"1", 0)
                .expect_err("lease 0")
                .is_lease_lost()
        );
    }

    #[test]
    fn a_delete_a_silent_watch_stream_never_shows_is_found_by_a_read_after_the_window() {
        use crate::cluster::etcd_server::StallingProxy;
        let etcd = EtcdServer::start();
        // Every watch through it is made and then says nothing more.
        let proxy = StallingProxy::to(&etcd.url());
        // A short call timeout makes the stream window short (1.2 s).
        let waiter = EtcdClient::connect(&EtcdConnect {
            call_timeout: Duration::from_millis(200),
            ..config(&proxy.url())
        })
        .expect("connect");
        let direct = client(&etcd);
        for (key, prefix) in [(&b"/w/k"[..], false), (&b"/w/"[..], true)] {
            let lease = direct.grant(Duration::from_secs(30)).expect("grant");
            let Created::Ours { revision } =
                direct.create(b"/w/k", b"v", lease.id).expect("create")
            else {
                panic!("not created");
            };
            let revoker = direct.clone();
            let revoking = std::thread::spawn(move || {
                // After the waiter's watch is made.
                std::thread::sleep(Duration::from_millis(500));
                revoker.revoke(lease.id).expect("revoke");
                Instant::now()
            });
            let until = Some(Instant::now() + Duration::from_secs(8));
            let outcome = waiter
                .wait_for_delete(key, prefix, revision, until)
                .expect("watch");
            let woke = Instant::now();
            let deleted = revoking.join().expect("revoker");
            // Not seen on the stream: the wait cannot say how the key went
            // (a clean release or not), only that it must look again.
            assert_eq!(outcome, WatchOutcome::LookAgain, "prefix {prefix}");
            let after = woke.saturating_duration_since(deleted);
            eprintln!("prefix {prefix}: looked again {after:?} after the unseen delete");
            assert!(
                after <= waiter.watch_window() * 2 + Duration::from_secs(1),
                "prefix {prefix}: {after:?}"
            );
        }
    }

    #[test]
    fn a_watch_outlives_several_stream_windows() {
        let etcd = EtcdServer::start();
        // A short call timeout makes the stream window short (1 s).
        let client = EtcdClient::connect(&EtcdConnect {
            call_timeout: Duration::from_millis(100),
            ..config(&etcd.url())
        })
        .expect("connect");
        let lease = client.grant(Duration::from_secs(10)).expect("grant");
        let Created::Ours { revision } = client.create(b"/w/k", b"v", lease.id).expect("create")
        else {
            panic!("not created");
        };
        // The revoke is a raft write (a WAL fsync): under CI's load it can
        // take longer than the watcher's 100 ms, so it gets the usual timeout.
        let deleter = EtcdClient::connect(&config(&etcd.url())).expect("connect");
        let delete = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2500));
            deleter.revoke(lease.id).expect("revoke");
            Instant::now()
        });
        let outcome = client
            .wait_for_delete(
                b"/w/k",
                false,
                revision,
                Some(Instant::now() + Duration::from_secs(10)),
            )
            .expect("watch");
        let woke = Instant::now();
        let delete_instant = delete.join().expect("deleter");
        assert!(matches!(outcome, WatchOutcome::Deleted(_)), "{outcome:?}");
        eprintln!(
            "woke {:?} after the delete",
            woke.saturating_duration_since(delete_instant)
        );
    }

    #[test]
    fn a_dead_endpoint_first_in_the_list_is_skipped_and_the_good_one_remembered() {
        let etcd = EtcdServer::start();
        let endpoints = format!("{},{}", dead_endpoint(), etcd.url());
        let client = EtcdClient::connect(&config(&endpoints)).expect("connect");
        let lease = client
            .grant(Duration::from_secs(5))
            .expect("grant past the dead endpoint");
        assert_eq!(client.inner.current.load(Ordering::Relaxed), 1);
        assert!(
            client
                .keep_alive(lease.id)
                .expect("keepalive")
                .ttl
                .is_some()
        );
    }

    #[test]
    fn after_a_member_stops_or_freezes_the_next_call_goes_to_another_member() {
        let mut cluster = EtcdCluster::start(3);
        // Followers first: stopping a leader would test an election instead.
        let leader = cluster.leader();
        let mut order: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        order.push(leader);
        let endpoints: Vec<String> = order.iter().map(|&i| cluster.url(i)).collect();
        // Short enough that a frozen member costs little, long enough for a
        // three-member raft write on a loaded 2-core machine.
        let client = EtcdClient::connect(&EtcdConnect {
            call_timeout: Duration::from_secs(1),
            ..config(&endpoints.join(","))
        })
        .expect("connect");
        let lease = client.grant(Duration::from_secs(10)).expect("grant");
        assert_eq!(client.inner.current.load(Ordering::Relaxed), 0);
        // Stopped: refused at once, the same call goes on to the next.
        cluster.stop_member(order[0]);
        assert!(
            client
                .keep_alive(lease.id)
                .expect("keepalive")
                .ttl
                .is_some()
        );
        assert_eq!(client.inner.current.load(Ordering::Relaxed), 1);
        // Frozen: this call's outcome is unknown, the next goes elsewhere.
        cluster.start_member(order[0]);
        cluster.freeze(order[1]);
        let error = client.create(b"/c/k", b"v", lease.id).expect_err("frozen");
        assert!(error.is_ambiguous(), "{error}");
        // The leader answers at once: no election, no retry.
        let next = client.create(b"/c/k", b"v", lease.id);
        assert_eq!(client.inner.current.load(Ordering::Relaxed), 2);
        cluster.thaw(order[1]);
        let created = next.expect("another member answers");
        // Whether the ambiguous create happened or not, the key is ours.
        match created {
            Created::Ours { .. } => {}
            Created::Held { holder, .. } => assert_eq!(holder.lease, lease.id),
        }
    }

    #[test]
    fn no_endpoint_answering_is_unreachable_and_not_ambiguous() {
        let client =
            EtcdClient::connect(&config(&format!("{},{}", dead_endpoint(), dead_endpoint())))
                .expect("connect without auth makes no call");
        let error = client.create(b"/k", b"v", 1).expect_err("nothing listens");
        assert!(matches!(error, EtcdError::Unreachable { .. }), "{error}");
        assert!(!error.is_ambiguous());
        assert_eq!(status_of(error), ExitStatus::Unavailable);
    }

    #[test]
    fn a_create_sent_to_a_frozen_server_is_ambiguous() {
        let mut etcd = EtcdServer::start();
        let client = EtcdClient::connect(&EtcdConnect {
            call_timeout: Duration::from_millis(300),
            ..config(&etcd.url())
        })
        .expect("connect");
        // Granted with the usual timeout: a raft write can outlast 300 ms
        // on a loaded machine, and only the frozen call is the claim here.
        let lease = EtcdClient::connect(&config(&etcd.url()))
            .expect("connect")
            .grant(Duration::from_secs(10))
            .expect("grant");
        etcd.freeze();
        let started = Instant::now();
        let error = client.create(b"/k", b"v", lease.id).expect_err("frozen");
        let took = started.elapsed();
        etcd.thaw();
        assert!(error.is_ambiguous(), "{error}");
        assert!(took < Duration::from_secs(1), "the call took {took:?}");
    }

    #[test]
    fn tls_with_the_right_ca_and_client_certificate_works() {
        let etcd = EtcdServer::start_tls();
        let tls: &TlsFiles = etcd.tls().expect("tls");
        let client = EtcdClient::connect(&tls_config(&etcd, &tls.ca, Some((&tls.cert, &tls.key))))
            .expect("connect");
        let lease = client
            .grant(Duration::from_secs(5))
            .expect("grant over TLS");
        assert!(matches!(
            client.create(b"/t/k", b"v", lease.id).expect("create"),
            Created::Ours { .. }
        ));
    }

    #[test]
    fn tls_refuses_a_server_certificate_from_another_ca_with_69() {
        let etcd = EtcdServer::start_tls();
        let tls = etcd.tls().expect("tls");
        let error = EtcdClient::connect(&tls_config(
            &etcd,
            &tls.other_ca,
            Some((&tls.cert, &tls.key)),
        ))
        .expect_err("untrusted server");
        assert!(matches!(error, EtcdError::Tls { .. }), "{error}");
        assert!(!error.is_ambiguous());
        assert_eq!(status_of(error), ExitStatus::Unavailable);
    }

    #[test]
    fn tls_without_an_accepted_client_certificate_is_refused_credentials_77() {
        let etcd = EtcdServer::start_tls();
        let tls = etcd.tls().expect("tls");
        for cert in [
            None,
            Some((tls.other_cert.as_path(), tls.other_key.as_path())),
        ] {
            // Refused at start: connect probes with the certificate.
            let error = EtcdClient::connect(&tls_config(&etcd, &tls.ca, cert))
                .expect_err("no accepted cert");
            assert!(
                matches!(error, EtcdError::AuthRejected { .. }),
                "{cert:?}: {error}"
            );
            assert_eq!(status_of(error), ExitStatus::NoPermission);
        }
    }

    #[test]
    fn an_https_endpoint_without_a_ca_is_refused_before_any_call() {
        let error = EtcdClient::connect(&config("https://127.0.0.1:1")).expect_err("no CA");
        assert!(matches!(error, EtcdError::BadConfig { .. }), "{error}");
        assert_eq!(status_of(error), ExitStatus::BadArgument);
    }

    fn user_file(etcd: &EtcdServer, text: &str) -> PathBuf {
        let path = etcd.path("user");
        fs::write(&path, text).expect("write user file");
        path
    }

    #[test]
    fn auth_with_the_right_password_works_and_a_wrong_one_is_77() {
        let mut etcd = EtcdServer::start();
        etcd.enable_auth("publisher", "pw:with:colons");
        let good = EtcdConnect {
            user_file: Some(user_file(&etcd, "publisher:pw:with:colons\n")),
            ..config(&etcd.url())
        };
        let client = EtcdClient::connect(&good).expect("connect with the right password");
        let lease = client.grant(Duration::from_secs(5)).expect("grant");
        client
            .create(b"/every-channel/k", b"v", lease.id)
            .expect("the role allows the prefix");
        let outside = client
            .create(b"/elsewhere", b"v", lease.id)
            .expect_err("no permission");
        assert_eq!(status_of(outside), ExitStatus::NoPermission);
        let bad = EtcdConnect {
            user_file: Some(user_file(&etcd, "publisher:wrong\n")),
            ..config(&etcd.url())
        };
        let error = EtcdClient::connect(&bad).expect_err("wrong password");
        assert!(matches!(error, EtcdError::AuthRejected { .. }), "{error}");
        assert_eq!(status_of(error), ExitStatus::NoPermission);
    }

    #[test]
    fn an_expired_token_is_renewed_once_and_the_call_succeeds() {
        let mut etcd = EtcdServer::start_with_args(&["--auth-token-ttl=1"]);
        etcd.enable_auth("publisher", "pw");
        let client = EtcdClient::connect(&EtcdConnect {
            user_file: Some(user_file(&etcd, "publisher:pw")),
            ..config(&etcd.url())
        })
        .expect("connect");
        let before = client.token_slot().as_ref().map(|t| t.0.clone());
        std::thread::sleep(Duration::from_secs(3));
        let lease = client
            .grant(Duration::from_secs(60))
            .expect("grant after expiry");
        let after = client.token_slot().as_ref().map(|t| t.0.clone());
        assert_ne!(before, after, "the token was not renewed");
        let lease_id = lease.id;
        std::thread::sleep(Duration::from_secs(3));
        // A watch made with an expired token is renewed too.
        let outcome = client
            .wait_for_delete(
                b"/every-channel/none",
                false,
                1,
                Some(Instant::now() + Duration::from_millis(500)),
            )
            .expect("watch after expiry");
        assert_eq!(outcome, WatchOutcome::TimedOut);
        std::thread::sleep(Duration::from_secs(3));
        // And a keepalive (etcd 3.4 does not check its token; a stream
        // endpoint, whose errors have their own form).
        assert!(
            client
                .keep_alive(lease_id)
                .expect("keepalive after expiry")
                .ttl
                .is_some()
        );
        client.revoke(lease_id).expect("revoke");
    }

    #[test]
    fn user_files_are_one_user_password_line_and_bad_ones_are_64_or_66() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("user");
        for good in ["u:p", "u:p\n", "u:p\r\n", "u:p:q"] {
            fs::write(&path, good).expect("write");
            assert!(read_user_file(&path).is_ok(), "{good:?}");
        }
        for bad in ["", "u", ":p", "u:", "u:p\nv:q", "u:p\n\n", "u:p\rx"] {
            fs::write(&path, bad).expect("write");
            let error = read_user_file(&path)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(status_of(error), ExitStatus::BadArgument, "{bad:?}");
        }
        let missing = read_user_file(&dir.path().join("missing")).expect_err("missing");
        assert_eq!(status_of(missing), ExitStatus::NoInput);
    }

    #[test]
    fn endpoints_with_userinfo_a_path_or_another_scheme_are_refused_without_the_password() {
        for bad in [
            "http://user:S3CR3T@127.0.0.1:2379",
            "http://127.0.0.1:2379/v3",
            "http://127.0.0.1:2379/?x=1",
            "unix://127.0.0.1:2379",
            "grpc://127.0.0.1:2379",
        ] {
            let error = EtcdClient::connect(&config(bad)).expect_err(bad);
            let text = error.to_string();
            assert!(
                !text.contains("S3CR3T") && !text.contains("user:"),
                "{text}"
            );
            assert_eq!(status_of(error), ExitStatus::BadArgument, "{bad}");
        }
        assert!(
            ensure_endpoints(&[url::Url::parse("https://etcd.example:2379/").unwrap()]).is_ok()
        );
    }

    #[test]
    fn neither_the_password_nor_the_token_appears_in_any_error_or_debug_text() {
        const PASSWORD: &str = "pw-S3CR3T-value";
        let mut etcd = EtcdServer::start();
        etcd.enable_auth("publisher", PASSWORD);
        let client = EtcdClient::connect(&EtcdConnect {
            user_file: Some(user_file(&etcd, &format!("publisher:{PASSWORD}\n"))),
            ..config(&etcd.url())
        })
        .expect("connect");
        let token = client.token_slot().as_ref().expect("a token").0.clone();
        // A real lease: lease 0 is refused before any request is sent.
        let lease = client.grant(Duration::from_secs(30)).expect("grant").id;
        let mut texts = vec![format!("{client:?}")];
        let mut errors = vec![
            EtcdClient::connect(&EtcdConnect {
                user_file: Some(user_file(&etcd, &format!("publisher:{PASSWORD}x\n"))),
                ..config(&etcd.url())
            })
            .expect_err("wrong password"),
            read_user_file(&user_file(&etcd, &format!("publisher:{PASSWORD}\nsecond")))
                .expect_err("two lines"),
            read_user_file(&user_file(&etcd, &format!("{PASSWORD}\n"))).expect_err("no colon"),
            client
                .create(b"/outside", b"v", lease)
                .expect_err("no permission"),
        ];
        etcd.freeze();
        errors.push(client.grant(Duration::from_secs(5)).expect_err("frozen"));
        etcd.thaw();
        for error in errors {
            let error = Error::from(error);
            texts.push(format!("{error:?}"));
            texts.push(crate::error_line(&error));
        }
        for text in &texts {
            assert!(!text.contains(PASSWORD), "password in {text}");
            assert!(!text.contains(&token), "token in {text}");
        }
    }
}
