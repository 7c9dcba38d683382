//! A multi-node sandbox: "nodes", "pods" and an "external client", each a
//! network namespace, wired like a small cluster and reachable only from
//! inside the sandbox.
//!
//! ```text
//!  client 192.168.50.100 ──┐
//!                          br0 (fabric ns, no uplink)
//!  node-i 192.168.50.(10+i)┘   each node: cbr0 10.244.i.1/24, forwarding on,
//!     └─ pod-i-j 10.244.i.(j+1)  routes to the other nodes' pod /24s
//! ```
//!
//! How the nodes reach each other's pods is the cluster's network shape
//! ([`NetworkShape`]): routed over the same NIC (host-gw, the picture
//! above), a flannel VXLAN overlay (`flannel.1`, `cni0`, MTU 1450), a
//! second NIC on a second bridge (`br1`, 192.168.60.0/24), or a
//! WireGuard-shaped L3 tunnel (`flannel-wg`, MTU 1420).
//!
//! Nothing has a default route: the client knows only the node subnet, pods
//! know the pod /16 and the node subnet through their node. Every node has
//! its own cgroup (its host processes and its pods' processes run in it),
//! its own bpffs and, when a test starts one, its own agent. A probe server
//! answers on every node address (a host-network backend such as the API
//! server) and on every pod address.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;

use crate::agent::AgentConfig;
use crate::bpffs::PrivateBpffs;
use crate::cgroup::TestCgroup;
use crate::manifest::{Endpoint, ServiceSpec};
use crate::netns::Netns;
use crate::probe_server::ProbeServer;
use crate::process;
use crate::reports::{ConnectTimeReport, TcpReport, UdpConnectedReport};
use crate::sandbox::HoldConn;
pub use crate::shapes::{node_ip, NetworkShape};
use crate::veth::VethPair;

/// Address of the external client on the node subnet.
pub const CLIENT_IP: &str = "192.168.50.100";

/// Address of pod `j` on node `i` (both 1-based).
pub fn pod_ip(i: usize, j: usize) -> String {
    format!("10.244.{i}.{}", j + 1)
}

/// What pod `j` on node `i` answers.
pub fn pod_name(i: usize, j: usize) -> String {
    format!("node{i}-pod{j}")
}

/// What node `i`'s host-network server answers.
pub fn node_name(i: usize) -> String {
    format!("node{i}")
}

/// Node `i`'s Kubernetes name: its agent's `--node-name` and the
/// `nodeName` of its endpoints.
pub fn k8s_node_name(i: usize) -> String {
    format!("node-{i}")
}

/// Pod `j` of node `i` as a ready endpoint with its `nodeName`, so the
/// agents know which endpoints are local.
pub fn pod_endpoint(i: usize, j: usize) -> Endpoint {
    Endpoint::ready(&pod_ip(i, j)).on_node(&k8s_node_name(i))
}

/// A NodePort Service (`name` as for [`crate::manifest::service`]) with
/// ports `(port_name, port, target_port, protocol, node_port)` and
/// `externalTrafficPolicy: etp` ("Cluster" or "Local").
pub fn node_port_service(
    name: &str,
    cluster_ip: &str,
    ports: &[(&str, u16, u16, &str, u16)],
    etp: &str,
) -> String {
    let mut s = ServiceSpec::cluster_ip(name, cluster_ip);
    s.type_ = "NodePort".to_string();
    s.external_traffic_policy = Some(etp.to_string());
    for (pname, port, target, proto, node_port) in ports {
        s = s.port(pname, *port, *target, proto);
        if let Some(p) = s.ports.last_mut() {
            p.node_port = Some(*node_port);
        }
    }
    s.to_yaml()
}

/// What one backend answered to `--echo-peer` connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerAnswers {
    /// Connections it answered.
    pub count: u64,
    /// The client addresses it saw.
    pub peers: BTreeSet<String>,
}

/// A report's `<name> <peer>` answers (servers with `echo_peer`) grouped by
/// backend name.
pub fn answers_by_backend(r: &TcpReport) -> Result<BTreeMap<String, PeerAnswers>> {
    let mut out: BTreeMap<String, PeerAnswers> = BTreeMap::new();
    for (answer, n) in &r.by_backend {
        let (name, peer) = split_echo_peer(answer)?;
        let a = out.entry(name.to_string()).or_default();
        a.count += n;
        a.peers.insert(peer.to_string());
    }
    Ok(out)
}

