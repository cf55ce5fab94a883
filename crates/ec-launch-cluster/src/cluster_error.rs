//! Cluster mode's own failures: an etcd call, and claims given up after
//! too many start-overs. The library's error carries them
//! ([`Error::Cluster`]) without knowing the etcd client (ECP-0138); their
//! exit status and hint are decided here, with the same codes and words as
//! before the split.

use ec_launch::error::{ClusterCause, ClusterFailure, Error};
use ec_launch::exit_code::ExitStatus;

use crate::cluster::etcd::EtcdError;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// An etcd call failed (ECP-0134). Its text never holds a password, a
    /// token or a key's bytes.
    #[error("cluster mode")]
    Etcd(#[from] EtcdError),
    /// The claims started over [`crate::cluster::session::MOST_RESTARTS`]
    /// times in a row, each after an answer that left unknown what we hold.
    #[error(
        "gave up taking the cluster keys after {attempts} start-overs in a row, each after an answer that left unknown whether a key was taken"
    )]
    ClaimGaveUp {
        attempts: u32,
        #[source]
        source: EtcdError,
    },
    /// Run without `--etcd`, or for a subcommand cluster mode has no part
    /// in: local launches are `ec-launch`'s (ECP-0138).
    #[error("ec-launch-cluster runs cluster mode only: `run` or `status` with --etcd")]
    NotClusterMode,
}

impl ClusterFailure for ClusterError {
    fn outcome(&self) -> (ExitStatus, &'static str) {
        match self {
            Self::Etcd(cause) | Self::ClaimGaveUp { source: cause, .. } => etcd_outcome(cause),
            Self::NotClusterMode => (
                ExitStatus::BadArgument,
                "run `ec-launch`, which hands `run --etcd` and `status --etcd` to this executable and does everything else itself",
            ),
        }
    }
}

impl From<ClusterError> for Error {
    fn from(error: ClusterError) -> Self {
        Self::Cluster(ClusterCause(Box::new(error)))
    }
}

impl From<EtcdError> for Error {
    fn from(error: EtcdError) -> Self {
        ClusterError::Etcd(error).into()
    }
}

/// The etcd failure inside `error`, if it is one.
pub fn etcd_error(error: &Error) -> Option<&EtcdError> {
    match error {
        Error::Cluster(cause) => match cause.failure().downcast_ref::<ClusterError>()? {
            ClusterError::Etcd(etcd) => Some(etcd),
            ClusterError::ClaimGaveUp { .. } | ClusterError::NotClusterMode => None,
        },
        _ => None,
    }
}

/// The exit status and hint of a failed etcd call: the operator's flags
/// (64, 66), etcd's health (69), or our credentials (77).
fn etcd_outcome(cause: &EtcdError) -> (ExitStatus, &'static str) {
    match cause {
        EtcdError::BadConfig { .. } => (
            ExitStatus::BadArgument,
            "fix the --etcd flag named above (`ec-launch run --help` lists them)",
        ),
        EtcdError::FileUnreadable { .. } => (
            ExitStatus::NoInput,
            "check the path and that this user may read it (under systemd, LoadCredential= puts it in $CREDENTIALS_DIRECTORY)",
        ),
        EtcdError::Unreachable { .. } => (
            ExitStatus::Unavailable,
            "check that etcd runs and that this node reaches the --etcd endpoints (etcdctl endpoint health); under systemd the unit is restarted",
        ),
        EtcdError::Tls { .. } => (
            ExitStatus::Unavailable,
            "check that --etcd-ca is the CA that signed etcd's server certificate and that the certificate names the endpoint's host or IP address",
        ),
        EtcdError::AuthRejected { .. } => (
            ExitStatus::NoPermission,
            "check the user and password in --etcd-user-file, that the user's role may read and write the key prefix, and that etcd trusts the CA of --etcd-cert",
        ),
        EtcdError::Ambiguous { .. } => (
            ExitStatus::Unavailable,
            "etcd stopped answering during the call (overloaded, partitioned or electing a leader): check its health (etcdctl endpoint status); under systemd the unit is restarted",
        ),
        EtcdError::Rejected { .. } => (
            ExitStatus::Unavailable,
            "see etcd's message and check the cluster's health (etcdctl endpoint status); under systemd the unit is restarted",
        ),
        EtcdError::OtherCluster { .. } => (
            ExitStatus::Unavailable,
            "an --etcd endpoint answers for another etcd cluster (restored from a backup as a new cluster, or a wrong endpoint in the list): check that every --etcd URL names a member of one cluster (etcdctl endpoint status); under systemd the unit is restarted and takes its keys in the cluster that answers",
        ),
        EtcdError::Malformed { .. } => (
            ExitStatus::Unavailable,
            "check that --etcd names etcd's client URLs (etcd 3.4 or later, whose JSON gateway answers under /v3)",
        ),
    }
}
