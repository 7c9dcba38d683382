//! NodePort Services end to end in the multi-node sandbox, the way users
//! test them: `NODE_IP:nodePort` from a client outside the cluster, on nodes
//! with and without a local backend, with both external traffic policies.
//!
//! Every node runs its own agent with `--devices <its fabric device>`; the
//! servers answer `<name> <client-ip>` (`probe serve --echo-peer`), so a test
//! sees which backend answered and which source address it saw.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bpfproxy_tests::{
    agent::AgentConfig,
    manifest::{self, Endpoint, ServiceSpec},
    multinode::{
        answers_by_backend, k8s_node_name, node_ip, node_port_service, pod_endpoint, pod_ip,
        pod_name, split_echo_peer, ClusterConfig, ClusterSandbox, NetworkShape, CLIENT_IP,
    },
    process::{self, ChildGuard},
    Agent, Netns, TcpReport, UdpReport,
};

/// How long agents may take to program a change: a bound, not a target
/// (three agents starting under the kernel matrix's software CPU spend
/// 10-20 s each loading their programs).
const T: Duration = Duration::from_secs(60);
const NODES: usize = 3;
const NODE_PORT: u16 = 30080;
const CLUSTER_IP: &str = "10.96.0.30";
/// An externalIP (TEST-NET-3): no node has it, the client routes it to one.
const EXTERNAL_IP: &str = "203.0.113.50";
/// A LoadBalancer ingress IP, routed like the externalIP.
const LB_IP: &str = "203.0.113.60";
/// Connections per node for the spread checks.
const CONNS: u64 = 60;
/// Probe timeout for connections that are expected to fail.
const FAIL_TIMEOUT_MS: u64 = 1000;

fn cluster(shape: NetworkShape) -> Result<ClusterSandbox> {
    cluster_with(shape, 1)
}

fn cluster_with(shape: NetworkShape, pods_per_node: usize) -> Result<ClusterSandbox> {
    ClusterSandbox::new(ClusterConfig {
        nodes: NODES,
        pods_per_node,
        probe_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_probe"))),
        echo_peer: true,
        shape,
        ..ClusterConfig::default()
    })
}

/// `default/<name>`: type NodePort, `nodePort` → 8080, with a ClusterIP.
fn nodeport_service(name: &str, cluster_ip: &str, node_port: u16, etp: &str) -> String {
    let ports = [("http", 80, 8080, "TCP", node_port)];
    node_port_service(&format!("default/{name}"), cluster_ip, &ports, etp)
}

/// The slice of `default/web`: pod 1 of each node in `nodes`, with its
/// `nodeName` (`node-<i>`, the agents' `--node-name`).
fn web_slice(nodes: &[usize]) -> String {
    let eps: Vec<Endpoint> = nodes.iter().map(|&i| pod_endpoint(i, 1)).collect();
    manifest::endpoint_slice_with("default/web", "web-1", &eps, &[("http", 8080, "TCP")])
}

fn backend(i: usize) -> String {
    format!("{}:8080", pod_ip(i, 1))
}

/// Writes `default/web` (eTP `etp`) backed by pod 1 of nodes 1 and 2.
fn write_web(sb: &ClusterSandbox, etp: &str) -> Result<()> {
    sb.write_manifest(
        "web.yaml",
        &manifest::documents(&[
            nodeport_service("web", CLUSTER_IP, NODE_PORT, etp),
            web_slice(&[1, 2]),
        ]),
    )
}

/// Starts node `i`'s agent with TC on its fabric device.
fn start_agent(sb: &ClusterSandbox, i: usize) -> Result<Agent> {
    Agent::start(sb.agent_config_with_tc(i)?)
}

/// One agent per node, each waited for until its NodePort frontend has
/// `want(i)` as backends.
fn start_agents(sb: &ClusterSandbox, want: impl Fn(usize) -> Vec<String>) -> Result<Vec<Agent>> {
    start_agents_with(|i| sb.agent_config_with_tc(i), want)
}

/// [`start_agents`] with node `i`'s agent configured by `config(i)`.
fn start_agents_with(
    config: impl Fn(usize) -> Result<AgentConfig>,
    want: impl Fn(usize) -> Vec<String>,
) -> Result<Vec<Agent>> {
    let mut agents = Vec::new();
    for i in 1..=NODES {
        agents.push(Agent::start(config(i)?)?);
    }
    for (n, agent) in agents.iter_mut().enumerate() {
        agent
            .wait_for_backends("0.0.0.0", NODE_PORT, "TCP", &want(n + 1), T)
            .with_context(|| format!("node {}'s agent", n + 1))?;
    }
    Ok(agents)
}

/// `<name> <peer>` answers grouped: backend name → client addresses seen.
fn by_name(r: &TcpReport) -> Result<BTreeMap<String, BTreeSet<String>>> {
    Ok(answers_by_backend(r)?
        .into_iter()
        .map(|(name, a)| (name, a.peers))
        .collect())
}

fn np(i: usize) -> String {
    format!("{}:{NODE_PORT}", node_ip(i))
}

fn every_node_serves_the_node_port_and_all_backends_are_reached(shape: NetworkShape) -> Result<()> {
    let sb = cluster(shape)?;
    write_web(&sb, "Cluster")?;
    let mut agents = start_agents(&sb, |_| vec![backend(1), backend(2)])?;
    let want: BTreeSet<String> = [pod_name(1, 1), pod_name(2, 1)].into();
    for i in 1..=NODES {
        let r = sb.client_tcp(&np(i), CONNS, T)?;
        let names = by_name(&r)?;
        println!("node {i} ({}): {:?}", np(i), r.by_backend);
        ensure!(r.ok == CONNS, "node {i}: {r:?}");
        let seen: BTreeSet<String> = names.keys().cloned().collect();
        ensure!(seen == want, "node {i}: all backends, nothing else: {r:?}");
    }
    // `kubectl delete service web`: nothing is left in the maps, and the
    // port is a closed port of the node again.
    manifest::remove_file(&sb.source_dir(), "web.yaml")?;
    for (n, agent) in agents.iter_mut().enumerate() {
        let dump = agent.wait_until(|d| bpfproxy_tests::agent::frontend_count(d) == 0, T)?;
        let entries = &dump["entries"];
        ensure!(
            ["services", "backends", "rev_nat", "names"]
                .iter()
                .all(|m| entries[m] == 0),
            "node {}: map entries left: {entries}",
            n + 1
        );
    }
    for i in 1..=NODES {
        let c = sb.client_connect(&np(i), FAIL_TIMEOUT_MS)?;
        ensure!(
            c.errno == Some(libc::ECONNREFUSED),
            "node {i}: a deleted NodePort is a closed port: {c:?}"
        );
    }
    Ok(())
}

