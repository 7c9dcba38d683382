//! `cargo xtask demo`: bpfproxy on a sandbox cluster on this machine.
//!
//! The tests' multi-node sandbox ([`ClusterSandbox`]): nodes, pods and an
//! external client, each a network namespace, joined by a bridge without an
//! uplink; no namespace has a default route. One `bpfproxy run` per node,
//! inside the node's namespace, on the node's own cgroup, bpffs and fabric
//! device, all reading one manifest directory (the sandbox's "API server").
//! Then the traffic users try first: curl from a pod to a ClusterIP, DNS-like
//! UDP, curl to every node's NodePort from outside the cluster (also the
//! node without a backend), the spread over the backends and the client
//! address they see. Every result is checked: the demo is also a smoke test
//! and fails (non-zero exit) when the traffic misbehaves.
//!
//! Everything is removed at the end, on error, and on Ctrl-C (the signal
//! only sets a flag; the sandbox's guards clean up as the demo unwinds).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bpfproxy_tests::manifest::{self, Endpoint};
use bpfproxy_tests::multinode::{
    answers_by_backend, k8s_node_name, node_ip, node_port_service, pod_endpoint, pod_ip, pod_name,
    split_echo_peer, ClusterConfig, ClusterSandbox, PeerAnswers, CLIENT_IP,
};
use bpfproxy_tests::{interrupt, netns, process, require_root, Agent, UdpReport, NAME_PREFIX};

use crate::{setup, sh, workspace};

/// `type: NodePort`, `externalTrafficPolicy: Cluster`.
const WEB: &str = "default/web";
const WEB_IP: &str = "10.96.0.20";
const WEB_NODE_PORT: u16 = 30080;
/// The same pods behind `externalTrafficPolicy: Local`.
const WEB_LOCAL: &str = "default/web-local";
const WEB_LOCAL_IP: &str = "10.96.0.21";
const WEB_LOCAL_NODE_PORT: u16 = 30081;
/// UDP on port 53, where kubeadm puts kube-dns.
const DNS: &str = "kube-system/kube-dns";
const DNS_IP: &str = "10.96.0.10";
const DNS_PORT: u16 = 53;
/// Where every server of the sandbox listens (HTTP and UDP).
const SERVER_HTTP_PORT: u16 = 8080;
const SERVER_UDP_PORT: u16 = 5353;

/// How long an agent may take to program every frontend.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for one probe run (hundreds of connections).
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// curl requests from the client pod to the ClusterIP.
const POD_CURLS: usize = 3;
/// Datagrams to the DNS-like Service.
const UDP_QUERIES: u64 = 50;
/// Connections through the eTP=Local NodePort.
const LOCAL_REQUESTS: u64 = 50;
/// connect() timeout where the packet is expected to be dropped.
const DROP_TIMEOUT_MS: u64 = 1000;
/// Upper bound for `--hold`.
const MAX_HOLD_SECS: u64 = 3600;
/// Proxy variables curl would obey; the demo's requests must go direct.
const PROXY_VARS: [&str; 6] = [
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "all_proxy",
];

/// The demo's command-line options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Nodes of the sandbox cluster; the last one runs no backend (like a
    /// control-plane node).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=3))]
    pub nodes: u8,
    /// Backend pods on each of the other nodes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=3))]
    pub pods_per_node: u8,
    /// TCP connections through one NodePort to show the spread.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(100..=10_000))]
    pub requests: u64,
    /// Keep the sandbox up for SECS seconds (at most 3600) or until Ctrl-C,
    /// to try it by hand.
    #[arg(long, value_name = "SECS")]
    pub hold: Option<u64>,
    /// Use the binaries already in target/debug (no setup, no build).
    #[arg(long)]
    pub no_build: bool,
}

pub fn run(args: Args) -> Result<()> {
    require_root().context(
        "the demo creates network namespaces, cgroups and bpffs mounts and loads \
         eBPF programs: run `cargo xtask demo` as root",
    )?;
    interrupt::install()?;
    let result = demo(&args);
    // Every guard has been dropped here, whatever happened.
    match result {
        Ok(summary) => {
            summary.print();
            Ok(())
        }
        Err(e) => {
            let left = leftovers().unwrap_or_else(|why| vec![format!("(cannot check: {why:#})")]);
            if !left.is_empty() {
                eprintln!("\nleft behind: {left:?}; `cargo xtask sweep` removes leftovers");
            } else {
                println!("\nsandbox removed (namespaces, cgroups, bpffs mounts, processes)");
            }
            if interrupt::requested() {
                bail!("interrupted before the demo finished");
            }
            Err(e)
        }
    }
}

