//! Tests of the harness itself, without the agent: the sandbox wiring, the
//! probe's protocols, isolation (no default route, clients in the cgroup) and
//! cleanup. Privileged: run as root (they fail, never skip, otherwise).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bpfproxy_tests::{
    bpffs, netns, require_root, Netns, PrivateBpffs, Sandbox, SandboxConfig, TestCgroup,
};

fn config(backends: usize) -> SandboxConfig {
    SandboxConfig {
        backends,
        probe_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_probe"))),
        ..SandboxConfig::default()
    }
}

/// What a sandbox leaves behind if its cleanup fails.
struct Traces {
    netns: Vec<String>,
    cgroup: PathBuf,
    bpffs: PathBuf,
    work: PathBuf,
    pids: Vec<u32>,
}

fn traces(sb: &Sandbox) -> Traces {
    let mut pids = sb.client_ns().pids();
    pids.extend(sb.backend_ns().pids());
    Traces {
        netns: vec![
            sb.client_ns().name().to_string(),
            sb.backend_ns().name().to_string(),
        ],
        cgroup: sb.cgroup().path().to_path_buf(),
        bpffs: sb.bpffs().to_path_buf(),
        work: sb
            .source_dir()
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
        pids,
    }
}

fn assert_gone(t: &Traces) -> Result<()> {
    for n in &t.netns {
        ensure!(!netns::exists(n), "netns {n} still exists");
        ensure!(!netns::list().contains(n), "netns {n} still listed");
    }
    ensure!(
        !t.cgroup.exists(),
        "cgroup {} still exists",
        t.cgroup.display()
    );
    ensure!(
        !bpffs::is_mounted(&t.bpffs),
        "{} still mounted",
        t.bpffs.display()
    );
    ensure!(!t.bpffs.exists(), "{} still exists", t.bpffs.display());
    ensure!(!t.work.exists(), "{} still exists", t.work.display());
    let alive: Vec<u32> = t
        .pids
        .iter()
        .copied()
        .filter(|p| bpfproxy_tests::process::pid_alive(*p))
        .collect();
    ensure!(alive.is_empty(), "processes still alive: {alive:?}");
    Ok(())
}

#[test]
fn sandbox_reaches_every_backend_directly_and_cleans_up() -> Result<()> {
    require_root()?;
    let sb = Sandbox::with_config(config(3))?;
    let t = traces(&sb);
    ensure!(
        t.pids.len() >= 3,
        "expected 3 servers, found pids {:?}",
        t.pids
    );

    for i in 1..=3 {
        let ip = sb.backend_ip(i);
        let name = sb.backend_name(i);
        for port in [8080, 9090] {
            let r = sb.probe_tcp(&format!("{ip}:{port}"), 5)?;
            ensure!(
                r.ok == 5 && r.failed == 0 && r.count(&name) == 5,
                "tcp {ip}:{port}: {r:?}"
            );
        }
        let u = sb.probe_udp(&format!("{ip}:5353"), 5)?;
        ensure!(u.ok == 5 && u.count(&name) == 5, "udp {ip}:5353: {u:?}");
        ensure!(
            u.sources == vec![format!("{ip}:5353")],
            "udp sources: {u:?}"
        );
        let c = sb.probe_udp_connected(&format!("{ip}:5353"))?;
        ensure!(
            c.ok && c.reply.as_deref() == Some(name.as_str())
                && c.peer.as_deref() == Some(format!("{ip}:5353").as_str()),
            "udp-connected: {c:?}"
        );
    }

    // A real HTTP client gets the name too.
    let body = sb.client(&[
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "--max-time",
        "5",
        "http://10.200.0.3:8080/",
    ])?;
    ensure!(body == "backend-2\n", "curl body {body:?}");

    // A long-lived connection answers each ping over the same socket.
    let mut h = sb.hold("10.200.0.4:9090")?;
    ensure!(h.peer() == "10.200.0.4:9090", "hold peer {}", h.peer());
    for _ in 0..3 {
        ensure!(h.ping()? == "backend-3");
    }
    h.close()?;

    drop(sb);
    assert_gone(&t)
}