fn node_ports_are_served_on_the_clsact_path_of_older_kernels_across_a_restart(
    shape: NetworkShape,
) -> Result<()> {
    let sb = cluster(shape)?;
    write_web(&sb, "Cluster")?;
    let mut agents = Vec::new();
    for i in 1..=NODES {
        let mut cfg = sb.agent_config_with_tc(i)?;
        cfg.extra_args.push("--tc-attach=clsact".to_string());
        agents.push(Agent::start(cfg)?);
    }
    let want = [backend(1), backend(2)];
    for agent in &mut agents {
        agent.wait_for_backends("0.0.0.0", NODE_PORT, "TCP", &want, T)?;
    }
    let mut conn = sb.client_hold(&np(3))?;
    let first = conn.ping()?;
    // A restart swaps the program inside the same filter: the held flow
    // goes on, new connections are served, and no second filter appears.
    agents[2].restart()?;
    agents[2].wait_for_backends("0.0.0.0", NODE_PORT, "TCP", &want, T)?;
    for i in 1..=NODES {
        let r = sb.client_tcp(&np(i), 20, T)?;
        ensure!(r.ok == 20 && r.by_backend.len() == 2, "node {i}: {r:?}");
    }
    ensure!(
        conn.ping()? == first,
        "the held connection kept its backend"
    );
    let node = sb.node(3);
    for hook in ["ingress", "egress"] {
        let out = node
            .ns
            .command("tc")?
            .args(["filter", "show", "dev", &node.device, hook])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let filters = text.lines().filter(|l| l.contains("direct-action")).count();
        ensure!(
            filters == 1,
            "node 3 {hook}: one filter after the restart:\n{text}"
        );
    }
    conn.close()?;
    Ok(())
}

fn client_ip_affinity_keeps_an_external_client_on_one_backend(shape: NetworkShape) -> Result<()> {
    let sb = cluster(shape)?;
    let mut svc = ServiceSpec::cluster_ip("default/web", CLUSTER_IP).port("http", 80, 8080, "TCP");
    svc.type_ = "NodePort".to_string();
    svc.ports[0].node_port = Some(NODE_PORT);
    svc.client_ip_affinity_seconds = Some(300);
    sb.write_manifest(
        "web.yaml",
        &manifest::documents(&[svc.to_yaml(), web_slice(&[1, 2])]),
    )?;
    let _agents = start_agents(&sb, |_| vec![backend(1), backend(2)])?;
    for i in 1..=NODES {
        // Fresh connections, each from a new client port: without affinity
        // 60 of them would reach both backends (p of one = 2^-59).
        let r = sb.client_tcp(&np(i), CONNS, T)?;
        println!("node {i} ({}): {:?}", np(i), r.by_backend);
        if r.ok != CONNS {
            // What the node's datapath counted and knows of its devices.
            let bin = bpfproxy_tests::paths::bpfproxy_bin()?;
            let dump = bpfproxy_tests::agent::dump_json(&bin, sb.node(i).bpffs.path());
            bail!("node {i}: {r:?}\nnode {i}'s dump: {dump:?}");
        }
        let names = by_name(&r)?;
        ensure!(
            names.len() == 1,
            "node {i}: one client IP must stay on one backend: {r:?}"
        );
    }
    Ok(())
}

/// Routes `ip` from the external client via node `i`, as an upstream
/// router (or a cloud load balancer) would for an externalIP or LB IP.
fn route_via_node(sb: &ClusterSandbox, ip: &str, i: usize) -> Result<()> {
    let via = node_ip(i);
    let status = sb
        .client_command("ip")?
        .args(["route", "add", &format!("{ip}/32"), "via", &via])
        .status()
        .context("ip route add")?;
    ensure!(status.success(), "ip route add {ip} via {via}: {status}");
    Ok(())
}

fn external_ips_and_load_balancer_ips_are_served_from_outside(shape: NetworkShape) -> Result<()> {
    let sb = cluster(shape)?;
    let mut svc = ServiceSpec::cluster_ip("default/web", CLUSTER_IP).port("http", 80, 8080, "TCP");
    svc.type_ = "LoadBalancer".to_string();
    svc.ports[0].node_port = Some(NODE_PORT);
    svc.external_ips = vec![EXTERNAL_IP.to_string()];
    svc.load_balancer_ips = vec![LB_IP.to_string()];
    sb.write_manifest(
        "web.yaml",
        &manifest::documents(&[svc.to_yaml(), web_slice(&[1, 2])]),
    )?;
    let mut agents = start_agents(&sb, |_| vec![backend(1), backend(2)])?;
    let want = [backend(1), backend(2)];
    agents[2].wait_for_backends(LB_IP, 80, "TCP", &want, T)?;
    // Node 3 has no local backend: DNAT and SNAT to its address.
    for ip in [EXTERNAL_IP, LB_IP] {
        route_via_node(&sb, ip, 3)?;
        let r = sb.client_tcp(&format!("{ip}:80"), CONNS, T)?;
        println!("{ip}: {:?}", r.by_backend);
        ensure!(r.ok == CONNS, "{ip}: {r:?}");
        let names = by_name(&r)?;
        let want: BTreeMap<String, BTreeSet<String>> = [1, 2]
            .map(|j| (pod_name(j, 1), [sb.snat_ip(3)].into()))
            .into();
        ensure!(
            names == want,
            "{ip}: both backends, each seeing node 3: {names:?}"
        );
    }
    Ok(())
}

/// `loadBalancerSourceRanges`: the LB IP answers a client inside the
/// ranges; after the ranges change to exclude it, its new connections are
/// dropped and counted, and `bpfproxy dump` shows the ranges.
fn load_balancer_source_ranges_keep_an_lb_ip_private(shape: NetworkShape) -> Result<()> {
    let sb = cluster(shape)?;
    let write = |ranges: &[&str]| {
        let mut svc =
            ServiceSpec::cluster_ip("default/web", CLUSTER_IP).port("http", 80, 8080, "TCP");
        svc.type_ = "LoadBalancer".to_string();
        svc.ports[0].node_port = Some(NODE_PORT);
        svc.load_balancer_ips = vec![LB_IP.to_string()];
        svc.source_ranges = ranges.iter().map(|r| r.to_string()).collect();
        sb.write_manifest(
            "web.yaml",
            &manifest::documents(&[svc.to_yaml(), web_slice(&[1, 2])]),
        )
    };
    write(&[&format!("{CLIENT_IP}/32"), "10.0.0.0/8"])?;
    let mut agents = start_agents(&sb, |_| vec![backend(1), backend(2)])?;
    agents[2].wait_for_backends(LB_IP, 80, "TCP", &[backend(1), backend(2)], T)?;
    route_via_node(&sb, LB_IP, 3)?;
    let to = format!("{LB_IP}:80");
    let r = sb.client_tcp_counted(&to, 20, 1000)?;
    ensure!(r.ok == 20, "inside the ranges: {r:?}");
    let dump = agents[2].dump_text()?;
    ensure!(
        dump.contains(&format!("only from: 10.0.0.0/8, {CLIENT_IP}/32")),
        "{dump}"
    );
    write(&["10.0.0.0/8"])?;
    agents[2].wait_until(
        |d| {
            d.to_string().contains("10.0.0.0/8")
                && !d.to_string().contains(&format!("{CLIENT_IP}/32"))
        },
        T,
    )?;
    let c = sb.client_connect(&to, FAIL_TIMEOUT_MS)?;
    ensure!(!c.ok, "outside the ranges: {c:?}");
    let dropped = agents[2].dump_json()?["counters"]["tc_drop_source_range"]
        .as_u64()
        .unwrap_or(0);
    ensure!(dropped >= 1, "counted: {dropped}");
    // The NodePort of the same Service is not restricted (kube-proxy
    // applies the ranges to the LB IPs only).
    let r = sb.client_tcp_counted(&np(3), 10, 1000)?;
    ensure!(r.ok == 10, "{r:?}");
    Ok(())
}

fn etp_cluster_a_remote_backend_sees_the_node_address(shape: NetworkShape) -> Result<()> {
    let sb = cluster(shape)?;
    write_web(&sb, "Cluster")?;
    let _agents = start_agents(&sb, |_| vec![backend(1), backend(2)])?;
    every_node_snats_to_its_node_to_node_address(&sb)
}

