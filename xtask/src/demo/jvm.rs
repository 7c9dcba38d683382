//! A JVM client pod, as our users' Spring Boot and other Java services are:
//! `java Probe.java` (the tests' single-file client) with the JVM's default
//! settings, so it opens AF_INET6 sockets and reaches the ClusterIPs as
//! IPv4-mapped addresses (`::ffff:10.96.0.20`) — the `*6` socket hooks.
//! Shown when a JDK is present (`cargo xtask setup` installs one).
use std::time::Duration;

use anyhow::{ensure, Result};
use bpfproxy_tests::multinode::{pod_name, ClusterSandbox};
use bpfproxy_tests::{paths, process};

use super::layout::Layout;
use super::services::{DNS_IP, DNS_PORT, WEB_IP};

/// HTTP requests and UDP datagrams the JVM sends.
const REQUESTS: usize = 10;
/// The JVM compiles the source file before it runs: seconds.
const JVM_TIMEOUT: Duration = Duration::from_secs(180);

/// HTTP to the web ClusterIP and UDP to kube-dns from the client pod's
/// JVM; every request answered by a web backend, every UDP reply from the
/// ClusterIP.
pub(super) fn jvm_client(sb: &ClusterSandbox, layout: Layout) -> Result<String> {
    let Ok(java) = paths::java_bin() else {
        println!("\n  no JDK on this machine: the JVM client pod is left out");
        return Ok("no JDK here (`cargo xtask setup` installs openjdk-17-jdk-headless)".into());
    };
    let (i, j) = layout.client_pod();
    println!(
        "\n  a JVM in {} (default settings: AF_INET6 sockets to ::ffff:<ClusterIP>):",
        pod_name(i, j)
    );
    let run = |args: &[&str]| -> Result<Vec<String>> {
        let mut c = sb.pod_command(i, j, &java)?;
        c.arg(paths::java_probe()).args(args);
        let out = process::run_with_timeout(&mut c, JVM_TIMEOUT)?;
        Ok(out.lines().map(str::to_string).collect())
    };
    let count = REQUESTS.to_string();
    let http = run(&["http", WEB_IP, "80", &count])?;
    let answered: Vec<&str> = http
        .iter()
        .filter_map(|l| l.strip_prefix("ok "))
        .filter_map(|body| body.split_whitespace().next())
        .collect();
    println!("    $ java Probe.java http {WEB_IP} 80 {count}   -> {answered:?}");
    ensure!(
        answered.len() == REQUESTS && answered.iter().all(|n| layout.backend_names().contains(*n)),
        "JVM HTTP to {WEB_IP}: {http:?}"
    );
    let udp = run(&["udp", DNS_IP, &DNS_PORT.to_string(), &count])?;
    let from = format!("from /{DNS_IP}:{DNS_PORT}");
    let replies = udp
        .iter()
        .filter(|l| l.starts_with("reply ") && l.ends_with(&from))
        .count();
    println!("    $ java Probe.java udp {DNS_IP} {DNS_PORT} {count}   -> {replies} replies {from}");
    ensure!(replies == REQUESTS, "JVM UDP to {DNS_IP}: {udp:?}");
    Ok(format!(
        "a JVM (default settings, IPv6 sockets): {REQUESTS}/{REQUESTS} HTTP to {WEB_IP}, \
         {REQUESTS}/{REQUESTS} UDP replies {from}"
    ))
}