fn demo(args: &Args) -> Result<Summary> {
    let layout = Layout {
        nodes: usize::from(args.nodes),
        pods_per_node: usize::from(args.pods_per_node),
    };
    let mut summary = Summary::default();
    let mut step = Steps::new(7);

    step.next("build bpfproxy and the probe client/server");
    let (bpfproxy, probe) = build(args.no_build)?;
    interrupt::check()?;

    step.next(&format!(
        "sandbox cluster: {} nodes, {} pods, an external client",
        layout.nodes,
        layout.nodes * layout.pods_per_node
    ));
    let started = Instant::now();
    let sb = ClusterSandbox::new(ClusterConfig {
        nodes: layout.nodes,
        pods_per_node: layout.pods_per_node,
        tcp_ports: vec![SERVER_HTTP_PORT],
        udp_ports: vec![SERVER_UDP_PORT],
        probe_bin: Some(probe),
        echo_peer: true,
    })?;
    describe_cluster(&sb, layout)?;
    check_no_default_route(&sb)?;
    summary.add(
        "cluster",
        format!(
            "{} nodes, {}, {} on {}, external client {CLIENT_IP}; built in {:.2?}",
            layout.nodes,
            plural(layout.nodes * layout.pods_per_node, "pod"),
            plural(layout.backend_pods().len(), "backend"),
            layout.backend_node_names().join(", "),
            started.elapsed()
        ),
    );
    interrupt::check()?;

    let services = layout.services();
    step.next(&format!(
        "manifests: {} in {}",
        services
            .iter()
            .map(|s| s.name)
            .collect::<Vec<_>>()
            .join(", "),
        sb.source_dir().display()
    ));
    write_manifests(&sb, &services)?;
    interrupt::check()?;

    step.next("one bpfproxy per node: its namespace, cgroup, bpffs and fabric device");
    let mut agents = start_agents(&sb, &bpfproxy, &services, &mut summary)?;
    interrupt::check()?;

    step.next("traffic, as users try it first");
    traffic(&sb, layout, args.requests, &mut summary)?;
    for (n, agent) in agents.iter_mut().enumerate() {
        agent
            .check_alive()
            .with_context(|| format!("{}'s agent", k8s_node_name(n + 1)))?;
    }

    // Node 1 has local backends: its dump shows locality and eTP=Local.
    let dumped = 1;
    step.next(&format!(
        "bpfproxy dump of {} (what its kernel maps hold)",
        k8s_node_name(dumped)
    ));
    print_dump(&agents[dumped - 1])?;
    interrupt::check()?;

    if let Some(secs) = args.hold {
        hold(&sb, layout, &mut agents, secs.min(MAX_HOLD_SECS))?;
    }

    step.next("tear down");
    summary.add("teardown", tear_down(agents, sb)?);
    Ok(summary)
}

/// Who runs where: nodes `1..nodes` run the backends, node `nodes` none
/// (like a control-plane node); its first pod is the client pod.
#[derive(Debug, Clone, Copy)]
struct Layout {
    nodes: usize,
    pods_per_node: usize,
}

impl Layout {
    /// The node without a backend.
    fn bare_node(&self) -> usize {
        self.nodes
    }

    /// `(node, pod)` of the pod that plays the in-cluster client.
    fn client_pod(&self) -> (usize, usize) {
        (self.bare_node(), 1)
    }

    /// `(node, pod)` of every backend.
    fn backend_pods(&self) -> Vec<(usize, usize)> {
        (1..self.bare_node())
            .flat_map(|i| (1..=self.pods_per_node).map(move |j| (i, j)))
            .collect()
    }

    fn backend_names(&self) -> BTreeSet<String> {
        self.backend_pods()
            .into_iter()
            .map(|(i, j)| pod_name(i, j))
            .collect()
    }

    fn backend_node_names(&self) -> Vec<String> {
        (1..self.bare_node()).map(k8s_node_name).collect()
    }

    /// The node a backend (by the name it answers) runs on.
    fn node_of(&self, backend: &str) -> Option<usize> {
        self.backend_pods()
            .into_iter()
            .find(|&(i, j)| pod_name(i, j) == backend)
            .map(|(i, _)| i)
    }

    /// The client address backend `backend` must see for a connection from
    /// the external client to node `entry`'s eTP=Cluster NodePort: the
    /// client's own when the backend is local (no SNAT needed, the reply
    /// passes that node anyway), else the entry node's (SNAT, so the reply
    /// comes back through it).
    fn expected_peer(&self, entry: usize, backend: &str) -> String {
        if self.node_of(backend) == Some(entry) {
            CLIENT_IP.to_string()
        } else {
            node_ip(entry)
        }
    }