/// `--devices auto` on every node: the client-facing NIC serves (the
/// overlay does not, yet replies coming back by it are translated), as
/// with `--devices` naming the NIC.
fn devices_auto_serves_as_naming_the_client_nic_does(shape: NetworkShape) -> Result<()> {
    let sb = cluster(shape)?;
    write_web(&sb, "Cluster")?;
    let agents = start_agents_with(
        |i| {
            let mut cfg = sb.agent_config(i)?;
            cfg.extra_args.push("--devices=auto".to_string());
            Ok(cfg)
        },
        |_| vec![backend(1), backend(2)],
    )?;
    every_node_snats_to_its_node_to_node_address(&sb)?;
    let log = std::fs::read_to_string(agents[2].log_path())?;
    let placed = log
        .lines()
        .rfind(|l| l.contains("TC programs on these devices"))
        .context("node 3 logged no TC devices")?;
    println!("node 3: {placed}");
    if let Some(cluster_device) = &sb.node(3).cluster_device {
        ensure!(
            placed.contains(cluster_device.as_str()),
            "node 3 must translate replies on {cluster_device}: {placed}"
        );
    }
    Ok(())
}

/// From outside, every node's NodePort reaches both backends; a backend
/// on another node than the one the client used sees that node's address
/// on its node-to-node device, the one on the same node the client itself.
fn every_node_snats_to_its_node_to_node_address(sb: &ClusterSandbox) -> Result<()> {
    // Node 3 first: it has no backend, so all of its traffic crosses.
    for i in [3, 1, 2] {
        let r = sb.client_tcp_counted(&np(i), CONNS, 500)?;
        println!(
            "{} node {i}: {} of {CONNS} connections failed",
            sb.config().shape,
            r.failed
        );
        if r.ok != CONNS {
            // What the node's datapath counted and knows of its devices.
            let bin = bpfproxy_tests::paths::bpfproxy_bin()?;
            let dump = bpfproxy_tests::agent::dump_json(&bin, sb.node(i).bpffs.path());
            bail!("node {i}: {r:?}\nnode {i}'s dump: {dump:?}");
        }
        // SNAT ports lie outside the node's ephemeral range, and the agent
        // reserved them in the node's network namespace.
        let reserved = sb.node(i).ns.run(
            &["cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"],
            Duration::from_secs(5),
        )?;
        ensure!(
            reserved.contains("61000-65535"),
            "node {i}: SNAT ports not reserved: {reserved:?}"
        );
        let names = by_name(&r)?;
        println!("node {i}: backend → client addresses seen: {names:?}");
        for j in [1, 2] {
            let Some(peers) = names.get(&pod_name(j, 1)) else {
                bail!("node {i}: {} never answered: {r:?}", pod_name(j, 1));
            };
            // A backend on the node the client hit needs no SNAT: replies
            // go back through that node anyway.
            let want = if j == i {
                CLIENT_IP.to_string()
            } else {
                sb.snat_ip(i)
            };
            ensure!(
                peers.iter().all(|p| *p == want),
                "node {i}: {} saw {peers:?}, expected only {want}",
                pod_name(j, 1)
            );
        }
    }
    Ok(())
}

/// Node 3's conntrack: small tables, so a flood of twice the confirmed one
/// is quick to send.
const SMALL_CONNTRACK: u32 = 4096;

/// A spoofed SYN flood of twice node 3's confirmed conntrack table against
/// its NodePort: connections established before it keep working, both ways,
/// and fresh connections work after it.
fn established_connections_survive_a_spoofed_syn_flood(shape: NetworkShape) -> Result<()> {
    let sb = cluster(shape)?;
    write_web(&sb, "Cluster")?;
    let agents = start_agents_with(
        |i| {
            let mut cfg = sb.agent_config_with_tc(i)?;
            cfg.extra_args.extend([
                format!("--map-size-conntrack={SMALL_CONNTRACK}"),
                "--map-size-conntrack-new=1024".to_string(),
            ]);
            Ok(cfg)
        },
        |_| vec![backend(1), backend(2)],
    )?;
    // Through node 3, which has no local backend: DNAT + SNAT.
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut conn = sb.client_hold(&np(3))?;
        let first = conn.ping()?;
        held.push((conn, first));
    }
    let node3: Ipv4Addr = node_ip(3).parse()?;
    let flood = 2 * SMALL_CONNTRACK;
    let started = Instant::now();
    let sent = bpfproxy_tests::flood::spoofed_syn_flood(sb.client_ns(), (node3, NODE_PORT), flood)?;
    println!("{shape}: {sent} spoofed SYNs in {:?}", started.elapsed());
    let mut broken = Vec::new();
    for (n, (conn, first)) in held.iter_mut().enumerate() {
        match conn.ping() {
            Ok(a) if a == *first => {}
            other => broken.push(format!("connection {n}: {other:?}")),
        }
    }
    let counters = agents[2].dump_json()?["counters"].clone();
    let count = |name: &str| counters[name].as_u64().unwrap_or(0);
    println!(
        "{shape}: node 3 counted {} new flows, {} confirmed; {} of 8 held connections broke",
        count("tc_new_flow"),
        count("tc_ct_confirmed"),
        broken.len()
    );
    ensure!(broken.is_empty(), "after the flood: {broken:?}");
    ensure!(
        count("tc_new_flow") >= u64::from(flood),
        "the flood did not reach node 3's datapath: {counters}"
    );
    ensure!(
        count("tc_ct_confirmed") < 100,
        "flood SYNs were confirmed: {counters}"
    );
    // Fresh connections work once the flood's own traffic has drained (the
    // backends' SYN-ACKs to the spoofed sources, through the relays of the
    // shapes that have one).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = sb.client_tcp_counted(&np(3), 20, 500)?;
        if r.ok == 20 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "fresh connections after the flood: {r:?}"
        );
        println!("{shape}: fresh connections right after the flood: {r:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    for (conn, _) in held {
        conn.close()?;
    }
    Ok(())
}

/// Bytes of the download test: thousands of full-size segments.
const DOWNLOAD_BYTES: usize = 5 * 1024 * 1024;
const DOWNLOAD_PORT: u16 = 8081;
const DOWNLOAD_NODE_PORT: u16 = 30082;