/// `(name, peer)` of one `--echo-peer` answer.
pub fn split_echo_peer(answer: &str) -> Result<(&str, &str)> {
    answer
        .trim()
        .split_once(' ')
        .with_context(|| format!("answer {answer:?} is not `<name> <peer>` (is echo_peer on?)"))
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub nodes: usize,
    pub pods_per_node: usize,
    pub tcp_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
    /// The `probe` binary; None: [`crate::paths::probe_bin`].
    pub probe_bin: Option<PathBuf>,
    /// Servers answer TCP with `<name> <client-ip>` (`probe serve
    /// --echo-peer`): what address a backend sees as the client.
    pub echo_peer: bool,
    /// How the nodes reach each other's pods.
    pub shape: NetworkShape,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nodes: 2,
            pods_per_node: 1,
            tcp_ports: vec![8080],
            udp_ports: vec![5353],
            probe_bin: None,
            echo_peer: false,
            shape: NetworkShape::default(),
        }
    }
}

/// One node: its namespace, cgroup, bpffs, and fabric-facing device.
#[derive(Debug)]
pub struct Node {
    pub ns: Netns,
    pub cgroup: TestCgroup,
    pub bpffs: PrivateBpffs,
    /// The node's client-facing device (what `--devices` would name).
    pub device: String,
    /// The device it forwards to other nodes' pods by, when that is not
    /// `device`: `flannel.1`, `flannel-wg`, or the cluster NIC of the
    /// two-NIC shape.
    pub cluster_device: Option<String>,
    /// The L3 tunnel's relay (its device lives as long as it runs).
    _relay: Option<crate::process::ChildGuard>,
    _fabric: VethPair,
    _cluster_nic: Option<VethPair>,
}

/// One pod: its namespace behind its node's bridge.
#[derive(Debug)]
pub struct Pod {
    pub ns: Netns,
    pub node: usize,
    _veth: VethPair,
}

/// See the module documentation. Fields drop in declaration order: servers
/// first, namespaces last.
#[derive(Debug)]
pub struct ClusterSandbox {
    servers: Vec<ProbeServer>,
    pods: Vec<Vec<Pod>>,
    nodes: Vec<Node>,
    client: Netns,
    _client_link: VethPair,
    fabric: Netns,
    work: tempfile::TempDir,
    cfg: ClusterConfig,
    probe: PathBuf,
}

/// Sandboxes made by this process so far (names their namespaces).
static SANDBOXES: AtomicUsize = AtomicUsize::new(0);

impl ClusterSandbox {
    pub fn new(cfg: ClusterConfig) -> Result<Self> {
        crate::privilege::require_root()?;
        if cfg.nodes == 0 || cfg.nodes > 9 || cfg.pods_per_node > 50 {
            bail!("a cluster sandbox has 1..=9 nodes and at most 50 pods per node");
        }
        let probe = match &cfg.probe_bin {
            Some(p) => p.clone(),
            None => crate::paths::probe_bin()?,
        };
        let work = tempfile::Builder::new()
            .prefix(&format!("bpfpt-{}-cluster-", std::process::id()))
            .tempdir()?;
        std::fs::create_dir(work.path().join("source"))?;
        // Names unique per sandbox, not only per process: the kernel
        // matrix runs a tier's tests as threads of one libtest process.
        let tag = format!("c{}", SANDBOXES.fetch_add(1, Ordering::Relaxed));
        let fabric = Netns::new(&format!("{tag}fab"))?;
        for br in ["br0", "br1"] {
            fabric.ip(&["link", "add", br, "type", "bridge"])?;
            fabric.ip(&["link", "set", br, "up"])?;
        }
        let client = Netns::new(&format!("{tag}ext"))?;
        let client_link = VethPair::new(&client, &[&format!("{CLIENT_IP}/24")], &fabric, &[])?;
        fabric.ip(&["link", "set", client_link.b(), "master", "br0"])?;

        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        for i in 1..=cfg.nodes {
            let (node, node_pods) = build_node(&fabric, &cfg, &tag, i)?;
            nodes.push(node);
            pods.push(node_pods);
        }
        // Each node routes the other nodes' pod subnets to them.
        for (a, node) in nodes.iter().enumerate() {
            for b in (1..=cfg.nodes).filter(|b| *b != a + 1) {
                cfg.shape.route_to_peer(&node.ns, b)?;
            }
        }
        let mut sb = ClusterSandbox {
            servers: Vec::new(),
            pods,
            nodes,
            client,
            _client_link: client_link,
            fabric,
            work,
            cfg,
            probe,
        };
        sb.start_servers()?;
        Ok(sb)
    }

