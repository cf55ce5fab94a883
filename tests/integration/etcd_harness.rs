//! The etcd test harness itself (`crates/ec-test-support/src/etcd_server.rs`): a member
//! starts healthy, a cluster elects a leader and survives a frozen member,
//! TLS refuses a client without a certificate, auth refuses a wrong password.

use crate::etcd_server::{EtcdCluster, EtcdServer, ROOT_PASSWORD};

#[test]
fn a_single_member_stores_and_returns_a_key() {
    let etcd = EtcdServer::start();
    assert!(
        etcd.url().starts_with("http://127.0.0.1:"),
        "{}",
        etcd.url()
    );
    let put = etcd.etcdctl(&["put", "/every-channel/k", "v"]);
    assert!(put.status.success(), "{put:?}");
    let get = etcd.etcdctl(&["get", "--print-value-only", "/every-channel/k"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "v");
}

#[test]
fn a_frozen_single_member_answers_nothing_until_thawed() {
    let mut etcd = EtcdServer::start();
    etcd.freeze();
    let frozen = etcd.etcdctl(&["--command-timeout=1s", "get", "k"]);
    assert!(
        !frozen.status.success(),
        "a frozen etcd answered: {frozen:?}"
    );
    etcd.thaw();
    let thawed = etcd.etcdctl(&["get", "k"]);
    assert!(thawed.status.success(), "{thawed:?}");
}

#[test]
fn a_three_member_cluster_elects_a_new_leader_when_its_leader_stops() {
    let mut cluster = EtcdCluster::start(3);
    assert_eq!(cluster.endpoints().split(',').count(), 3);
    let first = cluster.leader();
    cluster.stop_member(first);
    let second = cluster.leader();
    assert_ne!(first, second);
    let put = cluster.etcdctl(&["put", "k", "v"]);
    assert!(put.status.success(), "{put:?}");
    cluster.start_member(first);
}

#[test]
fn tls_with_auth_accepts_the_client_certificate_and_password_and_refuses_others() {
    let mut etcd = EtcdServer::start_tls();
    assert!(etcd.url().starts_with("https://"), "{}", etcd.url());
    etcd.enable_auth("publisher", "pub-pw");
    let as_user = |password: &str| {
        etcd.etcdctl(&[
            &format!("--user=publisher:{password}"),
            "put",
            "/every-channel/k",
            "v",
        ])
    };
    assert!(as_user("pub-pw").status.success());
    assert!(!as_user("wrong").status.success());
    let tls = etcd.tls().expect("TLS files");
    let stranger = std::process::Command::new(crate::etcd_server::ETCDCTL)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.url()))
        .arg("--dial-timeout=2s")
        .arg("--cacert")
        .arg(&tls.ca)
        .arg("--cert")
        .arg(&tls.other_cert)
        .arg("--key")
        .arg(&tls.other_key)
        .arg(format!("--user=root:{ROOT_PASSWORD}"))
        .args(["get", "k"])
        .output()
        .expect("run etcdctl");
    assert!(
        !stranger.status.success(),
        "a client certificate from another CA was accepted"
    );
}
