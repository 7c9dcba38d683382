//! End-to-end tests of ClusterIP translation at the socket layer: the real
//! kernel, the real agent binary, real sockets in network namespaces (see
//! `bpfproxy_tests::sandbox` for the layout and the safety rules).
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bpfproxy_tests::{
    agent, manifest, paths, process, Agent, ConnectTimeReport, Sandbox, SandboxConfig, TcpReport,
    UdpConnectedReport, UdpReport,
};

const VIP: &str = "10.96.0.10";
/// How long an agent may take to program a change: a bound, not a target
/// (on the host it takes milliseconds; an agent starting under the kernel
/// matrix's software CPU spends 10-20 s loading its programs).
const WAIT: Duration = Duration::from_secs(60);

fn sandbox(backends: usize) -> Result<Sandbox> {
    Sandbox::with_config(SandboxConfig {
        backends,
        // Found next to the test binary (or `$BPFPROXY_PROBE_BIN`): also
        // where the arm64 VMs see the cross-built one.
        probe_bin: None,
        ..SandboxConfig::default()
    })
}

/// Service `default/web`: http 80→8080/TCP, alt 81→9090/TCP, dns 53→5353/UDP,
/// backed by the given backends (1-based, as the sandbox numbers them).
fn web(sb: &Sandbox, backends: &[usize]) -> String {
    let ips: Vec<String> = backends.iter().map(|i| sb.backend_ip(*i)).collect();
    let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    manifest::documents(&[
        manifest::service(
            "default/web",
            VIP,
            &[
                ("http", 80, 8080, "TCP"),
                ("alt", 81, 9090, "TCP"),
                ("dns", 53, 5353, "UDP"),
            ],
        ),
        // Slice ports deliberately in another order than the Service's:
        // matching is by name.
        manifest::endpoint_slice(
            "default/web",
            "web-1",
            &refs,
            &[
                ("dns", 5353, "UDP"),
                ("alt", 9090, "TCP"),
                ("http", 8080, "TCP"),
            ],
            &[],
        ),
    ])
}

fn addrs(sb: &Sandbox, backends: &[usize], port: u16) -> Vec<String> {
    let mut v: Vec<String> = backends
        .iter()
        .map(|i| format!("{}:{port}", sb.backend_ip(*i)))
        .collect();
    v.sort();
    v
}

fn start(sb: &Sandbox, backends: &[usize]) -> Result<Agent> {
    sb.write_manifest("web.yaml", &web(sb, backends))?;
    let mut a = sb.start_agent()?;
    a.wait_for_backends(VIP, 80, "TCP", &addrs(sb, backends, 8080), WAIT)?;
    Ok(a)
}

/// Pearson's chi-square statistic against a uniform spread.
fn chi_square(counts: &[u64]) -> f64 {
    let n: u64 = counts.iter().sum();
    let expected = n as f64 / counts.len() as f64;
    counts
        .iter()
        .map(|c| (*c as f64 - expected).powi(2) / expected)
        .sum()
}

#[test]
fn tcp_through_a_cluster_ip_reaches_all_backends_uniformly() -> Result<()> {
    let sb = sandbox(3)?;
    let _agent = start(&sb, &[1, 2, 3])?;

    // A real client first.
    let body = sb.client(&["curl", "-sS", "--max-time", "5", &format!("http://{VIP}/")])?;
    ensure!(
        body.trim().starts_with("backend-"),
        "curl answered {body:?}"
    );

    let r = sb.probe_tcp(&format!("{VIP}:80"), 600)?;
    ensure!(r.ok == 600 && r.failed == 0, "{r:?}");
    let counts: Vec<u64> = sb.backend_names().iter().map(|n| r.count(n)).collect();
    ensure!(
        counts.iter().all(|c| *c > 0),
        "every backend reached: {counts:?}"
    );
    // Critical value of chi-square with 2 degrees of freedom at p = 0.001:
    // a fair spread fails this 1 run in 1000.
    let x2 = chi_square(&counts);
    eprintln!("600 connections: {counts:?}, chi-square {x2:.2}");
    ensure!(
        x2 < 13.816,
        "spread {counts:?} is not uniform (chi-square {x2:.2})"
    );
    Ok(())
}

#[test]
fn named_ports_translate_to_their_own_target_ports() -> Result<()> {
    let sb = sandbox(2)?;
    let agent = start(&sb, &[1, 2])?;
    let dump = agent.dump_json()?;
    ensure!(
        agent::backends(&dump, VIP, 81, "TCP") == Some(addrs(&sb, &[1, 2], 9090)),
        "alt must lead to 9090: {dump}"
    );
    ensure!(
        agent::backends(&dump, VIP, 53, "UDP") == Some(addrs(&sb, &[1, 2], 5353)),
        "dns must lead to 5353: {dump}"
    );
    // Backends listen on 8080 and 9090 only: a wrong target port would be
    // refused.
    for port in [80, 81] {
        let r = sb.probe_tcp(&format!("{VIP}:{port}"), 20)?;
        ensure!(r.ok == 20, "port {port}: {r:?}");
    }
    Ok(())
}