    fn start_servers(&mut self) -> Result<()> {
        let (tcp, udp) = (self.cfg.tcp_ports.clone(), self.cfg.udp_ports.clone());
        let extra: &[&str] = if self.cfg.echo_peer {
            &["--echo-peer"]
        } else {
            &[]
        };
        for (n, node) in self.nodes.iter().enumerate() {
            let i = n + 1;
            let name = node_name(i);
            let log = self.work.path().join(format!("{name}.log"));
            self.servers.push(ProbeServer::start_with(
                &node.ns,
                &self.probe,
                &name,
                &node_ip(i),
                &tcp,
                &udp,
                &log,
                extra,
            )?);
            for (k, pod) in self.pods[n].iter().enumerate() {
                let name = pod_name(i, k + 1);
                let log = self.work.path().join(format!("{name}.log"));
                self.servers.push(ProbeServer::start_with(
                    &pod.ns,
                    &self.probe,
                    &name,
                    &pod_ip(i, k + 1),
                    &tcp,
                    &udp,
                    &log,
                    extra,
                )?);
            }
        }
        Ok(())
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i - 1]
    }

    pub fn pod(&self, i: usize, j: usize) -> &Pod {
        &self.pods[i - 1][j - 1]
    }

    pub fn client_ns(&self) -> &Netns {
        &self.client
    }

    pub fn fabric_ns(&self) -> &Netns {
        &self.fabric
    }

    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// The manifest directory every node's agent reads (the "cluster").
    pub fn source_dir(&self) -> PathBuf {
        self.work.path().join("source")
    }

    /// Writes a manifest into [`ClusterSandbox::source_dir`] atomically.
    pub fn write_manifest(&self, name: &str, yaml: &str) -> Result<()> {
        crate::manifest::write_file(&self.source_dir(), name, yaml)
    }

    /// How to run node `i`'s agent: inside the node's namespace, on its
    /// cgroup and bpffs, named `node-<i>`, reading the sandbox's manifest
    /// directory unless the config is switched to an API server.
    pub fn agent_config(&self, i: usize) -> Result<AgentConfig> {
        let node = self.node(i);
        let mut c = AgentConfig::new(&self.source_dir(), node.cgroup.path(), node.bpffs.path())?;
        c.netns = Some(node.ns.path().to_path_buf());
        c.node_name = Some(k8s_node_name(i));
        let logs = self.work.path().join(format!("agent-node{i}"));
        std::fs::create_dir_all(&logs)?;
        c.log_dir = Some(logs);
        Ok(c)
    }

    /// The address node `i` forwards to other nodes' pods with: what a
    /// backend sees as the client of a SNATed connection through node `i`.
    pub fn snat_ip(&self, i: usize) -> String {
        self.cfg.shape.snat_ip(i)
    }

    /// The sandbox's configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// Every namespace of the sandbox: the external client, the fabric,
    /// then each node followed by its pods.
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut v = vec![&self.client, &self.fabric];
        for (node, pods) in self.nodes.iter().zip(&self.pods) {
            v.push(&node.ns);
            v.extend(pods.iter().map(|p| &p.ns));
        }
        v
    }

    /// [`ClusterSandbox::agent_config`] with the TC programs on the node's
    /// fabric device (`--devices`), so the agent serves NodePorts to
    /// clients outside the node.
    pub fn agent_config_with_tc(&self, i: usize) -> Result<AgentConfig> {
        let mut c = self.agent_config(i)?;
        c.extra_args
            .extend(["--devices".to_string(), self.node(i).device.clone()]);
        Ok(c)
    }

    /// `probe tcp --to TO --count N` from the external client: `count`
    /// fresh connections.
    pub fn client_tcp(&self, to: &str, count: u64, timeout: Duration) -> Result<TcpReport> {
        self.probe(
            self.client_command(&self.probe)?,
            &["tcp", "--to", to, "--count", &count.to_string()],
            timeout,
        )
    }

    /// [`ClusterSandbox::client_tcp`] where each connection gives up after
    /// `conn_timeout_ms`, so a broken path is counted (`failed`) instead of
    /// outlasting the whole probe.
    pub fn client_tcp_counted(
        &self,
        to: &str,
        count: u64,
        conn_timeout_ms: u64,
    ) -> Result<TcpReport> {
        let whole = Duration::from_millis(conn_timeout_ms * count) + process::HELPER_TIMEOUT;
        self.probe(
            self.client_command(&self.probe)?,
            &[
                "tcp",
                "--to",
                to,
                "--count",
                &count.to_string(),
                "--timeout-ms",
                &conn_timeout_ms.to_string(),
            ],
            whole,
        )
    }

    /// `probe tcp-connect-time` from the external client: one connect()
    /// that gives up after `timeout_ms`.
    pub fn client_connect(&self, to: &str, timeout_ms: u64) -> Result<ConnectTimeReport> {
        self.client_once("tcp-connect-time", to, timeout_ms)
    }

    /// `probe udp-connected` from the external client: one exchange on a
    /// connected UDP socket, whose recv() gives up after `timeout_ms` (or
    /// fails with ECONNREFUSED on an ICMP port unreachable).
    pub fn client_udp_connected(&self, to: &str, timeout_ms: u64) -> Result<UdpConnectedReport> {
        self.client_once("udp-connected", to, timeout_ms)
    }

    fn client_once<T: DeserializeOwned>(&self, what: &str, to: &str, timeout_ms: u64) -> Result<T> {
        self.probe(
            self.client_command(&self.probe)?,
            &[what, "--to", to, "--timeout-ms", &timeout_ms.to_string()],
            Duration::from_millis(timeout_ms) + process::HELPER_TIMEOUT,
        )
    }

    /// A command in the external client's namespace (not in any node's
    /// cgroup: it is outside the cluster).
    pub fn client_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        self.client.command(program)
    }

    /// A command as a host-network process of node `i`.
    pub fn node_command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let node = self.node(i);
        node.ns.command_in_cgroup(program, &node.cgroup)
    }

    /// A command inside pod `j` of node `i` (in the node's cgroup, so the
    /// node's socket programs see it).
    pub fn pod_command(
        &self,
        i: usize,
        j: usize,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Result<Command> {
        self.pod(i, j)
            .ns
            .command_in_cgroup(program, &self.node(i).cgroup)
    }

    /// Runs `probe ARGS` through `cmd` (from one of the `*_command`
    /// constructors) and parses its JSON report.
    pub fn probe<T: DeserializeOwned>(
        &self,
        mut cmd: Command,
        args: &[&str],
        timeout: Duration,
    ) -> Result<T> {
        cmd.args(args);
        let shown = process::describe(&cmd);
        let out = process::run_with_timeout(&mut cmd, timeout)?;
        serde_json::from_str(&out)
            .with_context(|| format!("parsing the output of `{shown}`: {out}"))
    }

    /// One long-lived TCP connection from the external client to `to`
    /// (`IP:PORT`), see [`HoldConn`].
    pub fn client_hold(&self, to: &str) -> Result<HoldConn> {
        HoldConn::spawn(self.client_command(&self.probe)?, to)
    }

    /// The probe binary, for `*_command(sb.probe_bin())`.
    pub fn probe_bin(&self) -> &Path {
        &self.probe
    }
}

