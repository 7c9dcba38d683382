//! Proof under load: request loops through a NodePort and a ClusterIP, TCP
//! and UDP, keep running while the agents are SIGKILLed and restarted, the
//! API server goes away and comes back, endpoints churn and a spoofed SYN
//! flood overflows the conntrack tables of the node the NodePort traffic
//! enters by. Not one request may fail.
//!
//! The cluster: three nodes of the multi-node sandbox, each with its agent
//! watching a real API server (etcd + the generic apiserver) through a
//! loopback forwarder into the node's namespace. `default/web` is a
//! NodePort Service (http 80→8080/TCP, nodePort 30080; dns 53→5353/UDP,
//! nodePort 30053) backed by pod 1 of nodes 1 and 2; pod 2 of node 2 joins
//! and leaves during the churn (its server never stops, so every request
//! may live). The external client enters by node 3, which has no local
//! backend (DNAT + SNAT to another node); the ClusterIP client is pod 2 of
//! node 1 (the socket programs of node 1's cgroup translate at connect and
//! sendmsg time).
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bpfproxy_tests::{
    agent::AgentConfig,
    apiserver::ApiServer,
    cluster::Cluster as Kube,
    flood::spoofed_syn_flood,
    forward::LoopbackForward,
    manifest::{self, Endpoint},
    multinode::{
        node_ip, node_port_service, pod_endpoint, pod_ip, pod_name, ClusterConfig, ClusterSandbox,
        NetworkShape,
    },
    netns,
    request_loop::{LoopTally, MakeRequest, RequestLoop},
    Agent,
};

const NODES: usize = 3;
const CLUSTER_IP: &str = "10.96.0.30";
const TCP_NODE_PORT: u16 = 30080;
const UDP_NODE_PORT: u16 = 30053;
/// The node the external client's requests enter by (no local backend).
const ENTRY: usize = 3;
/// The pod whose processes use the ClusterIP: pod 2 of node 1.
const CLIENT_POD: (usize, usize) = (1, 2);
/// The endpoint that comes and goes: pod 2 of node 2.
const CHURNED: (usize, usize) = (2, 2);
/// Every agent's conntrack tables: small, so that a flood of twice the
/// confirmed one is quick to send.
const CONNTRACK: u32 = 4096;
const CONNTRACK_NEW: u32 = 1024;
/// Endpoint changes in the churn phase.
const CHURN_CHANGES: usize = 10;
/// One request's timeout: generous for a loaded CI machine, short enough
/// that a broken path fails the request instead of waiting it out.
const REQUEST_TIMEOUT_MS: u64 = 2000;
/// A new request per loop this often.
const INTERVAL: Duration = Duration::from_millis(100);
/// Successful requests each loop must at least have made.
const MIN_OK: u64 = 150;
/// A bound on how long agents take to (re)start and program a change
/// (loading the programs on a loaded machine takes seconds).
const T: Duration = Duration::from_secs(60);
/// How long the API server stays away.
const OUTAGE: Duration = Duration::from_secs(5);

/// Everything the test runs; fields drop in declaration order: agents
/// first, the sandbox (its namespaces) last.
struct World {
    agents: Vec<Agent>,
    _forward: LoopbackForward,
    kube: Kube,
    api: ApiServer,
    sb: ClusterSandbox,
    epoch: Instant,
    events: Vec<String>,
    /// What the chaos did, for the closing figures.
    agent_restarts: u32,
    api_restarts: u32,
    endpoint_changes: usize,
}

impl World {
    /// Notes a chaos event with its time since the start, so failed
    /// requests (stamped with the same clock) can be lined up with it.
    fn event(&mut self, what: String) {
        let line = format!("t={}ms {what}", self.epoch.elapsed().as_millis());
        eprintln!("chaos: {line}");
        self.events.push(line);
    }
}

