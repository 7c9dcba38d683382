//! The node-address map has one writer, the sync: it writes what the node
//! watch publishes, only the entries that differ, and its periodic resync
//! repairs an entry someone else changed.
use std::{net::Ipv4Addr, sync::Arc};

use proxy_agent::{
    maps::FakeMaps,
    metrics::Metrics,
    model::ModelConfig,
    node_addrs::{entries, NodeAddrEntries},
    sync::Syncer,
};
use proxy_common::{node_flags, NodeAddrValue};

fn syncer(capacity: u32) -> Syncer<FakeMaps> {
    Syncer::new(
        FakeMaps::new(capacity),
        Arc::new(Metrics::new()),
        ModelConfig::default(),
    )
    .expect("syncer")
}

fn key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

const A: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const B: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 10);

#[test]
fn the_sync_writes_the_published_addresses_and_only_what_changed() {
    let mut s = syncer(16);
    let first = s.sync_node_addrs(&entries(&[A]), false).expect("sync");
    assert_eq!((first.ops, first.failed), (2, 0), "A and the SNAT entry");
    assert_eq!(s.maps().node_addrs, entries(&[A]));
    let same = s.sync_node_addrs(&entries(&[A]), false).expect("sync");
    assert_eq!(same.ops, 0, "nothing changed, nothing written");
    let more = s.sync_node_addrs(&entries(&[A, B]), false).expect("sync");
    assert_eq!(more.ops, 1, "only B is new");
    let less = s.sync_node_addrs(&entries(&[B]), false).expect("sync");
    assert_eq!(less.ops, 2, "A deleted, the SNAT entry now B");
    assert_eq!(s.maps().node_addrs, entries(&[B]));
}

#[test]
fn a_drifted_entry_is_repaired_by_the_full_resync_only() {
    let mut s = syncer(16);
    let want: NodeAddrEntries = entries(&[A, B]);
    s.sync_node_addrs(&want, false).expect("sync");
    // Someone else rewrites B as a plain SNAT entry and deletes A.
    let maps = s.maps_mut();
    maps.node_addrs.insert(key(B), NodeAddrValue::new(B, 0));
    maps.node_addrs.remove(&key(A));
    let trusted = s.sync_node_addrs(&want, false).expect("sync");
    assert_eq!(trusted.ops, 0, "a change-driven sync trusts its last write");
    let repaired = s.sync_node_addrs(&want, true).expect("resync");
    assert_eq!(repaired.ops, 2, "exactly the two drifted entries");
    assert_eq!(s.maps().node_addrs, want);
    assert_eq!(
        s.maps().node_addrs[&key(B)].flags,
        node_flags::NODEPORT,
        "B answers NodePorts again"
    );
}

#[test]
fn a_refused_write_is_counted_and_the_next_sync_reads_the_map_again() {
    // Room for two entries; two addresses need three.
    let metrics = Arc::new(Metrics::new());
    let mut s =
        Syncer::new(FakeMaps::new(2), metrics.clone(), ModelConfig::default()).expect("syncer");
    let want = entries(&[A, B]);
    let refused = s.sync_node_addrs(&want, false).expect("sync");
    assert_eq!((refused.ops, refused.failed), (3, 1), "{refused:?}");
    let text = metrics.encode();
    assert!(
        text.contains("bpfproxy_map_write_errors_total{map=\"bpfp_node_v1\"} 1"),
        "{text}"
    );
    s.maps_mut().capacity = 16;
    let retried = s.sync_node_addrs(&want, false).expect("sync");
    assert_eq!(
        (retried.ops, retried.failed),
        (1, 0),
        "the missing entry alone: the map was read again"
    );
    assert_eq!(s.maps().node_addrs, want);
}