/// Node `i` with its fabric link(s), overlay, pod bridge and pods.
fn build_node(
    fabric: &Netns,
    cfg: &ClusterConfig,
    tag: &str,
    i: usize,
) -> Result<(Node, Vec<Pod>)> {
    let ns = Netns::new(&format!("{tag}n{i}"))?;
    let link = VethPair::new(&ns, &[&format!("{}/24", node_ip(i))], fabric, &[])?;
    fabric.ip(&["link", "set", link.b(), "master", "br0"])?;
    let cluster_nic = match cfg.shape {
        NetworkShape::TwoNic => {
            let addr = format!("{}/24", crate::shapes::cluster_nic_ip(i));
            let nic = VethPair::new(&ns, &[&addr], fabric, &[])?;
            fabric.ip(&["link", "set", nic.b(), "master", "br1"])?;
            Some(nic)
        }
        _ => None,
    };
    let relay = cfg.shape.wire_node(&ns, i, link.a(), cfg.nodes)?;
    // A router for its pods.
    let mut sysctl = ns.command("sysctl")?;
    sysctl.args(["-qw", "net.ipv4.ip_forward=1"]);
    process::run_with_timeout(&mut sysctl, process::HELPER_TIMEOUT)
        .context("enabling forwarding")?;
    let bridge = cfg.shape.pod_bridge();
    ns.ip(&["link", "add", bridge, "type", "bridge"])?;
    ns.ip(&["addr", "add", &format!("10.244.{i}.1/24"), "dev", bridge])?;
    ns.ip(&["link", "set", bridge, "up"])?;
    let mut pods = Vec::new();
    for j in 1..=cfg.pods_per_node {
        pods.push(build_pod(&ns, cfg.shape, tag, i, j)?);
    }
    let cluster_device = match &cluster_nic {
        Some(nic) => Some(nic.a().to_string()),
        None => cfg.shape.overlay_device().map(String::from),
    };
    let node = Node {
        device: link.a().to_string(),
        cluster_device,
        cgroup: TestCgroup::new(&format!("{tag}n{i}"))?,
        bpffs: PrivateBpffs::new(&format!("{tag}n{i}"))?,
        ns,
        _relay: relay,
        _fabric: link,
        _cluster_nic: cluster_nic,
    };
    Ok((node, pods))
}

