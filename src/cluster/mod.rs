//! Cluster mode (`run --etcd`, issue #12, ECP-0134): source locks and tuner
//! slots held on etcd with leases, on top of the local flock.

pub mod fence;