/// `python3 -m http.server` serving `dir` in pod 1 of node `i`, once it
/// answers (the interpreter takes a while to start on a busy machine).
fn http_server(sb: &ClusterSandbox, i: usize, dir: &Path) -> Result<ChildGuard> {
    let server = spawn_http_server(sb, i, dir)?;
    let url = format!("http://{}:{DOWNLOAD_PORT}/", pod_ip(i, 1));
    let deadline = Instant::now() + T;
    loop {
        let mut probe = sb.pod_command(i, 1, "curl")?;
        probe.args(["-s", "-o", "/dev/null", "--max-time", "1", &url]);
        if process::run_with_timeout(&mut probe, Duration::from_secs(5)).is_ok() {
            return Ok(server);
        }
        ensure!(
            Instant::now() < deadline,
            "{url} did not answer within {T:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_http_server(sb: &ClusterSandbox, i: usize, dir: &Path) -> Result<ChildGuard> {
    let mut cmd = sb.pod_command(i, 1, "python3")?;
    cmd.args([
        "-m",
        "http.server",
        &DOWNLOAD_PORT.to_string(),
        "--bind",
        &pod_ip(i, 1),
    ])
    .arg("--directory")
    .arg(dir)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    Ok(ChildGuard(
        cmd.spawn().context("starting python3 -m http.server")?,
    ))
}

/// curl downloads a 5 MB file through the NodePort of node 3 (no local
/// backend) from a backend on another node: full-size segments cross the
/// shape's node-to-node device (1450 bytes on the VXLAN overlay) and the
/// file arrives whole.
fn a_5_mb_download_through_a_node_without_a_backend_arrives_whole(
    shape: NetworkShape,
) -> Result<()> {
    let sb = cluster(shape)?;
    let www = sb.work_dir().join("www");
    std::fs::create_dir_all(&www)?;
    // Not compressible, not periodic: a corrupted or reordered segment shows.
    let mut x: u32 = 0x9e37_79b9;
    let blob: Vec<u8> = (0..DOWNLOAD_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    std::fs::write(www.join("blob"), &blob)?;
    let _servers = [http_server(&sb, 1, &www)?, http_server(&sb, 2, &www)?];
    let ports = [("http", 80, DOWNLOAD_PORT, "TCP", DOWNLOAD_NODE_PORT)];
    let slice_eps: Vec<Endpoint> = [1, 2].iter().map(|&i| pod_endpoint(i, 1)).collect();
    sb.write_manifest(
        "dl.yaml",
        &manifest::documents(&[
            node_port_service("default/dl", "10.96.0.32", &ports, "Cluster"),
            manifest::endpoint_slice_with(
                "default/dl",
                "dl-1",
                &slice_eps,
                &[("http", DOWNLOAD_PORT, "TCP")],
            ),
        ]),
    )?;
    let want: Vec<String> = [1, 2]
        .iter()
        .map(|&i| format!("{}:{DOWNLOAD_PORT}", pod_ip(i, 1)))
        .collect();
    let mut agents = Vec::new();
    for i in 1..=NODES {
        agents.push(start_agent(&sb, i)?);
    }
    for agent in &mut agents {
        agent.wait_for_backends("0.0.0.0", DOWNLOAD_NODE_PORT, "TCP", &want, T)?;
    }
    let url = format!("http://{}:{DOWNLOAD_NODE_PORT}/blob", node_ip(3));
    let out = sb.work_dir().join("downloaded");
    for attempt in 1..=4 {
        let _ = std::fs::remove_file(&out);
        let mut curl = sb.client_command("curl")?;
        curl.args([
            "-sS",
            "--connect-timeout",
            "3",
            "--max-time",
            "60",
            "-w",
            "%{http_code} %{size_download} %{speed_download}",
            "-o",
        ])
        .arg(&out)
        .arg(&url);
        let stats = process::run_with_timeout(&mut curl, Duration::from_secs(70))
            .with_context(|| format!("curl {url} (attempt {attempt})"))?;
        println!("{shape}: download {attempt} through node 3: {stats} (code, bytes, bytes/s)");
        let got = std::fs::read(&out).with_context(|| format!("{}", out.display()))?;
        ensure!(stats.starts_with("200 "), "attempt {attempt}: {stats}");
        ensure!(
            got.len() == blob.len(),
            "attempt {attempt}: {} of {} bytes",
            got.len(),
            blob.len()
        );
        ensure!(got == blob, "attempt {attempt}: the file arrived corrupted");
    }
    Ok(())
}

/// The path MTU test's pieces: a 1300-byte hop on each side of node 3.
const PMTU: u32 = 1300;
const PMTU_PORT: u16 = 8083;
const PMTU_NODE_PORT: u16 = 30083;
/// A client network behind a router on the client subnet.
const FAR_CLIENT: &str = "10.99.0.2";
const ROUTER_IP: &str = "192.168.50.200";
const TRANSFER_BYTES: usize = 2 * 1024 * 1024;

/// An HTTP server for the path MTU test: GET sends the file, PUT answers
/// with the length and SHA-256 of what it received.
const PMTU_SERVER: &str = r#"
import hashlib, http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok" if self.path == "/ping" else open(sys.argv[2], "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_PUT(self):
        n = int(self.headers["Content-Length"])
        data = self.rfile.read(n)
        body = ("%d %s" % (len(data), hashlib.sha256(data).hexdigest())).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[3])), H).serve_forever()
"#;

/// A client behind a router whose link towards it allows only [`PMTU`]
/// bytes: `far` (10.99.0.2/24, its own MTU 1500, a route to the client
/// subnet via the router and nothing else), `router` on the client subnet
/// (192.168.50.200). The router answers bigger packets towards the client
/// with "fragmentation needed", as a PPPoE or tunnel hop does.
struct FarClient {
    far: Netns,
    _links: [bpfproxy_tests::VethPair; 2],
    _router: Netns,
}

fn far_client(sb: &ClusterSandbox) -> Result<FarClient> {
    // Unique per sandbox: the kernel matrix runs tests as threads of one
    // process.
    static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let router = Netns::new(&format!("pmtu{n}r"))?;
    let far = Netns::new(&format!("pmtu{n}f"))?;
    let up =
        bpfproxy_tests::VethPair::new(&router, &[&format!("{ROUTER_IP}/24")], sb.fabric_ns(), &[])?;
    sb.fabric_ns()
        .ip(&["link", "set", up.b(), "master", "br0"])?;
    let down = bpfproxy_tests::VethPair::new(
        &router,
        &["10.99.0.1/24"],
        &far,
        &[&format!("{FAR_CLIENT}/24")],
    )?;
    router.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"], T)?;
    router.ip(&[
        "route",
        "replace",
        &format!("{FAR_CLIENT}/32"),
        "dev",
        down.a(),
        "mtu",
        "lock",
        &PMTU.to_string(),
    ])?;
    far.ip(&["route", "add", "192.168.50.0/24", "via", "10.99.0.1"])?;
    Ok(FarClient {
        far,
        _links: [up, down],
        _router: router,
    })
}

/// Path MTU discovery through a NodePort: 2 MB uploaded by the sandbox's
/// client and downloaded by the far client through node 3's NodePort from
/// a backend on node 1, with a 1300-byte hop on each side of node 3 (node
/// 1's route to its pod, the router towards the far client). The hops answer with "fragmentation
/// needed" about the translated packets (the SNAT address → backend, the
/// NodePort → client); node 3 must reverse-translate them for the sender
/// to shrink its segments, or the transfers stall.
fn path_mtu_discovery_works_through_a_node_port(shape: NetworkShape) -> Result<()> {
    let sb = cluster(shape)?;
    let far = far_client(&sb)?;
    sb.node(3)
        .ns
        .ip(&["route", "add", "10.99.0.0/24", "via", ROUTER_IP])?;
    let backend_ip = pod_ip(1, 1);
    sb.node(1).ns.ip(&[
        "route",
        "replace",
        &format!("{backend_ip}/32"),
        "dev",
        shape.pod_bridge(),
        "mtu",
        "lock",
        &PMTU.to_string(),
    ])?;
    let (blob, _server) = pmtu_backend(&sb)?;
    let work = sb.work_dir();
    let mut agent = start_agent(&sb, 3)?;
    let want = [format!("{backend_ip}:{PMTU_PORT}")];
    agent.wait_for_backends("0.0.0.0", PMTU_NODE_PORT, "TCP", &want, T)?;
    let url = format!("http://{}:{PMTU_NODE_PORT}/blob", node_ip(3));
    wait_for_http(
        &far.far,
        &format!("http://{}:{PMTU_NODE_PORT}/ping", node_ip(3)),
    )?;
    // Each transfer's errors teach one end the path MTU, and that end
    // then advertises a smaller MSS on new connections: the upload goes
    // first, from the sandbox's client (it learns about the NodePort), the
    // download then from the far client (the backend learns about the SNAT
    // address).
    let icmp_translated = |agent: &mut Agent| -> Result<u64> {
        Ok(agent.dump_json()?["counters"]["tc_icmp_translated"]
            .as_u64()
            .unwrap_or(0))
    };
    upload(sb.client_ns(), &url, &blob, &work.join("pmtu-blob"))?;
    let after_upload = icmp_translated(&mut agent)?;
    download(&far.far, &url, &blob, &work.join("pmtu-downloaded"))?;
    let after_download = icmp_translated(&mut agent)?;
    println!(
        "{shape}: node 3 translated {after_upload} ICMP errors uploading, {} downloading",
        after_download - after_upload
    );
    ensure!(
        after_upload >= 1 && after_download > after_upload,
        "errors about both directions were translated: {after_upload}, {after_download}"
    );
    Ok(())
}