/// Pod `j` of node `i` behind the node's pod bridge, with the shape's MTU.
fn build_pod(node: &Netns, shape: NetworkShape, tag: &str, i: usize, j: usize) -> Result<Pod> {
    let pns = Netns::new(&format!("{tag}n{i}p{j}"))?;
    let veth = VethPair::new(&pns, &[&format!("{}/24", pod_ip(i, j))], node, &[])?;
    node.ip(&["link", "set", veth.b(), "master", shape.pod_bridge()])?;
    let mtu = shape.pod_mtu().to_string();
    pns.ip(&["link", "set", veth.a(), "mtu", &mtu])?;
    node.ip(&["link", "set", veth.b(), "mtu", &mtu])?;
    // No default route: the pod /16, the node subnet (and where SNATed
    // connections come from), via the node.
    let gw = format!("10.244.{i}.1");
    pns.ip(&["route", "add", "10.244.0.0/16", "via", &gw])?;
    pns.ip(&["route", "add", "192.168.50.0/24", "via", &gw])?;
    for subnet in shape.extra_pod_routes() {
        pns.ip(&["route", "add", subnet, "via", &gw])?;
    }
    Ok(Pod {
        ns: pns,
        node: i,
        _veth: veth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_port_service_sets_type_node_ports_and_policy() {
        let y = node_port_service(
            "default/web",
            "10.96.0.30",
            &[
                ("http", 80, 8080, "TCP", 30080),
                ("dns", 53, 5353, "UDP", 30053),
            ],
            "Local",
        );
        let v: serde_json::Value = serde_yaml::from_str(&y).unwrap();
        assert_eq!(v["spec"]["type"], "NodePort");
        assert_eq!(v["spec"]["externalTrafficPolicy"], "Local");
        assert_eq!(v["spec"]["ports"][0]["nodePort"], 30080);
        assert_eq!(v["spec"]["ports"][1]["nodePort"], 30053);
        assert_eq!(v["spec"]["ports"][1]["targetPort"], 5353);
    }

    #[test]
    fn pod_endpoints_name_their_node_as_the_agents_do() {
        let e = pod_endpoint(2, 1);
        assert_eq!(e.ip, "10.244.2.2");
        assert_eq!(e.node_name.as_deref(), Some("node-2"));
        assert!(e.ready);
    }

    #[test]
    fn echo_peer_answers_are_grouped_by_backend() {
        let r = TcpReport {
            ok: 6,
            failed: 0,
            by_backend: [
                ("node1-pod1 192.168.50.100".to_string(), 2),
                ("node1-pod1 192.168.50.12".to_string(), 1),
                ("node2-pod1 192.168.50.12".to_string(), 3),
            ]
            .into(),
            errors: vec![],
            failed_at_ms: vec![],
            elapsed_ms: 1.0,
        };
        let a = answers_by_backend(&r).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a["node1-pod1"].count, 3);
        assert_eq!(
            a["node1-pod1"].peers,
            ["192.168.50.100".to_string(), "192.168.50.12".to_string()].into()
        );
        assert_eq!(a["node2-pod1"].count, 3);
    }

    #[test]
    fn answers_without_a_peer_are_an_error() {
        assert!(split_echo_peer("node1-pod1").is_err());
        assert_eq!(
            split_echo_peer("node1-pod1 10.244.3.2\n").unwrap(),
            ("node1-pod1", "10.244.3.2")
        );
    }
}
