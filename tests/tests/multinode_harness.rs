//! The multi-node sandbox itself (no agent): addressing, routing, isolation
//! and cleanup, so tests built on it can trust its wiring.
use std::{path::PathBuf, time::Duration};

use anyhow::{ensure, Result};
use bpfproxy_tests::{
    multinode::{node_ip, node_name, pod_ip, pod_name, ClusterConfig, ClusterSandbox},
    netns, ConnectTimeReport, TcpReport,
};

fn cluster() -> Result<ClusterSandbox> {
    ClusterSandbox::new(ClusterConfig {
        nodes: 3,
        pods_per_node: 1,
        probe_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_probe"))),
        ..ClusterConfig::default()
    })
}

const T: Duration = Duration::from_secs(30);

#[test]
fn the_external_client_reaches_every_node_and_no_pod() -> Result<()> {
    let sb = cluster()?;
    for i in 1..=3 {
        let r: TcpReport = sb.probe(
            sb.client_command(sb.probe_bin())?,
            &[
                "tcp",
                "--to",
                &format!("{}:8080", node_ip(i)),
                "--count",
                "3",
            ],
            T,
        )?;
        ensure!(r.ok == 3 && r.count(&node_name(i)) == 3, "node {i}: {r:?}");
        let c: ConnectTimeReport = sb.probe(
            sb.client_command(sb.probe_bin())?,
            &[
                "tcp-connect-time",
                "--to",
                &format!("{}:8080", pod_ip(i, 1)),
            ],
            T,
        )?;
        ensure!(
            !c.ok && c.errno == Some(libc::ENETUNREACH),
            "pods are not reachable from outside: {c:?}"
        );
    }
    Ok(())
}

#[test]
fn pods_and_nodes_reach_each_other_across_nodes() -> Result<()> {
    let sb = cluster()?;
    let r: TcpReport = sb.probe(
        sb.pod_command(1, 1, sb.probe_bin())?,
        &[
            "tcp",
            "--to",
            &format!("{}:8080", pod_ip(2, 1)),
            "--count",
            "3",
        ],
        T,
    )?;
    ensure!(r.ok == 3 && r.count(&pod_name(2, 1)) == 3, "{r:?}");
    let r: TcpReport = sb.probe(
        sb.node_command(3, sb.probe_bin())?,
        &[
            "tcp",
            "--to",
            &format!("{}:8080", pod_ip(1, 1)),
            "--count",
            "3",
        ],
        T,
    )?;
    ensure!(r.ok == 3 && r.count(&pod_name(1, 1)) == 3, "{r:?}");
    let r: TcpReport = sb.probe(
        sb.pod_command(2, 1, sb.probe_bin())?,
        &[
            "tcp",
            "--to",
            &format!("{}:8080", node_ip(3)),
            "--count",
            "3",
        ],
        T,
    )?;
    ensure!(r.ok == 3 && r.count(&node_name(3)) == 3, "{r:?}");
    Ok(())
}

#[test]
fn no_namespace_has_a_default_route_and_all_is_gone_after_drop() -> Result<()> {
    let sb = cluster()?;
    let mut names = vec![
        sb.client_ns().name().to_string(),
        sb.fabric_ns().name().to_string(),
    ];
    for i in 1..=3 {
        names.push(sb.node(i).ns.name().to_string());
        names.push(sb.pod(i, 1).ns.name().to_string());
        for ns in [&sb.node(i).ns, &sb.pod(i, 1).ns] {
            let routes = ns.ip(&["route", "show", "default"])?;
            ensure!(
                routes.trim().is_empty(),
                "{} has a default route: {routes}",
                ns.name()
            );
        }
    }
    let routes = sb.client_ns().ip(&["route", "show", "default"])?;
    ensure!(routes.trim().is_empty(), "client default route: {routes}");
    let cgroups: Vec<PathBuf> = (1..=3)
        .map(|i| sb.node(i).cgroup.path().to_path_buf())
        .collect();
    drop(sb);
    let left: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| names.contains(n))
        .collect();
    ensure!(left.is_empty(), "namespaces left: {left:?}");
    ensure!(cgroups.iter().all(|c| !c.exists()), "cgroups left");
    Ok(())
}