/// GET `url` from `ns`: the backend's full-size segments hit the router's
/// hop towards the client.
fn download(ns: &Netns, url: &str, blob: &[u8], out: &Path) -> Result<()> {
    let mut curl = ns.command("curl")?;
    curl.args(["-sS", "--max-time", "30", "-o"])
        .arg(out)
        .arg(url);
    process::run_with_timeout(&mut curl, Duration::from_secs(40))
        .context("downloading through the NodePort")?;
    ensure!(
        std::fs::read(out)? == blob,
        "download arrived damaged or short"
    );
    Ok(())
}

/// PUT `file` (holding `blob`) to `url` from `ns`: the client's full-size
/// segments hit node 1's hop towards the backend.
fn upload(ns: &Netns, url: &str, blob: &[u8], file: &Path) -> Result<()> {
    let mut curl = ns.command("curl")?;
    curl.args(["-sS", "--max-time", "30", "-T"])
        .arg(file)
        .arg(url);
    let answer = process::run_with_timeout(&mut curl, Duration::from_secs(40))
        .context("uploading through the NodePort")?;
    let digest = sha256_hex(blob)?;
    ensure!(
        answer.trim() == format!("{} {digest}", blob.len()),
        "upload: the backend received {answer:?}"
    );
    Ok(())
}

