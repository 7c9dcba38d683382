//! `bpfproxy dump --check`: the desired state computed again as the agent
//! computes it (same source, same flags, the ids the maps hold, the same
//! fitting into the maps' room) and compared with the pinned maps. Each
//! difference is one write the agent's next full resync would make to
//! repair it (`bpfproxy_drift_repairs_total` counts those).
use std::{net::Ipv4Addr, path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use proxy_common::{maps as names, node_flags, BackendValue, ServiceKey, ServiceValue};
use serde::Serialize;
use tokio::sync::watch;

use crate::{
    agent::{model_config, node_name, source_task},
    cli::ServicesArgs,
    datapath::{plan, Ids, MapState, Op},
    loader::pin_dir,
    maps::{pinned::PinnedMaps, LbMaps, MapsError},
    metrics::Metrics,
    model::{ModelConfig, Protocol},
    node_addrs::{self, NodeAddrEntries, NodeAddrOp},
    source::Snapshot,
    sync::{desired_maps, node_zone},
};

/// One entry the maps hold differently from what the agent would write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub map: &'static str,
    pub entry: String,
    /// What the maps hold (`nothing` when the entry is missing).
    pub maps: String,
    /// What the agent would write (`nothing` when it would delete it).
    pub desired: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: maps hold {}, desired {}",
            self.map, self.entry, self.maps, self.desired
        )
    }
}

/// The differences between `maps` and what `snap` asks for under
/// `config`, and what the node's interfaces ask of the node-address map
/// (`node_addrs`, the entries the agent's node watch would publish).
pub fn check(
    snap: &Snapshot,
    mut config: ModelConfig,
    node_addrs: &NodeAddrEntries,
    maps: &impl LbMaps,
) -> Result<Vec<Drift>, MapsError> {
    if let Some(node) = snap.node.as_deref() {
        config.node.zone = node_zone(node);
    }
    let actual = maps.read_all()?;
    let mut ids = Ids::restore(&actual);
    let desired = desired_maps(snap, &config, &mut ids, &actual, &maps.capacity());
    let want = &desired.fitted.state;
    let mut out: Vec<Drift> = plan(want, &actual)
        .iter()
        .map(|op| describe(op, want, &actual))
        .collect();
    let actual_addrs = maps.read_node_addrs()?;
    out.extend(
        node_addrs::plan(node_addrs, &actual_addrs)
            .iter()
            .map(|op| describe_node_addr(op, node_addrs, &actual_addrs)),
    );
    Ok(out)
}

/// The node-address map entries this node's interfaces ask for now, as
/// the agent's node watch computes them from `--nodeport-addresses`.
fn node_addr_entries(args: &ServicesArgs) -> anyhow::Result<NodeAddrEntries> {
    let ifaddrs = node_addrs::interface_addrs().context("listing the node's addresses")?;
    let addrs: Vec<Ipv4Addr> = ifaddrs.iter().map(|i| i.addr).collect();
    let selected = node_addrs::select(&addrs, &args.nodeport_addresses);
    Ok(node_addrs::entries(&selected))
}

fn describe_node_addr(op: &NodeAddrOp, want: &NodeAddrEntries, actual: &NodeAddrEntries) -> Drift {
    let key = match op {
        NodeAddrOp::Upsert(k, _) | NodeAddrOp::Delete(k) => *k,
    };
    let value = |entries: &NodeAddrEntries| {
        entries.get(&key).map_or_else(
            || "nothing".to_string(),
            |v| {
                let nodeport = if v.flags & node_flags::NODEPORT != 0 {
                    ", NodePorts"
                } else {
                    ""
                };
                format!(
                    "SNAT to {}{nodeport}",
                    Ipv4Addr::from(u32::from_be(v.snat_addr_be))
                )
            },
        )
    };
    Drift {
        map: names::NODE_ADDRS,
        entry: Ipv4Addr::from(u32::from_be(key)).to_string(),
        maps: value(actual),
        desired: value(want),
    }
}