#[test]
fn sandbox_is_isolated() -> Result<()> {
    require_root()?;
    let sb = Sandbox::with_config(config(2))?;

    // No default route anywhere: an untranslated ClusterIP dies inside.
    for ns in [sb.client_ns(), sb.backend_ns()] {
        let routes = ns.run(&["ip", "-4", "route", "show"], Duration::from_secs(5))?;
        ensure!(
            !routes.contains("default"),
            "{} has a default route:\n{routes}",
            ns.name()
        );
        let links = ns.run(&["ip", "-o", "link", "show"], Duration::from_secs(5))?;
        ensure!(
            links.lines().count() == 2,
            "{} should hold only lo and one veth end:\n{links}",
            ns.name()
        );
    }
    let c = sb.probe_connect_time("10.96.0.10:80")?;
    ensure!(
        !c.ok && c.errno == Some(libc::ENETUNREACH),
        "a ClusterIP without the agent must be unreachable: {c:?}"
    );
    let u = sb.probe_udp("10.96.0.10:53", 2)?;
    ensure!(
        u.ok == 0 && u.failed == 2,
        "udp to an untranslated VIP: {u:?}"
    );

    // Clients run in the test cgroup and the client namespace.
    let cg = sb.client(&["cat", "/proc/self/cgroup"])?;
    let want = format!(
        "0::/{}",
        sb.cgroup()
            .path()
            .file_name()
            .context("cgroup dir name")?
            .to_string_lossy()
    );
    ensure!(
        cg.lines().any(|l| l == want),
        "client cgroup {cg:?}, want {want}"
    );
    let ns_link = sb.client(&["readlink", "/proc/self/ns/net"])?;
    let want_ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(sb.client_ns().path())?);
    ensure!(
        ns_link.trim() == format!("net:[{want_ino}]"),
        "client netns {ns_link:?}, want inode {want_ino}"
    );
    // The agent's directories are where the agent needs them.
    ensure!(bpffs::is_bpffs(sb.bpffs()), "bpffs not mounted");
    ensure!(sb.cgroup().path().join("cgroup.procs").exists());
    Ok(())
}

#[test]
fn stopping_a_backend_refuses_connections_until_restarted() -> Result<()> {
    require_root()?;
    let mut sb = Sandbox::with_config(config(1))?;
    sb.stop_backend(1)?;
    let c = sb.probe_connect_time("10.200.0.2:8080")?;
    ensure!(!c.ok && c.errno == Some(libc::ECONNREFUSED), "{c:?}");
    sb.start_backend(1)?;
    let r = sb.probe_tcp("10.200.0.2:8080", 3)?;
    ensure!(r.ok == 3, "{r:?}");
    Ok(())
}

#[test]
fn probe_loop_runs_in_the_background() -> Result<()> {
    require_root()?;
    let sb = Sandbox::with_config(config(1))?;
    let bg = sb.spawn_probe(&[
        "loop",
        "--to",
        "10.200.0.2:8080",
        "--interval-ms",
        "50",
        "--duration-ms",
        "600",
    ])?;
    let r: bpfproxy_tests::TcpReport = bg.finish_json(Duration::from_secs(20))?;
    ensure!(r.failed == 0 && (8..=13).contains(&r.ok), "{r:?}");
    ensure!(r.elapsed_ms >= 550.0 && r.elapsed_ms < 3000.0, "{r:?}");
    let l = sb.probe_loop("10.200.0.2:9090", 100, 300)?;
    ensure!(l.ok >= 2 && l.failed == 0, "{l:?}");
    Ok(())
}

#[test]
fn manifests_are_written_atomically() -> Result<()> {
    require_root()?;
    let sb = Sandbox::with_config(config(1))?;
    let y = bpfproxy_tests::manifest::service("web", "10.96.0.10", &[("http", 80, 8080, "TCP")]);
    sb.write_manifest("web.yaml", &y)?;
    let names: Vec<String> = std::fs::read_dir(sb.source_dir())?
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .collect();
    ensure!(names == vec!["web.yaml".to_string()], "{names:?}");
    ensure!(std::fs::read_to_string(sb.source_dir().join("web.yaml"))? == y);
    sb.remove_manifest("web.yaml")?;
    sb.remove_manifest("web.yaml")?; // idempotent
    ensure!(std::fs::read_dir(sb.source_dir())?.next().is_none());
    ensure!(sb.write_manifest("../x.yaml", &y).is_err());
    Ok(())
}

#[test]
fn guards_clean_up_when_a_test_panics() -> Result<()> {
    require_root()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let ns = Netns::new("p").expect("netns");
        let cg = TestCgroup::new("p").expect("cgroup");
        let fs = PrivateBpffs::new("p").expect("bpffs");
        // A process left running inside both.
        let mut c = ns.command_in_cgroup("sleep", &cg).expect("command");
        let child = c.arg("30").spawn().expect("sleep");
        tx.send((
            ns.name().to_string(),
            cg.path().to_path_buf(),
            fs.path().to_path_buf(),
            child,
        ))
        .expect("send");
        panic!("deliberate panic to test cleanup");
    })
    .join();
    ensure!(r.is_err(), "the thread should have panicked");
    let (ns, cg, fs, mut child) = rx.recv()?;
    ensure!(!netns::exists(&ns), "netns {ns} left behind");
    ensure!(!cg.exists(), "cgroup {} left behind", cg.display());
    ensure!(
        !bpffs::is_mounted(&fs) && !fs.exists(),
        "{} left behind",
        fs.display()
    );
    // The guards killed it: it has exited (and is reaped here).
    let status = bpfproxy_tests::process::wait_deadline(&mut child, Duration::from_secs(2))?;
    ensure!(status.is_some(), "sleep {} still alive", child.id());
    Ok(())
}