/// `default/web` with the given endpoints.
fn web_yaml(endpoints: &[Endpoint]) -> String {
    manifest::documents(&[
        node_port_service(
            "default/web",
            CLUSTER_IP,
            &[
                ("http", 80, 8080, "TCP", TCP_NODE_PORT),
                ("dns", 53, 5353, "UDP", UDP_NODE_PORT),
            ],
            "Cluster",
        ),
        manifest::endpoint_slice_with(
            "default/web",
            "web-1",
            endpoints,
            &[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
        ),
    ])
}

/// The stable endpoints, plus the churned one when `with_churned`.
fn endpoints(with_churned: bool) -> (Vec<Endpoint>, Vec<String>) {
    let mut pods = vec![(1, 1), (2, 1)];
    if with_churned {
        pods.push(CHURNED);
    }
    let eps = pods.iter().map(|&(i, j)| pod_endpoint(i, j)).collect();
    let addrs = pods
        .iter()
        .map(|&(i, j)| format!("{}:8080", pod_ip(i, j)))
        .collect();
    (eps, addrs)
}

/// Node `i`'s agent: TC on its fabric device, the API server through the
/// forwarder (the kubeconfig's address is the node's own loopback), small
/// conntrack tables.
fn agent_config(sb: &ClusterSandbox, api: &ApiServer, i: usize) -> Result<AgentConfig> {
    // for_api_server runs the agent in our namespace; this one belongs in
    // the node's (its devices, its loopback), where the default ports are
    // free.
    let mut c = sb
        .agent_config_with_tc(i)?
        .for_api_server(&api.kubeconfig(), 10249, 10256);
    c.netns = Some(sb.node(i).ns.path().to_path_buf());
    c.extra_args.extend([
        format!("--map-size-conntrack={CONNTRACK}"),
        format!("--map-size-conntrack-new={CONNTRACK_NEW}"),
    ]);
    Ok(c)
}

fn world() -> Result<World> {
    let epoch = Instant::now();
    let sb = ClusterSandbox::new(ClusterConfig {
        nodes: NODES,
        pods_per_node: 2,
        probe_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_probe"))),
        shape: NetworkShape::HostGw,
        ..ClusterConfig::default()
    })?;
    let api = ApiServer::start(&[], &[])?;
    let node_namespaces: Vec<_> = (1..=NODES).map(|i| &sb.node(i).ns).collect();
    let forward = LoopbackForward::start(&node_namespaces, api.port())?;
    let kube = Kube::connect(&api.kubeconfig())?;
    kube.apply_yaml(&web_yaml(&endpoints(false).0))?;
    let mut agents = Vec::new();
    for i in 1..=NODES {
        agents.push(Agent::start(agent_config(&sb, &api, i)?)?);
    }
    let want = endpoints(false).1;
    for (n, agent) in agents.iter_mut().enumerate() {
        wait_synced(agent).with_context(|| format!("node {}'s agent", n + 1))?;
        agent.wait_for_backends("0.0.0.0", TCP_NODE_PORT, "TCP", &want, T)?;
    }
    Ok(World {
        agents,
        _forward: forward,
        kube,
        api,
        sb,
        epoch,
        events: Vec::new(),
        agent_restarts: 0,
        api_restarts: 0,
        endpoint_changes: 0,
    })
}

/// Waits until the agent's current run (the log after its last start
/// line) has finished its first sync from the API server: the pins of an
/// earlier run would satisfy a look at the maps at once.
fn wait_synced(agent: &mut Agent) -> Result<()> {
    let deadline = Instant::now() + T;
    loop {
        agent.check_alive()?;
        let log = std::fs::read_to_string(agent.log_path())?;
        let run = log
            .rsplit_once("===== bpfproxy-tests: start #")
            .map_or(log.as_str(), |(_, r)| r);
        if run.lines().any(is_first_sync_line) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "no first sync within {T:?}; log tail:\n{}",
            agent.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The agent's "synced ops=… failed=…" line (every run logs its first).
fn is_first_sync_line(line: &str) -> bool {
    line.contains(" synced") && line.contains("ops=")
}

/// `probe MODE --to TO --count 1` in namespace `ns`, in `cgroup` if given
/// (the paths are owned: the loop thread outlives any borrow).
fn request(
    probe: PathBuf,
    ns: PathBuf,
    cgroup: Option<PathBuf>,
    mode: &'static str,
    to: String,
) -> MakeRequest {
    Box::new(move || {
        let mut c = Command::new(&probe);
        netns::enter(&mut c, Some(&ns), cgroup.as_deref())?;
        c.args([mode, "--to", &to, "--count", "1"])
            .args(["--timeout-ms", &REQUEST_TIMEOUT_MS.to_string()]);
        Ok(c)
    })
}

/// The four loops: TCP and UDP through node 3's NodePorts from the
/// external client, TCP and UDP to the ClusterIP from the client pod.
fn start_loops(w: &World) -> Vec<RequestLoop> {
    let probe = w.sb.probe_bin().to_path_buf();
    let client = w.sb.client_ns().path().to_path_buf();
    let (i, j) = CLIENT_POD;
    let pod = w.sb.pod(i, j).ns.path().to_path_buf();
    let cgroup = Some(w.sb.node(i).cgroup.path().to_path_buf());
    let entry = node_ip(ENTRY);
    let specs: [(&str, MakeRequest); 4] = [
        (
            "tcp nodeport",
            request(
                probe.clone(),
                client.clone(),
                None,
                "tcp",
                format!("{entry}:{TCP_NODE_PORT}"),
            ),
        ),
        (
            "udp nodeport",
            request(
                probe.clone(),
                client,
                None,
                "udp",
                format!("{entry}:{UDP_NODE_PORT}"),
            ),
        ),
        (
            "tcp clusterip",
            request(
                probe.clone(),
                pod.clone(),
                cgroup.clone(),
                "tcp",
                format!("{CLUSTER_IP}:80"),
            ),
        ),
        (
            "udp clusterip",
            request(probe, pod, cgroup, "udp", format!("{CLUSTER_IP}:53")),
        ),
    ];
    // One probe run: the request's own timeouts (connect, then read) and
    // the process's start on a loaded machine.
    let bound = Duration::from_millis(3 * REQUEST_TIMEOUT_MS) + Duration::from_secs(10);
    specs
        .into_iter()
        .map(|(name, make)| RequestLoop::spawn(name, make, INTERVAL, bound, w.epoch))
        .collect()
}

/// SIGKILL (no cleanup runs, as in a crash or an OOM kill) and a new
/// agent, waited for until it has synced from the API server.
fn kill_and_restart(w: &mut World, i: usize) -> Result<()> {
    w.event(format!("SIGKILL node {i}'s agent"));
    let a = &mut w.agents[i - 1];
    a.kill()?;
    a.start_again()?;
    wait_synced(a).with_context(|| format!("node {i}'s restarted agent"))?;
    w.agent_restarts += 1;
    w.event(format!("node {i}'s new agent has synced"));
    Ok(())
}

/// The API server stops; meanwhile node 2's agent is SIGKILLed and
/// restarted (it must keep serving from its pins without a first sync);
/// the server comes back on the same port and node 2's agent syncs.
fn api_server_outage(w: &mut World) -> Result<()> {
    w.event("API server stopped".into());
    w.api.stop_server();
    w.event("SIGKILL node 2's agent (API server down)".into());
    w.agents[1].kill()?;
    w.agents[1].start_again()?;
    std::thread::sleep(OUTAGE);
    ensure!(
        w.agents[1].is_running(),
        "an agent without its API server keeps running"
    );
    w.api.start_server()?;
    w.api_restarts += 1;
    w.event("API server back".into());
    wait_synced(&mut w.agents[1]).context("node 2's agent after the outage")?;
    w.agent_restarts += 1;
    w.event("node 2's new agent has synced".into());
    Ok(())
}

/// `CHURN_CHANGES` changes through the API server, adding and removing the
/// churned endpoint; each waited for in every agent's maps.
fn churn(w: &mut World) -> Result<()> {
    for n in 0..CHURN_CHANGES {
        let with = n % 2 == 0;
        let (eps, want) = endpoints(with);
        w.kube.apply_yaml(&web_yaml(&eps))?;
        for (k, agent) in w.agents.iter_mut().enumerate() {
            agent
                .wait_for_backends("0.0.0.0", TCP_NODE_PORT, "TCP", &want, T)
                .with_context(|| format!("change {}: node {}", n + 1, k + 1))?;
        }
        w.endpoint_changes += 1;
        let (i, j) = CHURNED;
        let verb = if with { "added" } else { "removed" };
        w.event(format!(
            "change {}: {} {verb}, in every agent",
            n + 1,
            pod_name(i, j)
        ));
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// Node 3's datapath counter `name`.
fn entry_counter(w: &World, name: &str) -> Result<u64> {
    let d = w.agents[ENTRY - 1].dump_json()?;
    Ok(d["counters"][name].as_u64().unwrap_or(0))
}

/// Node 3's `Udp: NoPorts`: datagrams its own stack got for a port no
/// socket holds. Every UDP request through its NodePort is DNATed and
/// SNATed, so the only ones are backend replies that came back
/// untranslated (their conntrack entry gone): what a failed UDP NodePort
/// request looks like from the node.
fn entry_udp_no_ports(w: &World) -> Result<u64> {
    let snmp =
        w.sb.node(ENTRY)
            .ns
            .run(&["cat", "/proc/net/snmp"], Duration::from_secs(10))?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next(), udp.next());
    let (Some(names), Some(values)) = (names, values) else {
        anyhow::bail!("no Udp lines in /proc/net/snmp:\n{snmp}");
    };
    let at = names
        .split_whitespace()
        .position(|n| n == "NoPorts")
        .context("no NoPorts column")?;
    let v = values
        .split_whitespace()
        .nth(at)
        .context("no NoPorts value")?;
    Ok(v.parse()?)
}

/// A spoofed SYN flood of twice the confirmed conntrack table against node
/// 3's TCP NodePort, from the external client's namespace; returns how
/// many SYNs were sent.
fn flood(w: &mut World) -> Result<u32> {
    let before = entry_counter(w, "tc_new_flow")?;
    let count = 2 * CONNTRACK;
    w.event(format!("spoofed SYN flood of {count} starts"));
    let started = Instant::now();
    let to: Ipv4Addr = node_ip(ENTRY).parse()?;
    let sent = spoofed_syn_flood(w.sb.client_ns(), (to, TCP_NODE_PORT), count)?;
    let took = started.elapsed();
    w.event(format!("flood sent: {sent} SYNs in {took:?}"));
    let new_flows = entry_counter(w, "tc_new_flow")? - before;
    ensure!(
        sent == count && new_flows >= u64::from(count),
        "the flood must reach node {ENTRY}'s datapath: {sent} sent, {new_flows} new flows counted"
    );
    // The flood's aftermath (the backends' SYN-ACK retransmissions to the
    // spoofed sources) runs into the loops too.
    std::thread::sleep(Duration::from_secs(3));
    Ok(sent)
}

/// The chaos, in sequence, with pauses in which the loops run on a quiet
/// cluster; returns the flood size.
fn chaos(w: &mut World) -> Result<u32> {
    let pause = || std::thread::sleep(Duration::from_secs(2));
    pause();
    kill_and_restart(w, ENTRY)?;
    pause();
    kill_and_restart(w, CLIENT_POD.0)?;
    pause();
    api_server_outage(w)?;
    pause();
    churn(w)?;
    pause();
    let sent = flood(w)?;
    pause();
    Ok(sent)
}

/// Fails unless `t` made enough requests, none failed, and both stable
/// backends answered.
fn check_loop(name: &str, t: &LoopTally) -> Result<()> {
    ensure!(
        t.failed == 0,
        "{name}: {} of {} requests failed; first failures: {:#?}",
        t.failed,
        t.sent,
        t.failures
    );
    ensure!(
        t.ok >= MIN_OK,
        "{name}: only {} requests succeeded (want at least {MIN_OK})",
        t.ok
    );
    for (i, j) in [(1, 1), (2, 1)] {
        ensure!(
            t.by_backend.contains_key(&pod_name(i, j)),
            "{name}: {} never answered: {:?}",
            pod_name(i, j),
            t.by_backend
        );
    }
    Ok(())
}

#[test]
fn request_loops_lose_nothing_through_agent_kills_an_api_server_restart_churn_and_a_flood(
) -> Result<()> {
    let mut w = world()?;
    w.event("cluster ready, loops start".into());
    let loops = start_loops(&w);
    let chaos_started = Instant::now();
    let outcome = chaos(&mut w);
    let chaos_took = chaos_started.elapsed();
    // The loops stop whatever the chaos did, so their figures always show.
    let mut tallies = Vec::new();
    for l in loops {
        let name = l.name().to_string();
        tallies.push((name, l.finish()?));
    }
    for (name, t) in &tallies {
        eprintln!(
            "chaos: {name}: sent {} ok {} failed {}; slowest request {:?}; by backend {:?}",
            t.sent, t.ok, t.failed, t.slowest, t.by_backend
        );
    }
    let no_ports = entry_udp_no_ports(&w)?;
    eprintln!("chaos: node {ENTRY} got {no_ports} untranslated UDP replies (Udp NoPorts)");
    let flood_size = outcome?;
    eprintln!(
        "chaos: {} agent restarts (SIGKILL), {} API server restarts ({OUTAGE:?} down), {} endpoint changes, a flood of {flood_size} spoofed SYNs (conntrack {CONNTRACK}/{CONNTRACK_NEW}); chaos took {chaos_took:?}, the whole test {:?}",
        w.agent_restarts,
        w.api_restarts,
        w.endpoint_changes,
        w.epoch.elapsed()
    );
    for (name, t) in &tallies {
        check_loop(name, t)?;
    }
    let (i, j) = CHURNED;
    let churned: u64 = tallies
        .iter()
        .map(|(_, t)| t.by_backend.get(&pod_name(i, j)).copied().unwrap_or(0))
        .sum();
    ensure!(
        churned > 0,
        "the churned endpoint never answered a loop: the churn did not reach the datapath"
    );
    for (n, a) in w.agents.iter_mut().enumerate() {
        a.check_alive()
            .with_context(|| format!("node {}'s agent", n + 1))?;
    }
    Ok(())
}