#[test]
fn udp_replies_and_peer_names_show_the_cluster_ip() -> Result<()> {
    let sb = sandbox(3)?;
    let _agent = start(&sb, &[1, 2, 3])?;

    // Unconnected sockets (sendto/recvfrom), as resolvers use them.
    let u = sb.probe_udp(&format!("{VIP}:53"), 60)?;
    ensure!(u.ok == 60, "{u:?}");
    ensure!(
        u.sources == vec![format!("{VIP}:53")],
        "reply source must be the VIP: {u:?}"
    );
    ensure!(
        u.by_backend.len() == 3,
        "datagrams spread over backends: {u:?}"
    );

    // Connected UDP: getpeername() and the reply.
    let c = sb.probe_udp_connected(&format!("{VIP}:53"))?;
    ensure!(c.ok && c.peer.as_deref() == Some("10.96.0.10:53"), "{c:?}");
    ensure!(
        c.reply
            .as_deref()
            .is_some_and(|r| r.starts_with("backend-")),
        "{c:?}"
    );

    // TCP getpeername().
    let held = sb.hold(&format!("{VIP}:80"))?;
    ensure!(held.peer() == "10.96.0.10:80", "peer {}", held.peer());
    Ok(())
}

/// Connected UDP sockets the socket LB sent to a backend that then left
/// the Service are closed within a sync (the resolver's next call fails and
/// its new socket gets a live backend), for IPv4 sockets and for the JVM's
/// IPv6 sockets on mapped addresses alike; a socket connected to the pod's
/// own address is left alone. Without the closing, both would talk to the
/// departed backend for as long as they live.
#[test]
fn connected_udp_sockets_on_a_departed_backend_are_closed_and_reconnect_to_a_live_one() -> Result<()>
{
    let sb = sandbox(2)?;
    let mut agent = start(&sb, &[1, 2])?;
    let vip = format!("{VIP}:53");
    let mut v4 = sb.hold_udp(&vip)?;
    ensure!(v4.peer() == vip, "peer reads as the VIP: {}", v4.peer());
    let gone = v4.ping()?;
    // A JVM-shaped socket on the same backend (each connect picks anew).
    let mut v6 = None;
    for _ in 0..30 {
        let mut c = sb.hold_udp(&mapped(VIP, 53))?;
        if c.ping()? == gone {
            v6 = Some(c);
            break;
        }
    }
    let mut v6 = v6.context("no IPv6 socket landed on the first one's backend in 30 tries")?;
    let gone_idx = sb
        .backend_names()
        .iter()
        .position(|n| *n == gone)
        .context("backend name")?
        + 1;
    let mut direct = sb.hold_udp(&format!("{}:5353", sb.backend_ip(gone_idx)))?;
    for c in [&mut v4, &mut v6, &mut direct] {
        ensure!(c.ping()? == gone, "a connected socket stays on its backend");
    }
    let rest: Vec<usize> = (1..=2).filter(|i| *i != gone_idx).collect();
    sb.write_manifest("web.yaml", &web(&sb, &rest))?;
    agent.wait_for_backends(VIP, 53, "UDP", &addrs(&sb, &rest, 5353), WAIT)?;
    let t0 = Instant::now();
    for (what, c) in [("IPv4", &mut v4), ("IPv6 (mapped)", &mut v6)] {
        let moved = moves_off(c, &gone, WAIT)?;
        eprintln!("{what} socket: {moved}");
    }
    eprintln!("both moved {:?} after the maps changed", t0.elapsed());
    ensure!(
        direct.ping()? == gone,
        "a socket to the pod's own address is not ours to close"
    );
    // It says so once its pass over the namespaces ends, which may be
    // after the sockets moved (seconds under the kernel matrix's software
    // CPU).
    let said = "closed connected UDP sockets whose backend left their Service";
    let t0 = Instant::now();
    while !agent.log_tail(200).contains(said) {
        ensure!(
            t0.elapsed() < WAIT,
            "the agent says what it closed: {}",
            agent.log_tail(200)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Pings `c` until it answers from a backend other than `gone`; the
/// answers before must be `gone`'s or one error (the closed socket).
fn moves_off(c: &mut bpfproxy_tests::HoldConn, gone: &str, within: Duration) -> Result<String> {
    let t0 = Instant::now();
    let mut errors = Vec::new();
    while t0.elapsed() < within {
        match c.ping() {
            Ok(a) if a == gone => std::thread::sleep(Duration::from_millis(50)),
            Ok(a) => {
                ensure!(errors.len() <= 1, "more than the one close: {errors:?}");
                return Ok(format!(
                    "closed ({errors:?}), now on {a} after {:?}",
                    t0.elapsed()
                ));
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    anyhow::bail!("still on {gone} after {within:?} (errors {errors:?})")
}

#[test]
fn scaling_is_seen_within_a_second_while_open_connections_survive() -> Result<()> {
    let sb = sandbox(3)?;
    let mut agent = start(&sb, &[1, 2, 3])?;
    let mut held = sb.hold(&format!("{VIP}:80"))?;
    let pinned = held.ping()?;
    let pinned_idx = sb
        .backend_names()
        .iter()
        .position(|n| *n == pinned)
        .context("held connection's backend")?
        + 1;
    let rest: Vec<usize> = (1..=3).filter(|i| *i != pinned_idx).collect();
    let bound = Duration::from_secs(1) + observing_cost(&agent)?;

    // Scale down: remove the held connection's backend.
    let t0 = Instant::now();
    sb.write_manifest("web.yaml", &web(&sb, &rest))?;
    agent.wait_for_backends(VIP, 80, "TCP", &addrs(&sb, &rest, 8080), WAIT)?;
    let seen = t0.elapsed();
    eprintln!("scale-down in the maps after {seen:?} (bound {bound:?})");
    ensure!(seen < bound, "scale-down took {seen:?}");
    let r = sb.probe_tcp(&format!("{VIP}:80"), 60)?;
    ensure!(
        r.ok == 60 && r.count(&pinned) == 0,
        "removed backend still chosen: {r:?}"
    );
    ensure!(held.ping()? == pinned, "open connection keeps its backend");

    // Scale up again.
    let t0 = Instant::now();
    sb.write_manifest("web.yaml", &web(&sb, &[1, 2, 3]))?;
    agent.wait_for_backends(VIP, 80, "TCP", &addrs(&sb, &[1, 2, 3], 8080), WAIT)?;
    let seen = t0.elapsed();
    eprintln!("scale-up in the maps after {seen:?} (bound {bound:?})");
    ensure!(seen < bound, "scale-up took {seen:?}");
    let r = sb.probe_tcp(&format!("{VIP}:80"), 90)?;
    ensure!(
        r.ok == 90 && r.count(&pinned) > 0,
        "re-added backend chosen: {r:?}"
    );
    ensure!(held.ping()? == pinned);
    Ok(())
}

/// How late the test itself may see a change the agent made at once: a
/// `bpfproxy dump` that started just before it, the poll's 50 ms pause and
/// the dump that shows it. The bound is on the agent, not on the observer:
/// under the kernel matrix's software CPU on a busy machine one dump takes
/// a good part of a second.
fn observing_cost(agent: &Agent) -> Result<Duration> {
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        let t = Instant::now();
        agent.dump_json()?;
        slowest = slowest.max(t.elapsed());
    }
    Ok(2 * slowest + Duration::from_millis(50))
}

/// The errno a connect() to a Service without endpoints gets: kernels
/// before 5.18 (the kernel matrix's 5.10) lack `bpf_set_retval`, and the
/// agent's variant for them refuses with EPERM.
fn refusal_errno() -> (i32, &'static str) {
    if proxy_agent::kernel::Features::probe().set_retval {
        (libc::ECONNREFUSED, "ECONNREFUSED")
    } else {
        (libc::EPERM, "EPERM")
    }
}

#[test]
fn a_service_without_endpoints_refuses_connections_at_once() -> Result<()> {
    let sb = sandbox(1)?;
    let mut agent = start(&sb, &[1])?;
    sb.write_manifest("web.yaml", &web(&sb, &[]))?;
    agent.wait_until(|d| agent::backends(d, VIP, 80, "TCP") == Some(vec![]), WAIT)?;
    let r = sb.probe_connect_time(&format!("{VIP}:80"))?;
    ensure!(!r.ok, "{r:?}");
    let (errno, name) = refusal_errno();
    ensure!(r.errno == Some(errno), "{name} expected: {r:?}");
    eprintln!("refused with {name} after {:.3} ms", r.elapsed_ms);
    ensure!(r.elapsed_ms < 100.0, "refusal took {} ms", r.elapsed_ms);
    // curl, as a user would see it: exit code 7 (could not connect), not
    // 28 (its 5 s ran out). The connect itself was timed above; curl's wall
    // time is mostly its own start, seconds under the kernel matrix's
    // software CPU.
    let out = sb.client_output(
        &["curl", "-sS", "--max-time", "5", &format!("http://{VIP}/")],
        Duration::from_secs(30),
    )?;
    ensure!(out.status.code() == Some(7), "curl: {out:?}");
    Ok(())
}

/// Kernels before 5.18 lack `bpf_set_retval`: the agent loads the socket
/// programs without it (forced here on a newer kernel), and a Service
/// without endpoints still refuses at once, with EPERM.
#[test]
fn without_bpf_set_retval_a_service_without_endpoints_refuses_at_once_with_eperm() -> Result<()> {
    let sb = sandbox(1)?;
    sb.write_manifest("web.yaml", &web(&sb, &[1]))?;
    let mut cfg = sb.agent_config()?;
    cfg.extra_args.push("--assume-no-set-retval".to_string());
    let mut agent = Agent::start(cfg)?;
    agent.wait_for_backends(VIP, 80, "TCP", &addrs(&sb, &[1], 8080), WAIT)?;
    let r = sb.probe_tcp(&format!("{VIP}:80"), 20)?;
    ensure!(r.ok == 20, "the ClusterIP is served as usual: {r:?}");
    sb.write_manifest("web.yaml", &web(&sb, &[]))?;
    agent.wait_until(|d| agent::backends(d, VIP, 80, "TCP") == Some(vec![]), WAIT)?;
    let r = sb.probe_connect_time(&format!("{VIP}:80"))?;
    eprintln!("refused after {:.3} ms: {:?}", r.elapsed_ms, r.errno);
    ensure!(
        !r.ok && r.errno == Some(libc::EPERM),
        "EPERM expected: {r:?}"
    );
    ensure!(r.elapsed_ms < 100.0, "refusal took {} ms", r.elapsed_ms);
    let log = std::fs::read_to_string(agent.log_path())?;
    ensure!(
        log.contains("kernel without bpf_set_retval"),
        "the agent says which variant it loaded"
    );
    Ok(())
}

#[test]
fn a_second_agent_on_the_same_pins_refuses_to_start_and_the_first_keeps_serving() -> Result<()> {
    let sb = sandbox(2)?;
    let _agent = start(&sb, &[1, 2])?;
    let cfg = sb.agent_config()?;
    let mut second = std::process::Command::new(&cfg.bin);
    second
        .args(cfg.run_args())
        .arg("--metrics-bind-address=")
        .arg("--healthz-bind-address=");
    let out = process::output_with_timeout(&mut second, Duration::from_secs(20))?;
    let stderr = &out.stderr;
    ensure!(!out.status.success(), "the second agent must exit: {out:?}");
    ensure!(
        stderr.contains("another bpfproxy agent runs on"),
        "{stderr}"
    );
    let r = sb.probe_tcp(&format!("{VIP}:80"), 20)?;
    ensure!(r.ok == 20, "the first agent still serves: {r:?}");
    Ok(())
}

#[test]
fn sigkill_during_a_request_stream_fails_nothing_and_a_new_agent_takes_over() -> Result<()> {
    let sb = sandbox(3)?;
    let mut agent = start(&sb, &[1, 2, 3])?;
    let mut held = sb.hold(&format!("{VIP}:80"))?;
    let pinned = held.ping()?;
    let stream = sb.spawn_probe(&[
        "loop",
        "--to",
        &format!("{VIP}:80"),
        "--interval-ms",
        "10",
        "--duration-ms",
        "4000",
    ])?;
    std::thread::sleep(Duration::from_millis(800));
    agent.kill()?;
    std::thread::sleep(Duration::from_millis(800));
    ensure!(
        held.ping()? == pinned,
        "connection survives the agent's death"
    );
    agent.start_again()?;
    let r: bpfproxy_tests::TcpReport = stream.finish_json(Duration::from_secs(15))?;
    eprintln!(
        "across SIGKILL and restart: {} ok, {} failed",
        r.ok, r.failed
    );
    // Enough requests to span the kill (0.8 s) and the restart (1.6 s):
    // about 400 on the host, 36 in a 6.1 VM on a busy machine.
    ensure!(
        r.failed == 0 && r.ok >= 20,
        "requests failed across the restart: {r:?}"
    );
    ensure!(r.by_backend.len() == 3, "{r:?}");
    // The new agent owns the state: it applies a change (and so it has
    // attached: its log is complete).
    sb.write_manifest("web.yaml", &web(&sb, &[2]))?;
    agent.wait_for_backends(VIP, 80, "TCP", &addrs(&sb, &[2], 8080), WAIT)?;
    ensure!(held.ping()? == pinned);
    let log = std::fs::read_to_string(agent.log_path())?;
    ensure!(
        log.matches("how=Replaced").count() == 8,
        "the new agent swaps programs in the pinned links:\n{log}"
    );
    Ok(())
}

#[test]
fn dump_json_matches_the_manifests() -> Result<()> {
    let sb = sandbox(2)?;
    let b0 = sb.backend_ip(1);
    let b1 = sb.backend_ip(2);
    let docs = manifest::documents(&[
        web(&sb, &[1, 2]),
        manifest::service(
            "kube-system/kube-dns",
            "10.96.0.53",
            &[("dns", 53, 5353, "UDP")],
        ),
        manifest::endpoint_slice(
            "kube-system/kube-dns",
            "kube-dns-1",
            &[b1.as_str()],
            &[("dns", 5353, "UDP")],
            &[],
        ),
        manifest::service("default/empty", "10.96.0.99", &[("", 80, 8080, "TCP")]),
        // Left alone: headless.
        manifest::service("default/headless", "None", &[("", 80, 8080, "TCP")]),
    ]);
    sb.write_manifest("all.yaml", &docs)?;
    let mut agent = sb.start_agent()?;
    let dump = agent.wait_until(|d| agent::frontend_count(d) == 5, WAIT)?;
    let fe = |svc: &str, vip: &str, port: u16, proto: &str, backends: &[(&str, u16)]| {
        serde_json::json!({
            "service": svc, "vip": vip, "port": port, "protocol": proto,
            "backends": backends.iter().map(|(ip, p)| serde_json::json!({"ip": ip, "port": p})).collect::<Vec<_>>(),
        })
    };
    let both = |p| [(b0.as_str(), p), (b1.as_str(), p)];
    // Sorted by Service name, as the dump lists them.
    let expected = serde_json::json!([
        fe("default/empty", "10.96.0.99", 80, "TCP", &[]),
        fe("default/web:alt", VIP, 81, "TCP", &both(9090)),
        fe("default/web:dns", VIP, 53, "UDP", &both(5353)),
        fe("default/web:http", VIP, 80, "TCP", &both(8080)),
        fe(
            "kube-system/kube-dns:dns",
            "10.96.0.53",
            53,
            "UDP",
            &[(b1.as_str(), 5353)]
        ),
    ]);
    ensure!(
        dump["frontends"] == expected,
        "dump:\n{dump:#}\nexpected:\n{expected:#}"
    );
    Ok(())
}

#[test]
fn unusable_objects_are_skipped_logged_and_counted_while_the_rest_works() -> Result<()> {
    let sb = sandbox(1)?;
    let ip = sb.backend_ip(1);
    let docs = manifest::documents(&[
        web(&sb, &[1]),
        manifest::service("default/bad-ip", "10.96.999.1", &[("", 80, 8080, "TCP")]),
        manifest::service(
            "default/bad-proto",
            "10.96.0.77",
            &[("q", 80, 8080, "QUIC")],
        ),
        manifest::endpoint_slice(
            "default/web",
            "web-bad",
            &["not-an-ip", ip.as_str()],
            &[("http", 8080, "TCP")],
            &[],
        ),
    ]);
    sb.write_manifest("web.yaml", &docs)?;
    sb.write_manifest(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: [\n",
    )?;
    let mut agent = sb.start_agent()?;
    agent.wait_for_backends(VIP, 80, "TCP", &addrs(&sb, &[1], 8080), WAIT)?;
    let r = sb.probe_tcp(&format!("{VIP}:80"), 10)?;
    ensure!(r.ok == 10, "{r:?}");
    let log = std::fs::read_to_string(agent.log_path())?;
    for needle in [
        "skipped Service default/bad-ip: invalid_cluster_ip",
        "skipped Service default/bad-proto: unknown_protocol",
        "skipped EndpointSlice default/web-bad: invalid_endpoint_address",
        "broken.yaml#0: unparsable",
    ] {
        ensure!(log.contains(needle), "log lacks {needle:?}:\n{log}");
    }
    // The agent serves kube-proxy's metrics port inside the client netns.
    let metrics = sb.client(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://127.0.0.1:10249/metrics",
    ])?;
    for needle in [
        r#"bpfproxy_skipped_objects_total{kind="Service",reason="invalid_cluster_ip"} 1"#,
        r#"bpfproxy_skipped_objects_total{kind="Service",reason="unknown_protocol"} 1"#,
        r#"bpfproxy_skipped_objects_total{kind="Manifest",reason="unparsable"} 1"#,
    ] {
        ensure!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
    Ok(())
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend_until_it_leaves() -> Result<()> {
    let sb = sandbox(3)?;
    let mut svc = manifest::ServiceSpec::cluster_ip("default/sticky", "10.96.0.20")
        .port("http", 80, 8080, "TCP");
    svc.client_ip_affinity_seconds = Some(60);
    let slice = |backends: &[usize]| {
        let ips: Vec<String> = backends.iter().map(|i| sb.backend_ip(*i)).collect();
        let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
        manifest::endpoint_slice(
            "default/sticky",
            "sticky-1",
            &refs,
            &[("http", 8080, "TCP")],
            &[],
        )
    };
    sb.write_manifest(
        "sticky.yaml",
        &manifest::documents(&[svc.to_yaml(), slice(&[1, 2, 3])]),
    )?;
    let mut agent = sb.start_agent()?;
    agent.wait_for_backends("10.96.0.20", 80, "TCP", &addrs(&sb, &[1, 2, 3], 8080), WAIT)?;

    let r = sb.probe_tcp("10.96.0.20:80", 60)?;
    ensure!(
        r.ok == 60 && r.by_backend.len() == 1,
        "one client, one backend: {r:?}"
    );
    let chosen = r.by_backend.keys().next().cloned().unwrap_or_default();
    let idx: usize = chosen.trim_start_matches("backend-").parse()?;

    // The backend leaves the Service: the client moves, and sticks again.
    let rest: Vec<usize> = (1..=3).filter(|i| *i != idx).collect();
    sb.write_manifest(
        "sticky.yaml",
        &manifest::documents(&[svc.to_yaml(), slice(&rest)]),
    )?;
    agent.wait_for_backends("10.96.0.20", 80, "TCP", &addrs(&sb, &rest, 8080), WAIT)?;
    let r = sb.probe_tcp("10.96.0.20:80", 60)?;
    ensure!(
        r.ok == 60 && r.by_backend.len() == 1 && r.count(&chosen) == 0,
        "{r:?}"
    );
    Ok(())
}

#[test]
fn client_ip_affinity_expires_after_its_timeout() -> Result<()> {
    let sb = sandbox(3)?;
    let mut svc = manifest::ServiceSpec::cluster_ip("default/brief", "10.96.0.21")
        .port("http", 80, 8080, "TCP");
    svc.client_ip_affinity_seconds = Some(1);
    let ips: Vec<String> = (1..=3).map(|i| sb.backend_ip(i)).collect();
    let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    sb.write_manifest(
        "brief.yaml",
        &manifest::documents(&[
            svc.to_yaml(),
            manifest::endpoint_slice(
                "default/brief",
                "brief-1",
                &refs,
                &[("http", 8080, "TCP")],
                &[],
            ),
        ]),
    )?;
    let mut agent = sb.start_agent()?;
    agent.wait_for_backends("10.96.0.21", 80, "TCP", &addrs(&sb, &[1, 2, 3], 8080), WAIT)?;
    let hits = |a: &Agent| -> Result<u64> {
        Ok(a.dump_json()?["counters"]["affinity_hit"]
            .as_u64()
            .unwrap_or(0))
    };
    let before = hits(&agent)?;
    ensure!(sb.probe_tcp("10.96.0.21:80", 3)?.ok == 3);
    ensure!(
        hits(&agent)? == before + 2,
        "the 2nd and 3rd connection reuse the backend"
    );
    // Idle longer than timeoutSeconds: the next connection picks afresh.
    std::thread::sleep(Duration::from_millis(2300));
    ensure!(sb.probe_tcp("10.96.0.21:80", 1)?.ok == 1);
    ensure!(hits(&agent)? == before + 2, "an expired entry is no hit");
    Ok(())
}

// ---- AF_INET6 sockets addressing IPv4-mapped addresses (JVM, .NET) ----

/// `ip:port` as an AF_INET6 client spells it: `[::ffff:ip]:port`.
fn mapped(ip: &str, port: u16) -> String {
    format!("[::ffff:{ip}]:{port}")
}

/// `probe ARGS --to TO` in the client namespace (generous timeout).
fn probe_to<T: serde::de::DeserializeOwned>(sb: &Sandbox, mode: &[&str], to: &str) -> Result<T> {
    let mut args = mode.to_vec();
    args.extend(["--to", to]);
    sb.probe(&args, Duration::from_secs(60))
}

#[test]
fn tcp_from_ipv6_sockets_to_a_mapped_cluster_ip_reaches_every_backend_and_the_peer_reads_as_the_mapped_vip(
) -> Result<()> {
    let sb = sandbox(3)?;
    let _agent = start(&sb, &[1, 2, 3])?;
    let to = mapped(VIP, 80);
    let r: TcpReport = probe_to(&sb, &["tcp", "--count", "150"], &to)?;
    let counts: Vec<u64> = sb.backend_names().iter().map(|n| r.count(n)).collect();
    eprintln!("150 connections over AF_INET6: {counts:?}");
    ensure!(r.ok == 150, "{r:?}");
    ensure!(counts.iter().all(|c| *c > 0), "every backend: {counts:?}");
    let held = sb.hold(&to)?;
    ensure!(held.peer() == to, "getpeername: {}", held.peer());
    Ok(())
}

#[test]
fn udp_from_ipv6_sockets_to_a_mapped_cluster_ip_is_answered_by_the_mapped_vip() -> Result<()> {
    let sb = sandbox(3)?;
    let _agent = start(&sb, &[1, 2, 3])?;
    let to = mapped(VIP, 53);
    // Unconnected: sendmsg4 translates (the kernel converts the mapped
    // address first), recvmsg6 shows the VIP again.
    let u: UdpReport = probe_to(&sb, &["udp", "--count", "60"], &to)?;
    ensure!(u.ok == 60, "{u:?}");
    ensure!(u.sources == vec![to.clone()], "reply source: {u:?}");
    ensure!(u.by_backend.len() == 3, "spread: {u:?}");
    // Connected: connect6, getpeername6, recvmsg6.
    let c: UdpConnectedReport = probe_to(&sb, &["udp-connected"], &to)?;
    ensure!(c.ok && c.peer.as_deref() == Some(to.as_str()), "{c:?}");
    ensure!(
        c.reply
            .as_deref()
            .is_some_and(|r| r.starts_with("backend-")),
        "{c:?}"
    );
    Ok(())
}

#[test]
fn node_ports_answer_ipv6_sockets_on_mapped_loopback_and_node_addresses() -> Result<()> {
    let sb = sandbox(2)?;
    let mut svc =
        manifest::ServiceSpec::cluster_ip("default/np", "10.96.0.30").port("http", 80, 8080, "TCP");
    svc.type_ = "NodePort".into();
    svc.ports[0].node_port = Some(30080);
    let ips = sb.backend_ips();
    let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let slice =
        manifest::endpoint_slice("default/np", "np-1", &refs, &[("http", 8080, "TCP")], &[]);
    sb.write_manifest("np.yaml", &manifest::documents(&[svc.to_yaml(), slice]))?;
    let mut agent = sb.start_agent()?;
    agent.wait_for_backends("0.0.0.0", 30080, "TCP", &sb.backend_addrs(8080), WAIT)?;
    // The agent runs in the client namespace: its address is a node address.
    for to in [mapped("127.0.0.1", 30080), mapped(sb.client_ip(), 30080)] {
        let r: TcpReport = probe_to(&sb, &["tcp", "--count", "40"], &to)?;
        ensure!(r.ok == 40 && r.by_backend.len() == 2, "{to}: {r:?}");
    }
    Ok(())
}

#[test]
fn client_ip_affinity_keeps_one_backend_for_a_client_whether_it_uses_ipv4_or_ipv6_sockets(
) -> Result<()> {
    let sb = sandbox(3)?;
    let mut svc = manifest::ServiceSpec::cluster_ip("default/sticky", "10.96.0.20")
        .port("http", 80, 8080, "TCP");
    svc.client_ip_affinity_seconds = Some(60);
    let ips = sb.backend_ips();
    let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let slice = manifest::endpoint_slice(
        "default/sticky",
        "sticky-1",
        &refs,
        &[("http", 8080, "TCP")],
        &[],
    );
    sb.write_manifest("sticky.yaml", &manifest::documents(&[svc.to_yaml(), slice]))?;
    let mut agent = sb.start_agent()?;
    agent.wait_for_backends("10.96.0.20", 80, "TCP", &sb.backend_addrs(8080), WAIT)?;
    let v6: TcpReport = probe_to(&sb, &["tcp", "--count", "30"], &mapped("10.96.0.20", 80))?;
    ensure!(
        v6.ok == 30 && v6.by_backend.len() == 1,
        "one backend: {v6:?}"
    );
    // Affinity is per client network namespace, whatever the socket family.
    let v4 = sb.probe_tcp("10.96.0.20:80", 10)?;
    ensure!(
        v4.by_backend == v6.by_backend.keys().map(|k| (k.clone(), 10)).collect(),
        "{v4:?} vs {v6:?}"
    );
    Ok(())
}

#[test]
fn ipv6_sockets_connecting_to_a_mapped_service_without_endpoints_are_refused_at_once() -> Result<()>
{
    let sb = sandbox(1)?;
    let mut agent = start(&sb, &[1])?;
    sb.write_manifest("web.yaml", &web(&sb, &[]))?;
    agent.wait_until(|d| agent::backends(d, VIP, 80, "TCP") == Some(vec![]), WAIT)?;
    let r: ConnectTimeReport = probe_to(&sb, &["tcp-connect-time"], &mapped(VIP, 80))?;
    let (errno, name) = refusal_errno();
    ensure!(r.errno == Some(errno), "{name} expected: {r:?}");
    ensure!(r.elapsed_ms < 100.0, "refusal took {} ms", r.elapsed_ms);
    Ok(())
}

#[test]
fn internal_traffic_policy_local_applies_to_ipv6_sockets_too() -> Result<()> {
    let sb = sandbox(3)?;
    let mut svc =
        manifest::ServiceSpec::cluster_ip("default/web", VIP).port("http", 80, 8080, "TCP");
    svc.internal_traffic_policy = Some("Local".into());
    // Backends 1 and 2 run on this node (the sandbox agent's node name).
    let eps: Vec<manifest::Endpoint> = (1..=3)
        .map(|i| {
            let node = if i == 3 { "elsewhere" } else { "bpfpt-node" };
            manifest::Endpoint::ready(&sb.backend_ip(i)).on_node(node)
        })
        .collect();
    let slice =
        manifest::endpoint_slice_with("default/web", "web-1", &eps, &[("http", 8080, "TCP")]);
    sb.write_manifest("web.yaml", &manifest::documents(&[svc.to_yaml(), slice]))?;
    let mut agent = sb.start_agent()?;
    agent.wait_for_backends(VIP, 80, "TCP", &addrs(&sb, &[1, 2], 8080), WAIT)?;
    let r: TcpReport = probe_to(&sb, &["tcp", "--count", "40"], &mapped(VIP, 80))?;
    ensure!(
        r.ok == 40 && r.count("backend-3") == 0 && r.by_backend.len() == 2,
        "{r:?}"
    );
    Ok(())
}

#[test]
fn real_ipv6_destinations_pass_the_ipv6_hooks_untouched() -> Result<()> {
    let sb = sandbox(1)?;
    let agent = start(&sb, &[1])?;
    // A ULA address whose last 32 bits spell the ClusterIP (fd00::a60:a is
    // fd00::10.96.0.10), routed only inside the client namespace: a hook
    // that ignored the ::ffff:0:0/96 prefix would send it to a backend.
    let ula = "fd00::a60:a";
    sb.client_ns().ip(&[
        "-6",
        "addr",
        "add",
        &format!("{ula}/128"),
        "dev",
        "lo",
        "nodad",
    ])?;
    let _local = bpfproxy_tests::probe_server::ProbeServer::start(
        sb.client_ns(),
        sb.probe_bin(),
        "v6-local",
        &format!("[{ula}]"),
        &[80],
        &[],
        &sb.log_dir().join("v6-local.log"),
    )?;
    let translated = |a: &Agent| -> Result<u64> {
        Ok(a.dump_json()?["counters"]["translated"]
            .as_u64()
            .unwrap_or(0))
    };
    let before = translated(&agent)?;
    let r: TcpReport = probe_to(&sb, &["tcp", "--count", "5"], &format!("[{ula}]:80"))?;
    ensure!(r.ok == 5 && r.count("v6-local") == 5, "{r:?}");
    ensure!(translated(&agent)? == before, "nothing translated");
    Ok(())
}

// ---- a real JVM (Debian's OpenJDK, default settings) ----

/// Runs `java tests/java/Probe.java ARGS` in the client namespace and
/// cgroup; its stdout lines.
fn jvm(sb: &Sandbox, args: &[&str]) -> Result<Vec<String>> {
    let mut c = sb.client_command(paths::java_bin()?)?;
    c.arg(paths::java_probe()).args(args);
    // The JVM compiles the source file first: seconds, not milliseconds.
    let out = process::run_with_timeout(&mut c, Duration::from_secs(180))?;
    Ok(out.lines().map(str::to_string).collect())
}

#[test]
fn a_jvm_with_default_settings_gets_http_answers_from_every_backend_of_a_cluster_ip() -> Result<()>
{
    let sb = sandbox(3)?;
    let _agent = start(&sb, &[1, 2, 3])?;
    let lines = jvm(&sb, &["http", VIP, "80", "20"])?;
    let ok: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("ok ")).collect();
    let mut spread = std::collections::BTreeMap::<&str, u32>::new();
    for name in &ok {
        *spread.entry(name).or_default() += 1;
    }
    eprintln!(
        "JVM HTTP GETs: {} of {} ok, by backend {spread:?}",
        ok.len(),
        lines.len()
    );
    ensure!(lines.len() == 20 && ok.len() == 20, "{lines:#?}");
    ensure!(spread.len() >= 2, "several backends: {spread:?}");
    ensure!(
        spread.keys().all(|n| n.starts_with("backend-")),
        "{spread:?}"
    );
    Ok(())
}

#[test]
fn a_jvm_with_default_settings_sees_udp_replies_come_from_the_cluster_ip() -> Result<()> {
    let sb = sandbox(3)?;
    let _agent = start(&sb, &[1, 2, 3])?;
    let lines = jvm(&sb, &["udp", VIP, "53", "10"])?;
    eprintln!("JVM UDP: {lines:#?}");
    ensure!(lines.len() == 10, "{lines:#?}");
    for l in &lines {
        // The JVM prints an IPv4-mapped source as plain IPv4.
        ensure!(
            l.starts_with("reply backend-") && l.ends_with(&format!(" from /{VIP}:53")),
            "{l}"
        );
    }
    Ok(())
}

/// `bpfproxy dump --check ARGS` (with the sandbox's source and node
/// name, in the agent's network namespace: the node addresses it checks
/// are that namespace's): its exit code and output.
fn dump_check(sb: &Sandbox) -> Result<(i32, String)> {
    let out = sb
        .client_command(paths::bpfproxy_bin()?)?
        .arg("dump")
        .arg("--check")
        .arg("--bpffs")
        .arg(sb.bpffs())
        .arg("--source")
        .arg(sb.source_dir())
        .args(["--node-name", "bpfpt-node"])
        .output()
        .context("running bpfproxy dump --check")?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.code().unwrap_or(-1), text))
}

/// A map entry changed behind the agent's back: `dump --check` names it
/// and exits 1, the agent's periodic resync repairs it, and the check
/// passes again.
#[test]
fn dump_check_names_a_corrupted_entry_until_the_resync_repairs_it() -> Result<()> {
    use proxy_agent::{
        datapath::Op,
        loader::pin_dir,
        maps::{pinned::PinnedMaps, LbMaps},
    };
    let sb = sandbox(2)?;
    sb.write_manifest("web.yaml", &web(&sb, &[1, 2]))?;
    let mut cfg = sb.agent_config()?;
    // Long enough that the check sees the drift before the repair, also
    // under the kernel matrix's software CPU (a check there takes seconds).
    cfg.extra_args.push("--sync-period=20s".into());
    let mut agent = Agent::start(cfg)?;
    agent.wait_for_backends(VIP, 80, "TCP", &addrs(&sb, &[1, 2], 8080), WAIT)?;
    let (code, text) = dump_check(&sb)?;
    ensure!(
        code == 0 && text.contains("no drift"),
        "exit {code}: {text}"
    );

    let mut maps = PinnedMaps::open(&pin_dir(sb.bpffs()))?;
    let target = sb.backend_ip(1);
    let (id, good) = maps
        .read_all()?
        .backends
        .into_iter()
        .find(|(_, b)| b.ip().to_string() == target && b.port() == 8080)
        .context("backend 1's entry")?;
    let mut bad = good;
    bad.port_be = 9999u16.to_be();
    // A resync may fall between the corruption and the check (it repairs
    // first): then the entry is good again, and the corruption is redone.
    let mut found = None;
    for _ in 0..3 {
        maps.apply(&Op::UpsertBackend(id, bad))?;
        let (code, text) = dump_check(&sb)?;
        let repaired = maps.read_all()?.backends.get(&id) == Some(&good);
        if code == 0 && repaired {
            eprintln!("a resync repaired it before the check; again");
            continue;
        }
        found = Some((code, text));
        break;
    }
    let (code, text) = found.context("every try was repaired before its check")?;
    eprintln!("{text}");
    ensure!(code == 1, "drift exits 1, not {code}: {text}");
    ensure!(
        text.contains(&format!("backend {id}"))
            && text.contains(&format!("{target}:9999"))
            && text.contains(&format!("{target}:8080")),
        "the corrupted entry is named with both values: {text}"
    );

    // The agent's full resync (every 20 s here) writes it back.
    let t0 = Instant::now();
    loop {
        let (code, text) = dump_check(&sb)?;
        if code == 0 {
            eprintln!("repaired within {:?}", t0.elapsed());
            break;
        }
        ensure!(t0.elapsed() < WAIT, "still drifting after {WAIT:?}: {text}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let r = sb.probe_tcp(&format!("{VIP}:80"), 20)?;
    ensure!(r.ok == 20, "{r:?}");
    Ok(())
}

/// The agent's /metrics, from inside the client namespace it listens in.
fn metrics_text(sb: &Sandbox) -> Result<String> {
    let url = "http://127.0.0.1:10249/metrics";
    let t0 = Instant::now();
    loop {
        // A scrape reads every map's pins: under TCG on a loaded machine
        // one took longer than 5 s.
        match sb.client(&["curl", "-sS", "--max-time", "20", url]) {
            Ok(text) if text.contains("# EOF") => return Ok(text),
            _ if t0.elapsed() < WAIT => std::thread::sleep(Duration::from_millis(200)),
            other => return other.context("scraping /metrics"),
        }
    }
}

/// The value of the series whose line starts with `prefix` (name and
/// labels up to where the test cares), summed over matching lines.
fn series_sum(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// N connections through a Service show as N in /metrics for that Service
/// port, split over its backends; a Service without endpoints counts its
/// refusals; `dump` shows the same numbers beside each frontend.
#[test]
fn per_service_traffic_counters_count_connections_per_backend_and_refusals() -> Result<()> {
    let sb = sandbox(2)?;
    let mut docs = web(&sb, &[1, 2]);
    docs.push_str("---\n");
    docs.push_str(&manifest::service(
        "default/empty",
        "10.96.0.30",
        &[("http", 80, 8080, "TCP")],
    ));
    sb.write_manifest("web.yaml", &docs)?;
    let mut cfg = sb.agent_config()?;
    cfg.extra_args.push("--service-metrics-backends=100".into());
    let mut agent = Agent::start(cfg)?;
    agent.wait_for_backends(VIP, 80, "TCP", &addrs(&sb, &[1, 2], 8080), WAIT)?;
    let r = sb.probe_tcp(&format!("{VIP}:80"), 50)?;
    ensure!(r.ok == 50, "{r:?}");
    let refused = sb.probe_tcp("10.96.0.30:80", 3)?;
    ensure!(refused.failed == 3, "{refused:?}");

    let text = metrics_text(&sb)?;
    let web = ["namespace=\"default\"", "service=\"web\"", "port=\"http\""];
    let socket = [&web[..], &["datapath=\"socket\""]].concat();
    let n = series_sum(&text, "bpfproxy_service_connections_total", &socket);
    ensure!(n == 50, "50 connections counted as {n}:\n{text}");
    let mut per_backend = Vec::new();
    for i in [1, 2] {
        let be = format!("backend=\"{}:8080\"", sb.backend_ip(i));
        let labels = [&web[..], &[be.as_str()]].concat();
        let c = series_sum(&text, "bpfproxy_service_backend_connections_total", &labels);
        per_backend.push((c, r.count(&format!("backend-{i}"))));
    }
    eprintln!("per backend (counted, seen by the client): {per_backend:?}");
    ensure!(
        per_backend
            .iter()
            .all(|(counted, seen)| counted == seen && *counted > 0),
        "per-backend counts match where the connections went: {per_backend:?}"
    );
    let empty = ["service=\"empty\"", "port=\"http\""];
    let refusals = series_sum(&text, "bpfproxy_service_refused_total", &empty);
    ensure!(refusals == 3, "3 refusals counted as {refusals}:\n{text}");
    let none = series_sum(&text, "bpfproxy_service_refused_total", &web);
    ensure!(none == 0, "web refused nothing, counted {none}");

    let dump = agent.dump_text()?;
    ensure!(
        dump.contains("sock_connections=50") && dump.contains("refused=3"),
        "dump shows the counters beside each frontend:\n{dump}"
    );
    Ok(())
}
