//! The one human/JSON view of map contents, used by `bpfproxy dump`, the
//! golden tests and logs.
use std::fmt;

use serde::Serialize;

use super::{FlowView, MapState};
use crate::model::Protocol;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DumpView {
    pub frontends: Vec<FrontendView>,
    /// Entries per map: after a Service is deleted, nothing may be left.
    pub entries: MapEntries,
    /// Datapath counters summed over CPUs, by reason (empty when unknown).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub counters: std::collections::BTreeMap<String, u64>,
    /// The node addresses NodePorts answer on (empty when unknown).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node_addresses: Vec<String>,
    /// Where the TC programs forward flows to other nodes: per egress
    /// device (by interface index), the source address they get and the
    /// MTU (empty when unknown).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceView>,
    /// Live flows of the TC datapath (empty when unknown or none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flows: Vec<FlowView>,
    /// The confirmed-table filter (None when unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack_filter: Option<CtFilterView>,
}

/// The confirmed-table filter as the programs read it: untrusted from an
/// agent's start until its first conntrack sweep; the fewer cells set, the
/// more new flows skip the confirmed table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CtFilterView {
    pub trusted: bool,
    pub cells_set: usize,
    pub cells: usize,
}

/// One entry of the device map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceView {
    pub ifindex: u32,
    pub snat: String,
    pub mtu: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MapEntries {
    pub services: usize,
    pub backends: usize,
    pub rev_nat: usize,
    pub names: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FrontendView {
    pub service: String,
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    /// `external` (the TC programs serve it from outside the node),
    /// `etp-local` (client address kept, node-local endpoints), `reject`,
    /// and `in-cluster` (the same frontend as pods and node processes reach
    /// it: every endpoint); empty for ClusterIPs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    pub backends: Vec<BackendView>,
    /// loadBalancerSourceRanges: the only sources new connections from
    /// outside may come from (empty: any).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<String>,
    /// Problems a reader of the maps should know about (missing slots...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// The frontend's traffic counters by name, zeros left out (filled by
    /// `bpfproxy dump` from the kernel's counters).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub traffic: std::collections::BTreeMap<String, u64>,
    /// Its revNAT id, for joining the counters.
    #[serde(skip)]
    pub rev_nat_id: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct BackendView {
    pub ip: String,
    pub port: u16,
    /// Runs on this node (the TC programs DNAT to it without SNAT).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
}

impl DumpView {
    pub fn from_state(state: &MapState) -> Self {
        let mut frontends = Vec::new();
        for (key, master) in state.masters() {
            let mut backends = Vec::new();
            let mut problems = Vec::new();
            for slot in 1..=master.count {
                let slot_key = proxy_common::ServiceKey { slot, ..*key };
                match state
                    .services
                    .get(&slot_key)
                    .map(|v| (v.backend_id, state.backends.get(&v.backend_id)))
                {
                    Some((_, Some(be))) => backends.push(BackendView {
                        ip: be.ip().to_string(),
                        port: be.port(),
                        local: be.state & proxy_common::BACKEND_FLAG_LOCAL != 0,
                    }),
                    Some((id, None)) => problems.push(format!("slot {slot}: backend {id} missing")),
                    None => problems.push(format!("slot {slot} missing")),
                }
            }
            backends.sort();
            let protocol = Protocol::from_number(key.proto)
                .map(|p| p.to_string())
                .unwrap_or_else(|| format!("proto-{}", key.proto));
            frontends.push(FrontendView {
                service: state
                    .names
                    .get(&(master.rev_nat_id as u32))
                    .cloned()
                    .unwrap_or_else(|| format!("<revnat {}>", master.rev_nat_id)),
                vip: key.ip().to_string(),
                port: key.port(),
                protocol,
                flags: flag_names(key.scope, master.flags),
                backends,
                source_ranges: source_ranges_of(state, key.scope, master),
                problems,
                traffic: Default::default(),
                rev_nat_id: master.rev_nat_id,
            });
        }
        frontends.sort();
        DumpView {
            frontends,
            entries: MapEntries {
                services: state.services.len(),
                backends: state.backends.len(),
                rev_nat: state.rev_nat.len(),
                names: state.names.len(),
            },
            counters: Default::default(),
            node_addresses: Vec::new(),
            devices: Vec::new(),
            flows: Vec::new(),
            conntrack_filter: None,
        }
    }
}

/// The master's flags by name; `in-cluster` marks the view pods and node
/// processes get of an eTP=Local frontend (scope 1).
/// The source ranges a frontend's master entry enforces (the in-cluster
/// view, which the socket programs serve, has none).
fn source_ranges_of(
    state: &MapState,
    scope: u8,
    master: &proxy_common::ServiceValue,
) -> Vec<String> {
    if scope != 0 || master.flags & proxy_common::svc_flags::SOURCE_RANGES == 0 {
        return Vec::new();
    }
    state
        .source_ranges
        .iter()
        .filter(|r| r.rev_nat_id == u32::from(master.rev_nat_id))
        .map(|r| r.to_string())
        .collect()
}

fn flag_names(scope: u8, flags: u16) -> Vec<String> {
    use proxy_common::svc_flags;
    let in_cluster = (scope == proxy_common::scope::IN_CLUSTER).then_some("in-cluster");
    [
        (svc_flags::EXTERNAL, "external"),
        (svc_flags::ETP_LOCAL, "etp-local"),
        (svc_flags::REJECT, "reject"),
    ]
    .iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| *name)
    .chain(in_cluster)
    .map(str::to_string)
    .collect()
}

/// At most this many flows in the text dump (`--json` has them all): a
/// busy node has thousands, mostly closing ones waiting out their timeout.
const TEXT_FLOWS: usize = 20;

/// A count per state, then the live flows first, most recently active
/// first.
fn write_flows(f: &mut fmt::Formatter<'_>, flows: &[FlowView]) -> fmt::Result {
    let mut by_state: std::collections::BTreeMap<&str, usize> = Default::default();
    for flow in flows {
        let state = if flow.state.is_empty() {
            "udp"
        } else {
            flow.state.as_str()
        };
        *by_state.entry(state).or_default() += 1;
    }
    let counts: Vec<String> = by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
    writeln!(f, "flows: {} ({})", flows.len(), counts.join(", "))?;
    let mut shown: Vec<&FlowView> = flows.iter().collect();
    shown.sort_by_key(|fl| (fl.state == "closing", fl.idle_s));
    for flow in shown.iter().take(TEXT_FLOWS) {
        writeln!(f, "    {flow}")?;
    }
    if flows.len() > TEXT_FLOWS {
        writeln!(
            f,
            "    … {} more (bpfproxy dump --json lists every flow)",
            flows.len() - TEXT_FLOWS
        )?;
    }
    Ok(())
}

impl fmt::Display for DumpView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.frontends.is_empty() {
            writeln!(f, "no frontends")?;
        }
        for fe in &self.frontends {
            let flags = if fe.flags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", fe.flags.join(","))
            };
            writeln!(
                f,
                "{} {}:{}/{}{flags} -> {}",
                fe.service,
                fe.vip,
                fe.port,
                fe.protocol,
                match fe.backends.len() {
                    // What the datapath does with it: external frontends
                    // without the reject flag have endpoints on other
                    // nodes only (a Local policy) and stay silent.
                    0 if fe.flags.iter().any(|f| f == "external")
                        && !fe.flags.iter().any(|f| f == "reject") =>
                    {
                        "no local endpoints (drop)".to_string()
                    }
                    0 => "no endpoints (reject)".to_string(),
                    1 => "1 backend".to_string(),
                    n => format!("{n} backends"),
                }
            )?;
            for be in &fe.backends {
                let local = if be.local { " (local)" } else { "" };
                writeln!(f, "    {}:{}{local}", be.ip, be.port)?;
            }
            if !fe.source_ranges.is_empty() {
                writeln!(f, "    only from: {}", fe.source_ranges.join(", "))?;
            }
            if !fe.traffic.is_empty() {
                let counts: Vec<String> =
                    fe.traffic.iter().map(|(k, v)| format!("{k}={v}")).collect();
                writeln!(f, "    traffic: {}", counts.join(" "))?;
            }
            for p in &fe.problems {
                writeln!(f, "    ! {p}")?;
            }
        }
        let e = &self.entries;
        writeln!(
            f,
            "map entries: services {} backends {} revnat {} names {}",
            e.services, e.backends, e.rev_nat, e.names
        )?;
        if !self.node_addresses.is_empty() {
            writeln!(f, "NodePorts answer on: {}", self.node_addresses.join(", "))?;
        }
        if !self.devices.is_empty() {
            let devices: Vec<String> = self
                .devices
                .iter()
                .map(|d| format!("ifindex {} → {} (mtu {})", d.ifindex, d.snat, d.mtu))
                .collect();
            writeln!(f, "forwarded flows leave with: {}", devices.join(", "))?;
        }
        if let Some(cf) = &self.conntrack_filter {
            match cf.trusted {
                true => writeln!(
                    f,
                    "conntrack filter: {} of {} cells set",
                    cf.cells_set, cf.cells
                )?,
                false => writeln!(f, "conntrack filter: not trusted until the next sweep")?,
            }
        }
        if !self.flows.is_empty() {
            write_flows(f, &self.flows)?;
        }
        if !self.counters.is_empty() {
            writeln!(f, "counters:")?;
            for (name, value) in &self.counters {
                writeln!(f, "    {name} {value}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(port: u16, state: &str, idle_s: u32) -> FlowView {
        FlowView {
            protocol: "TCP".into(),
            client: format!("192.168.50.100:{port}"),
            frontend: "192.168.50.11:30080".into(),
            backend: "10.244.1.2:8080".into(),
            snat: None,
            state: state.into(),
            idle_s,
            assured: true,
        }
    }

    #[test]
    fn the_text_dump_counts_flows_and_shows_live_ones_first() {
        let mut view = DumpView::from_state(&MapState::default());
        view.flows = (0..24).map(|i| flow(40000 + i, "closing", 0)).collect();
        view.flows.push(flow(50000, "established", 9));
        let text = view.to_string();
        let lines: Vec<&str> = text.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("flows:"))
            .expect("a flows line");
        assert_eq!(lines[at], "flows: 25 (24 closing, 1 established)");
        assert!(lines[at + 1].contains(":50000 ") && lines[at + 1].contains("established"));
        assert_eq!(
            lines[at + 1 + TEXT_FLOWS],
            "    … 5 more (bpfproxy dump --json lists every flow)"
        );
    }
}
