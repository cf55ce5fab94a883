//! Cluster mode's part of each subcommand that has one: `run --etcd`
//! ([`cluster_run`]) and `status --etcd` ([`cluster_view`]). The rest of
//! each is the library's.

pub mod cluster_run;
pub mod cluster_view;

/// A cluster holder record's fields (`cluster::record::ClusterRecord`) and
/// what each is meant to hold, for the property tests that feed both
/// commands hostile records: one table, so a field added to the record is
/// added to every such test at once.
#[cfg(test)]
pub(crate) const CLUSTER_RECORD_FIELDS: &[(&str, crate::secret_props::FieldKind)] = {
    use crate::secret_props::FieldKind;
    &[
        ("node", FieldKind::Text),
        ("unit", FieldKind::Text),
        ("pid", FieldKind::Number),
        ("boot_id", FieldKind::Text),
        ("since", FieldKind::Number),
        ("source", FieldKind::Text),
        ("version", FieldKind::Text),
        ("tuners", FieldKind::Number),
        ("stop_grace_ms", FieldKind::Number),
        ("priority", FieldKind::Number),
    ]
};