/// The path MTU test's backend in pod 1 of node 1 (its server and
/// Service), and the random body it serves.
fn pmtu_backend(sb: &ClusterSandbox) -> Result<(Vec<u8>, ChildGuard)> {
    let mut x: u32 = 0x2545_f491;
    let blob: Vec<u8> = (0..TRANSFER_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let work = sb.work_dir();
    std::fs::write(work.join("pmtu-blob"), &blob)?;
    std::fs::write(work.join("pmtu_server.py"), PMTU_SERVER)?;
    let mut server = sb.pod_command(1, 1, "python3")?;
    server
        .arg(work.join("pmtu_server.py"))
        .arg(pod_ip(1, 1))
        .arg(work.join("pmtu-blob"))
        .arg(PMTU_PORT.to_string())
        .stdout(std::process::Stdio::null());
    let server = ChildGuard(server.spawn().context("starting the PMTU test server")?);
    let ports = [("http", 80, PMTU_PORT, "TCP", PMTU_NODE_PORT)];
    sb.write_manifest(
        "pmtu.yaml",
        &manifest::documents(&[
            node_port_service("default/pmtu", "10.96.0.33", &ports, "Cluster"),
            manifest::endpoint_slice_with(
                "default/pmtu",
                "pmtu-1",
                &[pod_endpoint(1, 1)],
                &[("http", PMTU_PORT, "TCP")],
            ),
        ]),
    )?;
    Ok((blob, server))
}

/// Waits until `url` answers from `ns` (the server and agent are up).
fn wait_for_http(ns: &Netns, url: &str) -> Result<()> {
    let deadline = Instant::now() + T;
    loop {
        let mut probe = ns.command("curl")?;
        probe.args(["-sf", "-o", "/dev/null", "--max-time", "1", url]);
        if process::run_with_timeout(&mut probe, Duration::from_secs(5)).is_ok() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{url} did not answer within {T:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SHA-256 of `data` in hex, by `sha256sum` (no hashing crate needed).
fn sha256_hex(data: &[u8]) -> Result<String> {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("sha256sum")?;
    child.stdin.take().context("stdin")?.write_all(data)?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8(out.stdout)?;
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

fn etp_local_keeps_the_client_address_and_nodes_without_endpoints_do_not_serve(
    shape: NetworkShape,
) -> Result<()> {
    let sb = cluster(shape)?;
    write_web(&sb, "Local")?;
    let _agents = start_agents(&sb, |i| match i {
        1 | 2 => vec![backend(i)],
        _ => vec![],
    })?;
    for i in [1, 2] {
        let r = sb.client_tcp(&np(i), 20, T)?;
        ensure!(r.ok == 20, "node {i}: {r:?}");
        let names = by_name(&r)?;
        println!("node {i}: {names:?}");
        let want: BTreeMap<String, BTreeSet<String>> =
            [(pod_name(i, 1), [CLIENT_IP.to_string()].into())].into();
        ensure!(
            names == want,
            "node {i}: only its local backend, seeing the real client: {names:?}"
        );
    }
    // Node 3 has no local endpoint: it must not serve the NodePort.
    let c = sb.client_connect(&np(3), FAIL_TIMEOUT_MS)?;
    println!("node 3 (no local endpoint): {c:?}");
    ensure!(
        !c.ok,
        "node 3 served an eTP=Local NodePort without endpoints: {c:?}"
    );
    ensure!(
        c.elapsed_ms <= (FAIL_TIMEOUT_MS + 500) as f64,
        "the failure took {} ms",
        c.elapsed_ms
    );
    Ok(())
}

/// Asserts a fast ECONNREFUSED for TCP and UDP to `tcp`/`udp` (`IP:PORT`).
fn assert_refused(sb: &ClusterSandbox, what: &str, tcp: &str, udp: &str) -> Result<()> {
    let c = sb.client_connect(tcp, FAIL_TIMEOUT_MS)?;
    println!("{what} TCP {tcp}: {c:?}");
    ensure!(
        !c.ok && c.errno == Some(libc::ECONNREFUSED),
        "{what}: TCP to a Service without endpoints must be refused: {c:?}"
    );
    ensure!(
        c.elapsed_ms < 100.0,
        "{what}: the TCP refusal took {} ms",
        c.elapsed_ms
    );
    // Connected UDP sockets report an ICMP port unreachable as
    // ECONNREFUSED on the next recv(), instead of the probe's timeout.
    let u = sb.client_udp_connected(udp, FAIL_TIMEOUT_MS)?;
    println!("{what} UDP {udp}: {u:?}");
    let error = u.error.clone().unwrap_or_default();
    ensure!(
        !u.ok && error.contains("os error 111"),
        "{what}: UDP to a Service without endpoints must be refused: {u:?}"
    );
    Ok(())
}

fn a_service_without_endpoints_is_refused_at_once_on_node_ports_and_external_ips(
    shape: NetworkShape,
) -> Result<()> {
    let sb = cluster(shape)?;
    let mut svc = ServiceSpec::cluster_ip("default/empty", "10.96.0.31")
        .port("http", 80, 8080, "TCP")
        .port("dns", 53, 5353, "UDP");
    svc.type_ = "NodePort".to_string();
    svc.ports[0].node_port = Some(30081);
    svc.ports[1].node_port = Some(30081);
    svc.external_traffic_policy = Some("Cluster".to_string());
    svc.external_ips = vec![EXTERNAL_IP.to_string()];
    sb.write_manifest("empty.yaml", &svc.to_yaml())?;
    let mut agents = Vec::new();
    for i in 1..=NODES {
        agents.push(start_agent(&sb, i)?);
    }
    for agent in &mut agents {
        agent.wait_until(
            |d| {
                bpfproxy_tests::agent::frontend(d, "0.0.0.0", 30081, "UDP").is_some()
                    && bpfproxy_tests::agent::frontend(d, EXTERNAL_IP, 53, "UDP").is_some()
            },
            T,
        )?;
    }
    // NodePorts: the node's own stack refuses (nothing listens there).
    for i in 1..=NODES {
        let np = format!("{}:30081", node_ip(i));
        assert_refused(&sb, &format!("node {i}"), &np, &np)?;
    }
    // The externalIP is no address of any node: the client routes it via
    // node 2, whose TC program answers for it.
    route_via_node(&sb, EXTERNAL_IP, 2)?;
    assert_refused(
        &sb,
        "externalIP",
        &format!("{EXTERNAL_IP}:80"),
        &format!("{EXTERNAL_IP}:53"),
    )?;
    let counters = agents[1].dump_json()?["counters"].clone();
    let refused = counters["tc_reject_no_endpoints"].as_u64().unwrap_or(0);
    ensure!(
        refused >= 4,
        "node 2 counted {refused} refusals (2 NodePort + 2 externalIP): {counters}"
    );
    Ok(())
}

fn a_long_lived_connection_survives_endpoint_removal_and_an_agent_restart(
    shape: NetworkShape,
) -> Result<()> {
    let sb = cluster(shape)?;
    write_web(&sb, "Cluster")?;
    let mut agents = start_agents(&sb, |_| vec![backend(1), backend(2)])?;
    // Through node 3, which has no local backend: DNAT + SNAT.
    let mut conn = sb.client_hold(&np(3))?;
    let first = conn.ping()?;
    let (name, peer) = split_echo_peer(&first)?;
    ensure!(
        peer == sb.snat_ip(3),
        "the backend saw {peer}, not node 3: {first:?}"
    );
    let kept = if name == pod_name(1, 1) { 1 } else { 2 };
    ensure!(name == pod_name(kept, 1), "unexpected backend {first:?}");
    let other = 3 - kept;
    println!(
        "held connection via node 3 → {name}; removing {}",
        pod_name(other, 1)
    );

    // The other endpoint goes away.
    sb.write_manifest(
        "web.yaml",
        &manifest::documents(&[
            nodeport_service("web", CLUSTER_IP, NODE_PORT, "Cluster"),
            web_slice(&[kept]),
        ]),
    )?;
    for agent in &mut agents {
        agent.wait_for_backends("0.0.0.0", NODE_PORT, "TCP", &[backend(kept)], T)?;
    }
    for _ in 0..3 {
        let a = conn.ping().context("after removing the other endpoint")?;
        ensure!(a == first, "the held connection moved: {a:?} vs {first:?}");
    }

    // Node 3's agent crashes and comes back.
    let agent3 = &mut agents[2];
    agent3.kill()?;
    let a = conn.ping().context("while node 3's agent is down")?;
    ensure!(a == first, "while down: {a:?}");
    let restarted = Instant::now();
    agent3.start_again()?;
    // Ready again: its metrics/dump show the frontend, and the agent lived
    // through a full sync (a fresh connection through node 3 works).
    agent3.wait_for_backends("0.0.0.0", NODE_PORT, "TCP", &[backend(kept)], T)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = sb.client_tcp(&np(3), 1, T)?;
        if r.ok == 1 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no fresh connection after restart: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent3.check_alive()?;
    println!("node 3's agent back after {:?}", restarted.elapsed());
    for _ in 0..3 {
        let a = conn.ping().context("after the agent restart")?;
        ensure!(a == first, "after restart: {a:?}");
    }
    conn.close()?;
    Ok(())
}

/// Checksum offload off (rx and tx) on every veth of the sandbox: senders
/// compute full checksums and receivers verify them in software, as a real
/// NIC would, so a rewrite with a wrong checksum gets the packet dropped.
fn checksum_offload_off(sb: &ClusterSandbox) -> Result<()> {
    for ns in sb.namespaces() {
        let links = ns.ip(&["-o", "link", "show", "type", "veth"])?;
        for line in links.lines() {
            // `5: name@if4: <...>`
            let Some(dev) = line.split(": ").nth(1).and_then(|d| d.split('@').next()) else {
                continue;
            };
            ns.run(&["ethtool", "-K", dev, "rx", "off", "tx", "off"], T)
                .with_context(|| format!("ethtool on {dev} in {}", ns.name()))?;
        }
    }
    Ok(())
}

/// `InCsumErrors` of TCP and UDP in `/proc/net/snmp` of `ns`.
fn csum_errors(ns: &Netns) -> Result<(u64, u64)> {
    let snmp = ns.run(&["cat", "/proc/net/snmp"], T)?;
    let field = |proto: &str| -> Result<u64> {
        let mut lines = snmp
            .lines()
            .filter(|l| l.starts_with(&format!("{proto}: ")));
        let (Some(head), Some(vals)) = (lines.next(), lines.next()) else {
            bail!("no {proto} lines in /proc/net/snmp");
        };
        let idx = head
            .split_whitespace()
            .position(|k| k == "InCsumErrors")
            .with_context(|| format!("no {proto} InCsumErrors"))?;
        vals.split_whitespace()
            .nth(idx)
            .context("short snmp line")?
            .parse()
            .context("InCsumErrors value")
    };
    Ok((field("Tcp")?, field("Udp")?))
}

fn checksums_are_right_for_tcp_and_udp_with_offload_off(shape: NetworkShape) -> Result<()> {
    let sb = cluster(shape)?;
    checksum_offload_off(&sb)?;
    let mut svc = ServiceSpec::cluster_ip("default/web", CLUSTER_IP)
        .port("http", 80, 8080, "TCP")
        .port("dns", 53, 5353, "UDP");
    svc.type_ = "NodePort".to_string();
    svc.ports[0].node_port = Some(NODE_PORT);
    svc.ports[1].node_port = Some(30053);
    svc.external_traffic_policy = Some("Cluster".to_string());
    let eps: Vec<Endpoint> = [1, 2].iter().map(|&i| pod_endpoint(i, 1)).collect();
    sb.write_manifest(
        "web.yaml",
        &manifest::documents(&[
            svc.to_yaml(),
            manifest::endpoint_slice_with(
                "default/web",
                "web-1",
                &eps,
                &[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
            ),
        ]),
    )?;
    let mut agents = start_agents(&sb, |_| vec![backend(1), backend(2)])?;
    let udp_backends = vec![
        format!("{}:5353", pod_ip(1, 1)),
        format!("{}:5353", pod_ip(2, 1)),
    ];
    for agent in &mut agents {
        agent.wait_for_backends("0.0.0.0", 30053, "UDP", &udp_backends, T)?;
    }
    let before: Vec<(u64, u64)> = sb
        .namespaces()
        .into_iter()
        .map(csum_errors)
        .collect::<Result<_>>()?;
    for i in 1..=NODES {
        // TCP: DNAT (+ SNAT for the remote backend) and reverse NAT.
        let r = sb.client_tcp(&np(i), 20, T)?;
        ensure!(r.ok == 20, "node {i} TCP: {r:?}");
        ensure!(by_name(&r)?.len() == 2, "node {i}: both backends: {r:?}");
        // UDP: one socket, one flow, one backend; the reply must come from
        // the NodePort.
        let to = format!("{}:30053", node_ip(i));
        let u: UdpReport = sb.probe(
            sb.client_command(sb.probe_bin())?,
            &["udp", "--to", &to, "--count", "5", "--timeout-ms", "1000"],
            T,
        )?;
        println!(
            "node {i}: TCP {:?}; UDP {:?} from {:?}",
            r.by_backend, u.by_backend, u.sources
        );
        ensure!(u.ok == 5, "node {i} UDP: {u:?}");
        ensure!(
            u.sources == vec![to.clone()],
            "node {i}: UDP replies from {:?}",
            u.sources
        );
    }
    let after: Vec<(u64, u64)> = sb
        .namespaces()
        .into_iter()
        .map(csum_errors)
        .collect::<Result<_>>()?;
    ensure!(
        before == after,
        "checksum errors (TCP, UDP) per namespace: {before:?} → {after:?}"
    );
    Ok(())
}

fn a_rolling_update_behind_a_node_port_fails_no_request(shape: NetworkShape) -> Result<()> {
    let sb = cluster_with(shape, 2)?;
    let ep = |i: usize, j: usize| {
        (
            pod_endpoint(i, j),
            Endpoint::terminating_serving(&pod_ip(i, j)).on_node(&k8s_node_name(i)),
        )
    };
    let write = |eps: &[Endpoint]| {
        sb.write_manifest(
            "web.yaml",
            &manifest::documents(&[
                nodeport_service("web", CLUSTER_IP, NODE_PORT, "Cluster"),
                manifest::endpoint_slice_with(
                    "default/web",
                    "web-1",
                    eps,
                    &[("http", 8080, "TCP")],
                ),
            ]),
        )
    };
    let at = |i: usize, j: usize| format!("{}:8080", pod_ip(i, j));
    write(&[ep(1, 1).0, ep(2, 1).0])?;
    let mut agents = start_agents(&sb, |_| vec![at(1, 1), at(2, 1)])?;

    // Continuous requests through node 3 (no local backend: DNAT + SNAT)
    // and node 1 (a local and a remote backend), in the background.
    let duration_ms = 6000;
    let loops: Vec<_> = [1, 3]
        .into_iter()
        .map(|i| -> Result<_> {
            let mut cmd = sb.client_command(sb.probe_bin())?;
            cmd.args([
                "loop",
                "--to",
                &np(i),
                "--interval-ms",
                "20",
                "--duration-ms",
                &duration_ms.to_string(),
                "--timeout-ms",
                "1000",
            ]);
            Ok((
                i,
                std::thread::spawn(move || bpfproxy_tests::process::run_with_timeout(&mut cmd, T)),
            ))
        })
        .collect::<Result<_>>()?;

    // Pod by pod: the new pod becomes ready, the old one terminates (still
    // serving), then vanishes.
    let started = Instant::now();
    let steps: Vec<(Vec<Endpoint>, Vec<String>)> = vec![
        (
            vec![ep(1, 1).0, ep(2, 1).0, ep(1, 2).0],
            vec![at(1, 1), at(2, 1), at(1, 2)],
        ),
        (
            vec![ep(1, 1).1, ep(2, 1).0, ep(1, 2).0],
            vec![at(2, 1), at(1, 2)],
        ),
        (vec![ep(2, 1).0, ep(1, 2).0], vec![at(2, 1), at(1, 2)]),
        (
            vec![ep(2, 1).0, ep(1, 2).0, ep(2, 2).0],
            vec![at(2, 1), at(1, 2), at(2, 2)],
        ),
        (
            vec![ep(2, 1).1, ep(1, 2).0, ep(2, 2).0],
            vec![at(1, 2), at(2, 2)],
        ),
        (vec![ep(1, 2).0, ep(2, 2).0], vec![at(1, 2), at(2, 2)]),
    ];
    std::thread::sleep(Duration::from_millis(500));
    for (eps, want) in &steps {
        write(eps)?;
        for agent in &mut agents {
            agent.wait_for_backends("0.0.0.0", NODE_PORT, "TCP", want, T)?;
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    println!("rolling update done after {:?}", started.elapsed());
    ensure!(
        started.elapsed() < Duration::from_millis(duration_ms - 500),
        "the update took longer than the request loops ran: {:?}",
        started.elapsed()
    );
    for (i, handle) in loops {
        let out = handle
            .join()
            .map_err(|_| anyhow::anyhow!("loop thread panicked"))??;
        let r: TcpReport =
            serde_json::from_str(&out).with_context(|| format!("loop output: {out}"))?;
        let names = by_name(&r)?;
        println!(
            "node {i}: ok {} failed {} by backend {:?}",
            r.ok, r.failed, r.by_backend
        );
        ensure!(r.failed == 0 && r.ok > 100, "node {i}: {r:?}");
        for j in [1, 2] {
            for k in [1, 2] {
                ensure!(
                    names.contains_key(&pod_name(j, k)),
                    "node {i}: {} never answered: {names:?}",
                    pod_name(j, k)
                );
            }
        }
    }
    Ok(())
}

/// `default/dns`: UDP NodePort 30053 → 5353, backed by pod 1 of `nodes`.
fn dns(nodes: &[usize]) -> String {
    let mut svc = ServiceSpec::cluster_ip("default/dns", "10.96.0.53").port("dns", 53, 5353, "UDP");
    svc.type_ = "NodePort".to_string();
    svc.ports[0].node_port = Some(30053);
    let eps: Vec<Endpoint> = nodes.iter().map(|&i| pod_endpoint(i, 1)).collect();
    manifest::documents(&[
        svc.to_yaml(),
        manifest::endpoint_slice_with("default/dns", "dns-1", &eps, &[("dns", 5353, "UDP")]),
    ])
}

fn udp_flows_of_a_removed_backend_are_purged(shape: NetworkShape) -> Result<()> {
    let sb = cluster(shape)?;
    sb.write_manifest("dns.yaml", &dns(&[1, 2]))?;
    let mut agent = start_agent(&sb, 3)?;
    let both = vec![
        format!("{}:5353", pod_ip(1, 1)),
        format!("{}:5353", pod_ip(2, 1)),
    ];
    agent.wait_for_backends("0.0.0.0", 30053, "UDP", &both, T)?;
    // One client socket on a fixed port: one conntrack flow, one backend —
    // as a resolver that keeps its source port.
    let ask = || -> Result<UdpReport> {
        sb.probe(
            sb.client_command(sb.probe_bin())?,
            &[
                "udp",
                "--to",
                &format!("{}:30053", node_ip(3)),
                "--count",
                "10",
                "--bind-port",
                "40053",
                "--timeout-ms",
                "1000",
            ],
            T,
        )
    };
    let r = ask()?;
    ensure!(
        r.ok == 10 && r.by_backend.len() == 1,
        "one flow, one backend: {r:?}"
    );
    let first = r.by_backend.keys().next().cloned().unwrap_or_default();
    let gone = if first == pod_name(1, 1) { 1 } else { 2 };
    let stays = 3 - gone;
    // The flow's backend leaves the Service (its pod keeps answering, as a
    // pod being deleted may): the next sync must purge the flow.
    sb.write_manifest("dns.yaml", &dns(&[stays]))?;
    agent.wait_for_backends(
        "0.0.0.0",
        30053,
        "UDP",
        &[format!("{}:5353", pod_ip(stays, 1))],
        T,
    )?;
    let r = ask()?;
    ensure!(
        r.ok == 10 && r.count(&pod_name(stays, 1)) == 10,
        "the same client port now reaches the remaining backend: {r:?}"
    );
    Ok(())
}

/// One-question-one-answer UDP (a DNS query from a fresh socket each time)
/// through node 3, whose agent was given a tiny new-flow table
/// (`--map-size-conntrack-new=256`). The kernel's LRU hash evicts up to
/// 128 entries per CPU at once when it refills a CPU's free list, so a
/// table not several times that per CPU dropped a flow's reply entry
/// before the reply came back (3 to 8 replies of 2,400 lost, found by the
/// chaos test's flood experiments). The agent raises LRU maps to four
/// refills per CPU; every reply arrives.
#[test]
fn udp_requests_through_a_node_with_a_tiny_new_flow_table_all_get_replies() -> Result<()> {
    let sb = cluster(NetworkShape::HostGw)?;
    let ports = [("dns", 53, 5353, "UDP", 30053)];
    sb.write_manifest(
        "dns.yaml",
        &manifest::documents(&[
            node_port_service("default/dns", CLUSTER_IP, &ports, "Cluster"),
            manifest::endpoint_slice_with(
                "default/dns",
                "dns-1",
                &[pod_endpoint(1, 1), pod_endpoint(2, 1)],
                &[("dns", 5353, "UDP")],
            ),
        ]),
    )?;
    let want = vec![
        format!("{}:5353", pod_ip(1, 1)),
        format!("{}:5353", pod_ip(2, 1)),
    ];
    let mut agents = Vec::new();
    for i in 1..=NODES {
        let mut cfg = sb.agent_config_with_tc(i)?;
        cfg.extra_args.push("--map-size-conntrack-new=256".into());
        let mut agent = Agent::start(cfg)?;
        agent.wait_for_backends("0.0.0.0", 30053, "UDP", &want, T)?;
        agents.push(agent);
    }
    let pins = agents[2].config().bpffs.join(proxy_common::maps::PIN_DIR);
    let sizes = proxy_agent::maps::sizes::read_pinned(&pins)?;
    let cpus = u32::try_from(aya::util::nr_cpus().map_err(|(_, e)| e)?)?;
    let floor = proxy_agent::maps::sizes::lru_floor(cpus);
    let ct_new = sizes[proxy_common::maps::CT_NEW];
    ensure!(
        ct_new == floor.max(256),
        "new-flow table of {ct_new}, floor {floor}"
    );

    let stop = std::sync::atomic::AtomicBool::new(false);
    let node3 = node_ip(3);
    let results = std::thread::scope(|scope| {
        let loops: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| udp_query_loop(sb.client_ns(), &node3, 30053, &stop)))
            .collect();
        std::thread::sleep(Duration::from_secs(6));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        loops.into_iter().map(|l| l.join()).collect::<Vec<_>>()
    });
    let mut lost = Vec::new();
    let mut sent = 0;
    for r in results {
        let (n, failed) = r.map_err(|_| anyhow::anyhow!("query loop panicked"))??;
        sent += n;
        lost.extend(failed);
    }
    println!(
        "{sent} queries through node 3 (new-flow table {ct_new}), {} lost",
        lost.len()
    );
    ensure!(sent > 500, "too few queries to tell: {sent}");
    ensure!(
        lost.is_empty(),
        "{} of {sent} replies lost: {lost:?}",
        lost.len()
    );
    // Node 3's per-Service counters saw it all: each query and its reply
    // (from a backend on another node, SNATed) pass its TC ingress; each
    // query is a new flow unless its socket drew a source port a
    // still-remembered flow had.
    let dump = agents[2].dump_json()?;
    let fe = bpfproxy_tests::agent::frontend(&dump, "0.0.0.0", 30053, "UDP")
        .context("node 3's NodePort frontend")?;
    let count = |k: &str| fe["traffic"][k].as_u64().unwrap_or(0);
    println!("node 3 counted {}", fe["traffic"]);
    ensure!(
        count("tc_packets") == 2 * sent
            && count("tc_flows") <= sent
            && count("tc_flows") >= sent * 9 / 10,
        "{sent} queries, counted {}",
        fe["traffic"]
    );
    Ok(())
}

/// Queries `ip:port` from a fresh UDP socket each time, in `ns`, until
/// `stop`: (queries sent, the failures).
fn udp_query_loop(
    ns: &Netns,
    ip: &str,
    port: u16,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(u64, Vec<String>)> {
    ns.join_this_thread()?;
    let (mut sent, mut failed) = (0, Vec::new());
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.send_to(b"q", (ip, port))?;
        sent += 1;
        let mut buf = [0u8; 128];
        if let Err(e) = s.recv_from(&mut buf) {
            failed.push(format!("query {sent}: {e}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok((sent, failed))
}

/// Every test above, once per network shape: `host_gw::…`, `vxlan::…`,
/// `two_nic::…`, `l3_tunnel::…`, `ipip::…`, `wireguard::…`. Node 3 never
/// runs a backend, so traffic through it always crosses to another node by
/// the shape's node-to-node device. This machine's kernel has no ipip or
/// wireguard module: nextest's default filter leaves `ipip::` and
/// `wireguard::` to the kernel matrix (`cargo xtask test --kernel … --tier
/// nodeport`), which runs them on Debian's kernels.
macro_rules! on_every_shape {
    ($($test:ident),* $(,)?) => {
        on_every_shape!(@shape host_gw, HostGw, $($test),*);
        on_every_shape!(@shape vxlan, Vxlan, $($test),*);
        on_every_shape!(@shape two_nic, TwoNic, $($test),*);
        on_every_shape!(@shape l3_tunnel, L3Tunnel, $($test),*);
        on_every_shape!(@shape ipip, Ipip, $($test),*);
        on_every_shape!(@shape wireguard, WireGuard, $($test),*);
    };
    (@shape $module:ident, $shape:ident, $($test:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $test() -> anyhow::Result<()> {
                    super::$test(super::NetworkShape::$shape)
                }
            )*
        }
    };
}

on_every_shape!(
    load_balancer_source_ranges_keep_an_lb_ip_private,
    devices_auto_serves_as_naming_the_client_nic_does,
    a_5_mb_download_through_a_node_without_a_backend_arrives_whole,
    every_node_serves_the_node_port_and_all_backends_are_reached,
    node_ports_are_served_on_the_clsact_path_of_older_kernels_across_a_restart,
    client_ip_affinity_keeps_an_external_client_on_one_backend,
    external_ips_and_load_balancer_ips_are_served_from_outside,
    etp_cluster_a_remote_backend_sees_the_node_address,
    etp_local_keeps_the_client_address_and_nodes_without_endpoints_do_not_serve,
    a_service_without_endpoints_is_refused_at_once_on_node_ports_and_external_ips,
    a_long_lived_connection_survives_endpoint_removal_and_an_agent_restart,
    checksums_are_right_for_tcp_and_udp_with_offload_off,
    a_rolling_update_behind_a_node_port_fails_no_request,
    udp_flows_of_a_removed_backend_are_purged,
    path_mtu_discovery_works_through_a_node_port,
    established_connections_survive_a_spoofed_syn_flood,
);
