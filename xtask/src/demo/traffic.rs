//! The traffic users try first, each run checked: curl from a pod to a
//! ClusterIP, DNS-like UDP, a JVM client, the ClusterIP from outside, curl to every
//! node's NodePort, the spread over the backends, and
//! externalTrafficPolicy: Local.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use bpfproxy_tests::multinode::{
    answers_by_backend, k8s_node_name, node_ip, pod_ip, pod_name, split_echo_peer, ClusterSandbox,
    PeerAnswers, CLIENT_IP,
};
use bpfproxy_tests::{interrupt, process, TcpReport, UdpReport};

use super::answers::{check_all_reached, check_connections, print_spread, show_errors};
use super::layout::Layout;
use super::report::{plural, Summary};
use super::services::{
    DNS, DNS_IP, DNS_PORT, WEB, WEB_IP, WEB_LOCAL, WEB_LOCAL_NODE_PORT, WEB_NODE_PORT,
};

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
/// Proxy variables curl would obey; the demo's requests must go direct.
const PROXY_VARS: [&str; 6] = [
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "all_proxy",
];

/// Runs every check in turn, each adding its line to `summary`; stops at
/// the first failure or a Ctrl-C.
pub(super) fn traffic(
    sb: &ClusterSandbox,
    layout: Layout,
    requests: u64,
    summary: &mut Summary,
) -> Result<()> {
    summary.add("ClusterIP", curl_cluster_ip_from_pod(sb, layout)?);
    interrupt::check()?;
    summary.add("UDP", udp_through_cluster_ip(sb, layout)?);
    interrupt::check()?;
    summary.add("JVM", super::jvm::jvm_client(sb, layout)?);
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
            "on another node: SNAT to the entry node's node-to-node address"
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
    let want = layout.backend_names();
    let (r, answers) = connections_from_client(sb, &to, requests, &want)?;
    println!(
        "    {} ms in all, {:.2} ms per connection",
        r.elapsed_ms.round(),
        r.elapsed_ms / r.ok.max(1) as f64
    );
    let snat = layout.shape.snat_ip(entry);
    check_connections(&r, &answers, requests, &want, &snat, &to)?;
    println!(
        "    every backend saw {snat}, {}'s address on the device it forwards to other nodes by \
         ({} network): SNAT (externalTrafficPolicy: Cluster), so the replies return through \
         the node the client used",
        k8s_node_name(entry),
        layout.shape
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
    let local: BTreeSet<String> = (1..=layout.pods_per_node)
        .map(|j| pod_name(entry, j))
        .collect();
    let (r, answers) = connections_from_client(sb, &to, LOCAL_REQUESTS, &local)?;
    check_connections(&r, &answers, LOCAL_REQUESTS, &local, CLIENT_IP, &to)?;
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

/// `requests` new connections from the external client to `to`, their
/// answers grouped by backend and printed as a spread over `want`. Checks
/// nothing: the caller prints what it wants first, then checks.
fn connections_from_client(
    sb: &ClusterSandbox,
    to: &str,
    requests: u64,
    want: &BTreeSet<String>,
) -> Result<(TcpReport, BTreeMap<String, PeerAnswers>)> {
    let r = sb.client_tcp(to, requests, PROBE_TIMEOUT)?;
    let answers = answers_by_backend(&r)?;
    print_spread(&answers, want, r.ok);
    show_errors(&r.errors);
    Ok((r, answers))
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