/// `check` against the maps pinned under `bpffs`, with the objects the
/// source in `args` holds (its first complete view, within `wait`).
pub fn check_pinned(
    bpffs: &Path,
    args: &ServicesArgs,
    wait: Duration,
) -> anyhow::Result<Vec<Drift>> {
    let node = node_name(args);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let snap = rt.block_on(first_snapshot(args, node.clone(), wait))?;
    let maps = PinnedMaps::open(&pin_dir(bpffs))
        .with_context(|| format!("opening the maps pinned under {}", bpffs.display()))?;
    let node_addrs = node_addr_entries(args)?;
    Ok(check(&snap, model_config(args, &node), &node_addrs, &maps)?)
}

/// The first complete view of the source, as the agent's sync gets it.
async fn first_snapshot(
    args: &ServicesArgs,
    node: String,
    wait: Duration,
) -> anyhow::Result<Snapshot> {
    let (tx, mut rx) = watch::channel(None);
    let source = source_task(args, node, Arc::new(Metrics::new()), tx).await?;
    let task = tokio::spawn(source);
    let first = tokio::time::timeout(wait, async {
        loop {
            if let Some(snap) = rx.borrow_and_update().clone() {
                return Ok(snap);
            }
            if rx.changed().await.is_err() {
                return Err(anyhow::anyhow!("the source ended before a complete view"));
            }
        }
    })
    .await;
    task.abort();
    first.with_context(|| {
        format!("no complete view of Services and EndpointSlices within {wait:?}")
    })?
}

fn describe(op: &Op, want: &MapState, actual: &MapState) -> Drift {
    let nothing = || "nothing".to_string();
    let (entry, maps, desired) = match op {
        Op::UpsertBackend(id, v) => (
            format!("backend {id}"),
            actual.backends.get(id).map_or_else(nothing, backend),
            backend(v),
        ),
        Op::DeleteBackend(id) => (
            format!("backend {id}"),
            actual.backends.get(id).map_or_else(nothing, backend),
            nothing(),
        ),
        Op::UpsertService(k, v) => (
            frontend_slot(k),
            service(actual.services.get(k), k, actual),
            service(Some(v), k, want),
        ),
        Op::DeleteService(k) => (
            frontend_slot(k),
            service(actual.services.get(k), k, actual),
            nothing(),
        ),
        Op::UpsertRevNat(id, v) => (
            format!("revNAT {id}"),
            actual
                .rev_nat
                .get(id)
                .map_or_else(nothing, |r| format!("{}:{}", r.ip(), r.port())),
            format!("{}:{}", v.ip(), v.port()),
        ),
        Op::DeleteRevNat(id) => (format!("revNAT {id}"), "an entry".into(), nothing()),
        Op::UpsertName(id, n) => (
            format!("name {id}"),
            actual.names.get(id).cloned().unwrap_or_else(nothing),
            n.clone(),
        ),
        Op::DeleteName(id) => (
            format!("name {id}"),
            actual.names.get(id).cloned().unwrap_or_else(nothing),
            nothing(),
        ),
        Op::UpsertSourceRange(r) => (r.to_string(), nothing(), "allowed".into()),
        Op::DeleteSourceRange(r) => (r.to_string(), "allowed".into(), nothing()),
    };
    Drift {
        map: op.map_name(),
        entry,
        maps,
        desired,
    }
}

fn proto(n: u8) -> String {
    Protocol::from_number(n).map_or_else(|| format!("proto {n}"), |p| p.to_string())
}

fn backend(b: &BackendValue) -> String {
    format!("{}:{}/{}", b.ip(), b.port(), proto(b.proto))
}

fn frontend_slot(k: &ServiceKey) -> String {
    let fe = format!("{}:{}/{}", k.ip(), k.port(), proto(k.proto));
    match k.slot {
        0 => fe,
        n => format!("{fe} slot {n}"),
    }
}

/// A frontend's entry as a reader wants it: a master's backend count and
/// Service name, a slot's backend address.
fn service(v: Option<&ServiceValue>, k: &ServiceKey, state: &MapState) -> String {
    let Some(v) = v else {
        return "nothing".into();
    };
    if k.slot == 0 {
        let name = state
            .names
            .get(&u32::from(v.rev_nat_id))
            .map_or("?", String::as_str);
        return format!("{name}: {} backends, flags {:#x}", v.count, v.flags);
    }
    match state.backends.get(&v.backend_id) {
        Some(b) => format!("backend {} ({})", v.backend_id, backend(b)),
        None => format!("backend {} (unknown)", v.backend_id),
    }
}