    fn services(&self) -> Vec<DemoService> {
        let backends = self.backend_pods();
        let web = |name, cluster_ip, node_port| DemoService {
            name,
            cluster_ip,
            port_name: "http",
            port: 80,
            target_port: SERVER_HTTP_PORT,
            protocol: "TCP",
            node_port,
            endpoints: backends.clone(),
        };
        vec![
            web(WEB, WEB_IP, Some((WEB_NODE_PORT, Etp::Cluster))),
            web(
                WEB_LOCAL,
                WEB_LOCAL_IP,
                Some((WEB_LOCAL_NODE_PORT, Etp::Local)),
            ),
            DemoService {
                name: DNS,
                cluster_ip: DNS_IP,
                port_name: "dns",
                port: DNS_PORT,
                target_port: SERVER_UDP_PORT,
                protocol: "UDP",
                node_port: None,
                endpoints: backends.clone(),
            },
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Etp {
    Cluster,
    Local,
}

impl Etp {
    fn as_str(self) -> &'static str {
        match self {
            Etp::Cluster => "Cluster",
            Etp::Local => "Local",
        }
    }
}

/// One single-port Service and its endpoints: the one source of its
/// manifest, of the frontends every agent must program and of the table.
#[derive(Debug, Clone)]
struct DemoService {
    /// `namespace/name`.
    name: &'static str,
    cluster_ip: &'static str,
    port_name: &'static str,
    port: u16,
    target_port: u16,
    protocol: &'static str,
    /// NodePort and external traffic policy; `None` for type ClusterIP.
    node_port: Option<(u16, Etp)>,
    /// `(node, pod)` of each endpoint.
    endpoints: Vec<(usize, usize)>,
}

/// A frontend an agent must have programmed, as `bpfproxy dump` shows it.
#[derive(Debug, Clone)]
struct Frontend {
    vip: String,
    port: u16,
    protocol: &'static str,
    /// `ip:port`.
    backends: Vec<String>,
}

impl DemoService {
    /// The Service and its EndpointSlice (each endpoint with its nodeName).
    fn manifest(&self) -> String {
        let service = match self.node_port {
            Some((node_port, etp)) => node_port_service(
                self.name,
                self.cluster_ip,
                &[(
                    self.port_name,
                    self.port,
                    self.target_port,
                    self.protocol,
                    node_port,
                )],
                etp.as_str(),
            ),
            None => manifest::service(
                self.name,
                self.cluster_ip,
                &[(self.port_name, self.port, self.target_port, self.protocol)],
            ),
        };
        let endpoints: Vec<Endpoint> = self
            .endpoints
            .iter()
            .map(|&(i, j)| pod_endpoint(i, j))
            .collect();
        let slice = format!("{}-1", self.short_name());
        manifest::documents(&[
            service,
            manifest::endpoint_slice_with(
                self.name,
                &slice,
                &endpoints,
                &[(self.port_name, self.target_port, self.protocol)],
            ),
        ])
    }

    fn short_name(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or(self.name)
    }

    fn addr(&self, (i, j): (usize, usize)) -> String {
        format!("{}:{}", pod_ip(i, j), self.target_port)
    }

    /// What node `node`'s agent must program: the ClusterIP with every
    /// endpoint; the NodePort (`0.0.0.0` in the dump) with every endpoint,
    /// or only the node's own for eTP=Local.
    fn frontends_on(&self, node: usize) -> Vec<Frontend> {
        let all: Vec<String> = self.endpoints.iter().map(|&e| self.addr(e)).collect();
        let mut v = vec![Frontend {
            vip: self.cluster_ip.to_string(),
            port: self.port,
            protocol: self.protocol,
            backends: all.clone(),
        }];
        if let Some((node_port, etp)) = self.node_port {
            let backends = match etp {
                Etp::Cluster => all,
                Etp::Local => self
                    .endpoints
                    .iter()
                    .filter(|&&(i, _)| i == node)
                    .map(|&e| self.addr(e))
                    .collect(),
            };
            v.push(Frontend {
                vip: "0.0.0.0".to_string(),
                port: node_port,
                protocol: self.protocol,
                backends,
            });
        }
        v
    }

    /// A `kubectl get svc` line.
    fn table_row(&self) -> String {
        let (type_, ports, etp) = match self.node_port {
            Some((np, etp)) => (
                "NodePort",
                format!("{}:{np}/{}", self.port, self.protocol),
                etp.as_str(),
            ),
            None => ("ClusterIP", format!("{}/{}", self.port, self.protocol), "-"),
        };
        format!(
            "{:<22} {type_:<10} {:<11} {ports:<15} {etp:<8} {} -> :{}",
            self.name,
            self.cluster_ip,
            plural(self.endpoints.len(), "endpoint"),
            self.target_port
        )
    }
}

/// One line per check, printed after the teardown.
#[derive(Debug, Default)]
struct Summary {
    lines: Vec<(&'static str, String)>,
}

impl Summary {
    fn add(&mut self, what: &'static str, text: String) {
        self.lines.push((what, text));
    }

    fn print(&self) {
        println!("\nsummary: every check passed");
        for (what, text) in &self.lines {
            println!("  {what:<12} {text}");
        }
    }
}

/// Setup (nightly rust-src, bpf-linker, the Debian packages, curl among
/// them) and build, unless `no_build`; returns the agent and probe binaries.
fn build(no_build: bool) -> Result<(PathBuf, PathBuf)> {
    let root = workspace::root();
    if !no_build {
        setup::run(&setup::Options { apt: true }).context("setting up the toolchains")?;
        let mut c = sh::cmd(
            "cargo",
            [
                "build",
                "-p",
                "proxy-agent",
                "-p",
                "bpfproxy-tests",
                "--bins",
            ],
        );
        c.current_dir(&root);
        sh::run(&mut c).context("building bpfproxy")?;
    }
    let dir = workspace::target_dir()?.join("debug");
    let bins = (dir.join("bpfproxy"), dir.join("probe"));
    for b in [&bins.0, &bins.1] {
        if !b.is_file() {
            bail!(
                "{} is missing; run the demo without --no-build",
                b.display()
            );
        }
    }
    if !on_path("curl") {
        bail!("curl is missing; run the demo without --no-build (its setup installs curl)");
    }
    Ok(bins)
}

fn describe_cluster(sb: &ClusterSandbox, layout: Layout) -> Result<()> {
    println!(
        "  {:<16} {:<15} netns {}   outside the cluster, routes only to the node subnet",
        "external client",
        CLIENT_IP,
        sb.client_ns().name()
    );
    let backends = layout.backend_pods();
    for i in 1..=layout.nodes {
        let node = sb.node(i);
        println!(
            "  {:<16} {:<15} netns {}, device {}, cgroup {}, bpffs {}{}",
            k8s_node_name(i),
            node_ip(i),
            node.ns.name(),
            node.device,
            node.cgroup.path().display(),
            node.bpffs.path().display(),
            if i == layout.bare_node() {
                "\n                                   runs no backend (like a control-plane node)"
            } else {
                ""
            }
        );
        for j in 1..=layout.pods_per_node {
            let role = if backends.contains(&(i, j)) {
                "backend of web, web-local, kube-dns"
            } else if (i, j) == layout.client_pod() {
                "the client pod"
            } else {
                "not in any Service"
            };
            println!(
                "    {:<14} {:<15} netns {}   {role}",
                pod_name(i, j),
                pod_ip(i, j),
                sb.pod(i, j).ns.name()
            );
        }
    }
    println!(
        "  every pod and node answers \"<its name> <the client address it saw>\" on TCP \
         {SERVER_HTTP_PORT} (HTTP) and \"<its name>\" on UDP {SERVER_UDP_PORT}"
    );
    Ok(())
}

/// The sandbox's safety net: a packet bpfproxy does not translate must die
/// inside the sandbox, so no namespace may have a default route.
fn check_no_default_route(sb: &ClusterSandbox) -> Result<()> {
    let namespaces = sb.namespaces();
    for ns in &namespaces {
        let default = ns.ip(&["-4", "route", "show", "default"])?;
        if !default.trim().is_empty() {
            bail!(
                "namespace {} has a default route ({}); refusing to go on",
                ns.name(),
                default.trim()
            );
        }
    }
    println!(
        "  no default route in any of the {} namespaces (checked): untranslated traffic dies \
         inside the sandbox",
        namespaces.len()
    );
    Ok(())
}

fn write_manifests(sb: &ClusterSandbox, services: &[DemoService]) -> Result<()> {
    println!(
        "  {:<22} {:<10} {:<11} {:<15} {:<8} ENDPOINTS",
        "NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "eTP"
    );
    for s in services {
        let file = format!("{}.yaml", s.short_name());
        sb.write_manifest(&file, &s.manifest())?;
        println!("  {}", s.table_row());
    }
    let web = services
        .iter()
        .find(|s| s.name == WEB)
        .context("the demo has no web Service")?;
    println!(
        "\n  {}/{}.yaml (the others alike):\n{}",
        sb.source_dir().display(),
        web.short_name(),
        indent(&web.manifest())
    );
    Ok(())
}

/// Starts one agent per node (TC on its fabric device) and waits until each
/// has programmed every frontend the manifests imply for its node.
fn start_agents(
    sb: &ClusterSandbox,
    bpfproxy: &Path,
    services: &[DemoService],
    summary: &mut Summary,
) -> Result<Vec<Agent>> {
    let nodes = sb.config().nodes;
    let mut agents = Vec::new();
    for i in 1..=nodes {
        let mut cfg = sb.agent_config_with_tc(i)?;
        cfg.bin = bpfproxy.to_path_buf();
        let args: Vec<String> = cfg.run_args().iter().map(|a| process::quote(a)).collect();
        println!(
            "  {}: $ {} {}",
            k8s_node_name(i),
            cfg.bin.display(),
            args.join(" ")
        );
        agents.push(Agent::start(cfg)?);
    }
    let started = Instant::now();
    let mut ready = Vec::new();
    for (n, agent) in agents.iter_mut().enumerate() {
        let i = n + 1;
        let frontends: Vec<Frontend> = services.iter().flat_map(|s| s.frontends_on(i)).collect();
        for f in &frontends {
            agent
                .wait_for_backends(&f.vip, f.port, f.protocol, &f.backends, READY_TIMEOUT)
                .with_context(|| format!("{}'s agent", k8s_node_name(i)))?;
        }
        let t = started.elapsed();
        println!(
            "  {}: all {} frontends in its maps after {t:.2?} (log {})",
            k8s_node_name(i),
            frontends.len(),
            agent.log_path().display()
        );
        ready.push(format!("{t:.2?}"));
    }
    summary.add(
        "agents",
        format!(
            "{nodes} agents, every frontend programmed after {} (per node)",
            ready.join(", ")
        ),
    );
    Ok(agents)
}

fn traffic(
    sb: &ClusterSandbox,
    layout: Layout,
    requests: u64,
    summary: &mut Summary,
) -> Result<()> {
    summary.add("ClusterIP", curl_cluster_ip_from_pod(sb, layout)?);
    interrupt::check()?;
    summary.add("UDP", udp_through_cluster_ip(sb, layout)?);
    interrupt::check()?;
    summary.add("outside", cluster_ip_from_outside(sb)?);
    interrupt::check()?;
    summary.add("NodePort", curl_every_node_port(sb, layout)?);
    interrupt::check()?;
    summary.add("spread", spread_through_node_port(sb, layout, requests)?);
    interrupt::check()?;
    summary.add("eTP=Local", etp_local(sb, layout)?);
    Ok(())
}

/// curl from the client pod (on the node without backends) to the web
/// ClusterIP: translated at connect(), so the backend sees the pod itself.
fn curl_cluster_ip_from_pod(sb: &ClusterSandbox, layout: Layout) -> Result<String> {
    let (i, j) = layout.client_pod();
    let me = pod_ip(i, j);
    let url = format!("http://{WEB_IP}/");
    println!(
        "\n  from {} ({me}) on {}, which runs no backend:",
        pod_name(i, j),
        k8s_node_name(i)
    );
    let mut seen = BTreeSet::new();
    for _ in 0..POD_CURLS {
        let body = curl(sb.pod_command(i, j, "curl")?, &url)?;
        let (name, peer) = split_echo_peer(&body)?;
        println!("  $ curl {url}   -> {body}");
        ensure!(
            layout.backend_names().contains(name),
            "{url} from {} was answered by {name:?}, not a web backend",
            pod_name(i, j)
        );
        ensure!(
            peer == me,
            "{name} saw the pod as {peer}, not {me}: ClusterIP traffic from a pod must not be NATed"
        );
        seen.insert(name.to_string());
    }
    println!(
        "    the backends saw the pod's own address {me}: the socket was connected straight \
         to the backend (connect4), no NAT on the way"
    );
    Ok(format!(
        "curl {url} from {}: {POD_CURLS}/{POD_CURLS} answered (by {}), client address kept",
        pod_name(i, j),
        seen.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

/// UDP queries from the client pod to the DNS-like ClusterIP, one
/// unconnected socket (like a resolver): spread per datagram, replies from
/// the ClusterIP.
fn udp_through_cluster_ip(sb: &ClusterSandbox, layout: Layout) -> Result<String> {
    let (i, j) = layout.client_pod();
    let to = format!("{DNS_IP}:{DNS_PORT}");
    println!(
        "\n  {UDP_QUERIES} UDP queries from {} to {DNS} {to}, one unconnected socket \
         (sendto per datagram, like a resolver):",
        pod_name(i, j)
    );
    let r: UdpReport = sb.probe(
        sb.pod_command(i, j, sb.probe_bin())?,
        &["udp", "--to", &to, "--count", &UDP_QUERIES.to_string()],
        PROBE_TIMEOUT,
    )?;
    // UDP answers carry no peer address: counts only.
    let answers: BTreeMap<String, PeerAnswers> = r
        .by_backend
        .iter()
        .map(|(name, &count)| {
            (
                name.clone(),
                PeerAnswers {
                    count,
                    ..Default::default()
                },
            )
        })
        .collect();
    print_spread(&answers, &layout.backend_names(), r.ok);
    show_errors(&r.errors);
    println!(
        "    replies came from {} (recvmsg4 shows the ClusterIP, not the pod that answered)",
        r.sources.join(", ")
    );
    ensure!(
        r.ok == UDP_QUERIES && r.failed == 0,
        "UDP through {to}: {} of {UDP_QUERIES} answered: {r:?}",
        r.ok
    );
    ensure!(
        r.sources == [to.clone()],
        "UDP replies must come from {to}, came from {:?}",
        r.sources
    );
    check_all_reached(&answers, &layout.backend_names(), &to)?;
    Ok(format!(
        "{UDP_QUERIES}/{UDP_QUERIES} datagrams to {to} answered, by all {}; replies from the \
         ClusterIP",
        plural(answers.len(), "backend")
    ))
}

/// ClusterIPs exist only inside the cluster: the external client has no
/// route to them.
fn cluster_ip_from_outside(sb: &ClusterSandbox) -> Result<String> {
    let to = format!("{WEB_IP}:80");
    let c = sb.client_connect(&to, DROP_TIMEOUT_MS)?;
    println!(
        "\n  the external client {CLIENT_IP} to the ClusterIP {to}: {}",
        c.error.as_deref().unwrap_or("connected")
    );
    ensure!(
        !c.ok,
        "the external client reached the ClusterIP {to}; ClusterIPs must stay inside the cluster"
    );
    println!("    (ClusterIPs are only reachable from the cluster's pods and nodes)");
    Ok(format!(
        "{to} from the external client: {}",
        c.error.unwrap_or_default()
    ))
}

/// curl from the external client to every node's NodePort, the node without
/// a backend included; each backend must see the address the policy says.
fn curl_every_node_port(sb: &ClusterSandbox, layout: Layout) -> Result<String> {
    println!(
        "\n  from the external client {CLIENT_IP} to every node's NodePort {WEB_NODE_PORT} \
         ({WEB}, externalTrafficPolicy: Cluster):"
    );
    let mut answered = Vec::new();
    for entry in 1..=layout.nodes {
        let url = format!("http://{}:{WEB_NODE_PORT}/", node_ip(entry));
        let body = curl(sb.client_command("curl")?, &url)?;
        let (name, peer) = split_echo_peer(&body)?;
        let want = layout.expected_peer(entry, name);
        let why = if want == CLIENT_IP {
            "a local backend: no SNAT, the client's own address"
        } else {
            "on another node: SNAT to the entry node's address"
        };
        println!("  $ curl {url}   -> {body:<26}  {why}");
        ensure!(
            layout.backend_names().contains(name),
            "{url} was answered by {name:?}, not a web backend"
        );
        ensure!(
            peer == want,
            "{url}: {name} saw the client as {peer}, expected {want}"
        );
        answered.push(format!("{} -> {name}", k8s_node_name(entry)));
    }
    Ok(format!(
        "curl on all {} nodes answered ({}), {} included",
        layout.nodes,
        answered.join(", "),
        k8s_node_name(layout.bare_node())
    ))
}

/// Many new connections through the NodePort of the node without a
/// backend: uniformly random over all backends, every one SNATed.
fn spread_through_node_port(sb: &ClusterSandbox, layout: Layout, requests: u64) -> Result<String> {
    let entry = layout.bare_node();
    let to = format!("{}:{WEB_NODE_PORT}", node_ip(entry));
    println!(
        "\n  {requests} new connections from the external client to {} ({}, no local \
         backend):",
        to,
        k8s_node_name(entry)
    );
    let r = sb.client_tcp(&to, requests, PROBE_TIMEOUT)?;
    let answers = answers_by_backend(&r)?;
    let want = layout.backend_names();
    print_spread(&answers, &want, r.ok);
    show_errors(&r.errors);
    println!(
        "    {} ms in all, {:.2} ms per connection",
        r.elapsed_ms.round(),
        r.elapsed_ms / r.ok.max(1) as f64
    );
    ensure!(
        r.ok == requests && r.failed == 0,
        "{to}: {} of {requests} connections answered: {:?}",
        r.ok,
        r.errors
    );
    check_all_reached(&answers, &want, &to)?;
    let snat = node_ip(entry);
    check_peers(&answers, &snat, &to)?;
    println!(
        "    every backend saw {snat}, {}'s address: SNAT (externalTrafficPolicy: Cluster), so \
         the replies return through the node the client used",
        k8s_node_name(entry)
    );
    let shares: Vec<String> = answers
        .iter()
        .map(|(name, a)| format!("{name} {}", a.count))
        .collect();
    Ok(format!(
        "{requests}/{requests} connections via {} in {:.0} ms: {}; backends saw {snat} (SNAT)",
        k8s_node_name(entry),
        r.elapsed_ms,
        shares.join(", ")
    ))
}

/// eTP=Local: a node with endpoints serves only its own, and they see the
/// real client; a node without drops the connection.
fn etp_local(sb: &ClusterSandbox, layout: Layout) -> Result<String> {
    let entry = 1;
    let to = format!("{}:{WEB_LOCAL_NODE_PORT}", node_ip(entry));
    println!(
        "\n  {WEB_LOCAL} (externalTrafficPolicy: Local): {LOCAL_REQUESTS} connections from the \
         external client to {to} ({}):",
        k8s_node_name(entry)
    );
    let r = sb.client_tcp(&to, LOCAL_REQUESTS, PROBE_TIMEOUT)?;
    let answers = answers_by_backend(&r)?;
    let local: BTreeSet<String> = (1..=layout.pods_per_node)
        .map(|j| pod_name(entry, j))
        .collect();
    print_spread(&answers, &local, r.ok);
    show_errors(&r.errors);
    ensure!(
        r.ok == LOCAL_REQUESTS && r.failed == 0,
        "{to}: {} of {LOCAL_REQUESTS} connections answered: {:?}",
        r.ok,
        r.errors
    );
    check_all_reached(&answers, &local, &to)?;
    check_peers(&answers, CLIENT_IP, &to)?;
    println!(
        "    only {}'s own pods, and they saw the real client {CLIENT_IP} (no SNAT)",
        k8s_node_name(entry)
    );

    let bare = layout.bare_node();
    let to_bare = format!("{}:{WEB_LOCAL_NODE_PORT}", node_ip(bare));
    let c = sb.client_connect(&to_bare, DROP_TIMEOUT_MS)?;
    println!(
        "  {to_bare} ({}, no local endpoint): {} after {:.0} ms",
        k8s_node_name(bare),
        c.error.as_deref().unwrap_or("connected"),
        c.elapsed_ms
    );
    ensure!(
        !c.ok,
        "{} has no local endpoint of {WEB_LOCAL} but served its NodePort",
        k8s_node_name(bare)
    );
    println!(
        "    dropped, as kube-proxy does: a load balancer's health check keeps such nodes out"
    );
    Ok(format!(
        "{LOCAL_REQUESTS}/{LOCAL_REQUESTS} via {} answered by its own pods, which saw \
         {CLIENT_IP}; {} (no local endpoint) dropped the connection",
        k8s_node_name(entry),
        k8s_node_name(bare)
    ))
}

/// Fails unless the answers came from exactly `want`, each at least once.
fn check_all_reached(
    answers: &BTreeMap<String, PeerAnswers>,
    want: &BTreeSet<String>,
    to: &str,
) -> Result<()> {
    let seen: BTreeSet<String> = answers.keys().cloned().collect();
    ensure!(
        &seen == want,
        "{to}: answered by {seen:?}, expected each of {want:?} (and nothing else)"
    );
    Ok(())
}

/// Fails unless every backend saw only `peer` as the client.
fn check_peers(answers: &BTreeMap<String, PeerAnswers>, peer: &str, to: &str) -> Result<()> {
    for (name, a) in answers {
        ensure!(
            a.peers.iter().all(|p| p == peer),
            "{to}: {name} saw the client as {:?}, expected only {peer}",
            a.peers
        );
    }
    Ok(())
}

/// Answers per backend as bars, with the client addresses each saw.
fn print_spread(answers: &BTreeMap<String, PeerAnswers>, want: &BTreeSet<String>, ok: u64) {
    let total = ok.max(1) as f64;
    let empty = PeerAnswers::default();
    let names: BTreeSet<&String> = want.iter().chain(answers.keys()).collect();
    for name in names {
        let a = answers.get(name).unwrap_or(&empty);
        let share = a.count as f64 / total;
        let bar = "#".repeat((share * 40.0).round() as usize);
        let peers = if a.peers.is_empty() {
            String::new()
        } else {
            format!(
                "  saw {}",
                a.peers.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        let unexpected = if want.contains(name) {
            ""
        } else {
            "  (unexpected!)"
        };
        let line = format!(
            "    {name:<12} {:>5}  {:>5.1}%  {bar:<40}{peers}{unexpected}",
            a.count,
            share * 100.0
        );
        println!("{}", line.trim_end());
    }
}

fn show_errors(errors: &[String]) {
    for e in errors.iter().take(3) {
        println!("    error: {e}");
    }
}

/// `curl -sS URL` run by `cmd` (a `*_command("curl")` of the sandbox);
/// returns the body, trimmed.
fn curl(mut cmd: Command, url: &str) -> Result<String> {
    // --noproxy and no proxy variables: the request must go straight to
    // the sandbox address.
    cmd.args(["-sS", "--noproxy", "*", "--max-time", "3", url]);
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    let body = process::run_with_timeout(&mut cmd, Duration::from_secs(10))?;
    Ok(body.trim().to_string())
}

fn print_dump(agent: &Agent) -> Result<()> {
    let mut c = Command::new(&agent.config().bin);
    c.arg("dump").arg("--bpffs").arg(&agent.config().bpffs);
    println!("$ {}", process::describe(&c));
    println!("{}", indent(&agent.dump_text()?));
    Ok(())
}

/// Keeps the sandbox up so it can be tried by hand; Ctrl-C ends it early
/// (and the demo then tears down as usual).
fn hold(sb: &ClusterSandbox, layout: Layout, agents: &mut [Agent], secs: u64) -> Result<()> {
    let ext = sb.client_ns().name();
    let bare = layout.bare_node();
    let (i, j) = layout.client_pod();
    println!("\nThe cluster stays up for {secs}s (Ctrl-C ends it earlier). In another root shell:");
    println!("  # the external client, outside the cluster: any node's NodePort");
    println!(
        "  ip netns exec {ext} curl http://{}:{WEB_NODE_PORT}/",
        node_ip(bare)
    );
    println!(
        "  ip netns exec {ext} sh -c 'for i in $(seq 20); do curl -s http://{}:{WEB_NODE_PORT}/; \
         done | sort | uniq -c'",
        node_ip(1)
    );
    println!(
        "  ip netns exec {ext} curl http://{}:{WEB_LOCAL_NODE_PORT}/   # eTP=Local: the real \
         client address",
        node_ip(1)
    );
    println!(
        "  # a pod: its sockets must be in its node's cgroup, where bpfproxy's socket programs \
         are attached"
    );
    println!(
        "  nsenter --net={} -- sh -c 'echo $$ > {}/cgroup.procs && exec curl -s http://{WEB_IP}/'",
        sb.pod(i, j).ns.path().display(),
        sb.node(i).cgroup.path().display()
    );
    println!("  # what each node's kernel maps hold, and its agent's log");
    for (n, agent) in agents.iter().enumerate() {
        println!(
            "  {} dump --bpffs {}   # {}, log {}",
            agent.config().bin.display(),
            agent.config().bpffs.display(),
            k8s_node_name(n + 1),
            agent.log_path().display()
        );
    }
    println!("  (any shell you start in the sandbox is killed when the demo ends)");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if interrupt::requested() {
            println!("\n  Ctrl-C: ending the hold");
            return Ok(());
        }
        for agent in agents.iter_mut() {
            agent.check_alive()?;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Stops the agents, removes the sandbox and checks that nothing of this
/// process is left.
fn tear_down(agents: Vec<Agent>, sb: ClusterSandbox) -> Result<String> {
    let namespaces = sb.namespaces().len();
    let nodes = sb.config().nodes;
    let started = Instant::now();
    drop(agents);
    drop(sb);
    let took = started.elapsed();
    let left = leftovers()?;
    if !left.is_empty() {
        bail!("teardown left {left:?} behind; `cargo xtask sweep` removes leftovers");
    }
    let text = format!(
        "{nodes} agents, {namespaces} namespaces, {nodes} cgroups, {nodes} bpffs mounts and \
         every server removed in {took:.2?}; nothing named {} is left",
        own_prefix()
    );
    println!("  {text}");
    Ok(text)
}

/// `bpfpt-<our pid>-`: every namespace, cgroup and /tmp entry the sandbox
/// creates starts with it.
fn own_prefix() -> String {
    format!("{NAME_PREFIX}{}-", std::process::id())
}

/// Namespaces, cgroups and /tmp entries (bpffs mount points, the work
/// directory) of this process that still exist.
fn leftovers() -> Result<Vec<String>> {
    let prefix = own_prefix();
    let mut left: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .map(|n| format!("netns {n}"))
        .collect();
    for dir in [
        bpfproxy_tests::privilege::cgroup2_root()?,
        std::env::temp_dir(),
    ] {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
        left.extend(
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path().display().to_string()),
        );
    }
    Ok(left)
}

/// Whether `program` is an executable file in a PATH directory.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            dir.join(program)
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// `1 backend`, `4 backends`.
fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Numbered step headers.
struct Steps {
    n: usize,
    total: usize,
}

impl Steps {
    fn new(total: usize) -> Self {
        Steps { n: 0, total }
    }

    fn next(&mut self, what: &str) {
        self.n += 1;
        println!("\n[{}/{}] {what}", self.n, self.total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: Layout = Layout {
        nodes: 3,
        pods_per_node: 2,
    };

    #[test]
    fn the_last_node_runs_no_backend_and_hosts_the_client_pod() {
        assert_eq!(LAYOUT.backend_pods(), vec![(1, 1), (1, 2), (2, 1), (2, 2)]);
        assert_eq!(LAYOUT.client_pod(), (3, 1));
        assert_eq!(LAYOUT.node_of("node2-pod2"), Some(2));
        assert_eq!(LAYOUT.node_of("node3-pod1"), None);
    }

    #[test]
    fn a_backend_sees_the_client_only_behind_its_own_node() {
        assert_eq!(LAYOUT.expected_peer(1, "node1-pod2"), CLIENT_IP);
        assert_eq!(LAYOUT.expected_peer(1, "node2-pod1"), node_ip(1));
        assert_eq!(LAYOUT.expected_peer(3, "node1-pod1"), node_ip(3));
    }

    #[test]
    fn etp_local_node_ports_have_only_the_nodes_own_backends() {
        let services = LAYOUT.services();
        let local = services.iter().find(|s| s.name == WEB_LOCAL).unwrap();
        let node_port = |node| {
            local
                .frontends_on(node)
                .into_iter()
                .find(|f| f.vip == "0.0.0.0")
                .unwrap()
                .backends
        };
        assert_eq!(node_port(1), ["10.244.1.2:8080", "10.244.1.3:8080"]);
        assert!(node_port(3).is_empty());
        // The ClusterIP keeps every endpoint.
        assert_eq!(local.frontends_on(3)[0].backends.len(), 4);
    }

    #[test]
    fn cluster_ip_services_have_no_node_port_frontend() {
        let services = LAYOUT.services();
        let dns = services.iter().find(|s| s.name == DNS).unwrap();
        let f = dns.frontends_on(1);
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].vip.as_str(), f[0].port, f[0].protocol),
            (DNS_IP, 53, "UDP")
        );
        assert_eq!(f[0].backends[0], "10.244.1.2:5353");
    }
}
