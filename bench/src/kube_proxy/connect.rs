//! connect() latency to the last of N Services from a client namespace:
//! straight to the backend, through each kube-proxy ruleset, and through
//! bpfproxy's socket LB. A sandbox (client and backend namespace joined by
//! a veth, no default route) holds everything; only the Service range is
//! routed, onto the veth, as a node's default route would take it.
use std::{
    net::{SocketAddr, SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use bpfproxy_tests::{manifest, process, Agent, Sandbox, SandboxConfig};
use proxy_agent::{loader::pin_dir, maps::pinned::PinnedMaps};
use proxy_common::{proto, ServiceKey};

use super::{
    model::{cluster, SvcPort, TARGET_PORT},
    restore::Backend,
    rss::Rss,
};
use crate::objects;

/// Connections made before sampling (ARP, caches).
const WARMUP: usize = 20;

/// Everything measured on one sandbox for one Service count.
pub struct Connect {
    pub direct: Vec<Duration>,
    /// Per kube-proxy backend, with its ruleset loaded in the client netns.
    pub rules: Vec<(Backend, Vec<Duration>)>,
    pub socket_lb: Vec<Duration>,
    /// The agent: start → last Service in the maps (manifest directory).
    pub agent_cold: Duration,
    pub agent_rss: Rss,
}

/// `skip`: backends whose load timed out at this count (their column stays
/// empty); `timeout` bounds each load here too.
pub fn measure(n: usize, samples: usize, skip: &[Backend], timeout: Duration) -> Result<Connect> {
    let sb = Sandbox::with_config(SandboxConfig {
        backends: 2,
        tcp_ports: vec![TARGET_PORT],
        udp_ports: Vec::new(),
        probe_bin: None,
    })?;
    let client = sb.client_ns();
    client.ip(&["route", "add", "10.96.0.0/16", "dev", sb.veth().a()])?;
    let mut svcs = cluster(n);
    let last = svcs.last_mut().context("no Services")?;
    last.endpoints = sb
        .backend_ips()
        .iter()
        .map(|ip| Ok(SocketAddrV4::new(ip.parse()?, TARGET_PORT)))
        .collect::<Result<_>>()?;
    let vip = format!("{}:{}", last.vip, last.port);
    let direct_to = format!("{}:{TARGET_PORT}", sb.backend_ip(1));
    // Outside the sandbox's cgroup: the socket LB is not in the way.
    let direct = sample(&sb, false, &direct_to, samples)?;
    let mut rules = Vec::new();
    for b in Backend::ALL {
        let loaded = !skip.contains(&b)
            && b.load(client, &b.full_text(&svcs), false, timeout)?
                .is_some();
        if loaded {
            rules.push((b, sample(&sb, false, &vip, samples)?));
        } else {
            rules.push((b, Vec::new()));
        }
        if !skip.contains(&b) {
            clear(&sb, b)?;
        }
    }
    let (agent, agent_cold) = start_agent(&sb, &svcs)?;
    let socket_lb = sample(&sb, true, &vip, samples)?;
    let pid = agent.pid().context("the agent has no pid")?;
    Ok(Connect {
        direct,
        rules,
        socket_lb,
        agent_cold,
        agent_rss: Rss::of(pid)?,
    })
}

/// Removes a loaded ruleset from the client namespace.
fn clear(sb: &Sandbox, b: Backend) -> Result<()> {
    let args: &[&str] = match b {
        Backend::IptablesLegacy => &["iptables-legacy", "-t", "nat", "-F"],
        Backend::IptablesNft | Backend::Nftables => &["nft", "flush", "ruleset"],
    };
    sb.client_ns().run(args, Duration::from_secs(300))?;
    if b == Backend::IptablesLegacy {
        sb.client_ns().run(
            &["iptables-legacy", "-t", "nat", "-X"],
            Duration::from_secs(300),
        )?;
    }
    Ok(())
}

/// Starts the agent on the sandbox with the Services as manifests; returns
/// it once the last Service is in the maps, and how long that took.
fn start_agent(sb: &Sandbox, svcs: &[SvcPort]) -> Result<(Agent, Duration)> {
    let mut docs = Vec::with_capacity(svcs.len() * 2);
    for (i, s) in svcs.iter().enumerate() {
        let ips: Vec<String> = s.endpoints.iter().map(|e| e.ip().to_string()).collect();
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        docs.push(objects::service_yaml(i));
        docs.push(manifest::endpoint_slice(
            &format!("bench/svc-{i}"),
            &format!("svc-{i}-1"),
            &ips,
            &[("http", TARGET_PORT, "TCP")],
            &[],
        ));
    }
    sb.write_manifest("services.yaml", &docs.join("---\n"))?;
    let last = svcs.last().context("no Services")?;
    let want = *last.endpoints.first().context("no endpoints")?.ip();
    let t = Instant::now();
    let mut cfg = sb.agent_config()?;
    cfg.extra_args.extend(map_sizes(svcs));
    let mut agent = Agent::start(cfg)?;
    let key = |slot| ServiceKey::new(last.vip, last.port, proto::TCP, slot);
    while t.elapsed() < Duration::from_secs(600) {
        if let Ok(maps) = PinnedMaps::open(&pin_dir(sb.bpffs())) {
            let seen = [1, 2]
                .iter()
                .filter_map(|s| maps.slot_backend(&key(*s)))
                .any(|b| b.ip() == want);
            if seen {
                return Ok((agent, t.elapsed()));
            }
        }
        agent.check_alive()?;
        bpfproxy_tests::interrupt::check()?;
        std::thread::sleep(Duration::from_millis(1));
    }
    bail!("the last Service did not reach the maps within 600 s")
}

/// Map sizes that hold every Service.
fn map_sizes(svcs: &[SvcPort]) -> Vec<String> {
    let frontends: usize = svcs.iter().map(|s| 1 + s.endpoints.len()).sum();
    let backends: usize = svcs.iter().map(|s| s.endpoints.len()).sum();
    crate::objects::map_size_args(svcs.len(), frontends, backends)
}

/// `samples` connect() times to `to` from the client namespace (in the
/// sandbox's cgroup if `in_cgroup`), by this binary's `connect-loop`.
fn sample(sb: &Sandbox, in_cgroup: bool, to: &str, samples: usize) -> Result<Vec<Duration>> {
    let me = std::env::current_exe().context("finding this binary")?;
    let mut c = if in_cgroup {
        sb.client_command(&me)?
    } else {
        sb.client_ns().command(&me)?
    };
    c.args(["connect-loop", "--to", to, "--count", &samples.to_string()]);
    let out = process::run_with_timeout(&mut c, Duration::from_secs(300))?;
    let times: Vec<Duration> = out
        .split_whitespace()
        .map(|ns| ns.parse().map(Duration::from_nanos))
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing connect-loop output: {out}"))?;
    if times.len() != samples {
        bail!("connect-loop gave {} samples, not {samples}", times.len());
    }
    Ok(times)
}

/// The `connect-loop` subcommand, run inside the client namespace: prints
/// the nanoseconds each of `count` blocking connect() calls to `to` took
/// (after a warm-up); fails on the first connect that fails.
pub fn connect_loop(to: &str, count: usize) -> Result<()> {
    let to: SocketAddr = to.parse().with_context(|| format!("address {to}"))?;
    let mut out = String::new();
    for k in 0..WARMUP + count {
        let t = Instant::now();
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .with_context(|| format!("connect {to} (#{k})"))?;
        let took = t.elapsed();
        drop(s);
        if k >= WARMUP {
            out.push_str(&format!("{}\n", took.as_nanos()));
        }
    }
    print!("{out}");
    Ok(())
}
