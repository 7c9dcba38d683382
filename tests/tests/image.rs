//! The container image the DaemonSet runs (`cargo xtask image`), run with
//! podman as root: it answers `--version`, its `preflight` passes with the
//! host's bpffs and a test cgroup mounted in, and the agent inside it,
//! with only the capabilities the DaemonSet grants, serves a ClusterIP to
//! a sandbox namespace.
use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{ensure, Context, Result};
use bpfproxy_tests::{
    agent, bpfproxy_bin,
    container::{image, podman, require_image, run_options, Container},
    manifest, process, require_root, PrivateBpffs, Sandbox, SandboxConfig, TestCgroup,
};

const T: Duration = Duration::from_secs(60);
const VIP: &str = "10.96.0.10";

fn ready() -> Result<()> {
    require_root()?;
    require_image()
}

#[test]
fn the_image_runs_bpfproxy_at_the_workspace_version() -> Result<()> {
    ready()?;
    let mut c = podman();
    c.args(["run", "--rm"])
        .args(run_options())
        .arg(image())
        .arg("--version");
    let out = process::run_with_timeout(&mut c, T)?;
    ensure!(
        out.trim() == format!("bpfproxy {}", env!("CARGO_PKG_VERSION")),
        "{out:?}"
    );
    Ok(())
}

#[test]
fn preflight_inside_the_image_passes_with_the_hosts_bpffs_and_a_cgroup_mounted() -> Result<()> {
    ready()?;
    let bpffs = PrivateBpffs::new("imgpf")?;
    let cgroup = TestCgroup::new("imgpf")?;
    let b = bpffs.path().display().to_string();
    let mut c = podman();
    c.args(["run", "--rm", "--privileged"])
        .args(run_options())
        .args(["-v", &format!("{b}:{b}")])
        .args(["-v", &format!("{}:/host/cgroup", cgroup.path().display())])
        .arg(image())
        .args([
            "preflight",
            "--json",
            "--bpffs",
            &format!("{b}/bpfproxy"),
            "--cgroup",
            "/host/cgroup",
        ]);
    let out = process::run_with_timeout(&mut c, T).context("preflight must exit 0")?;
    let report: serde_json::Value = serde_json::from_str(&out)?;
    let checks = report["checks"].as_array().context("checks")?;
    let bad: Vec<&serde_json::Value> = checks.iter().filter(|c| c["status"] == "missing").collect();
    ensure!(bad.is_empty(), "missing inside the image: {bad:?}");
    let programs = checks
        .iter()
        .filter(|c| {
            c["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("program "))
        })
        .count();
    ensure!(programs >= 12, "every program verified: {report}");
    Ok(())
}

#[test]
fn the_agent_in_the_image_with_the_daemonsets_capabilities_serves_a_cluster_ip() -> Result<()> {
    ready()?;
    let sb = Sandbox::with_config(SandboxConfig {
        backends: 2,
        probe_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_probe"))),
        ..SandboxConfig::default()
    })?;
    let ips = sb.backend_ips();
    let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    sb.write_manifest(
        "web.yaml",
        &manifest::documents(&[
            manifest::service("default/web", VIP, &[("http", 80, 8080, "TCP")]),
            manifest::endpoint_slice("default/web", "web-1", &refs, &[("http", 8080, "TCP")], &[]),
        ]),
    )?;
    let _agent = start_in_container(&sb, &daemonset_security()?)?;
    wait_for_backends(&sb, 2)?;
    let r = sb.probe_tcp(&format!("{VIP}:80"), 40)?;
    println!("through the containerised agent: {:?}", r.by_backend);
    ensure!(r.ok == 40 && r.by_backend.len() == 2, "{r:?}");
    Ok(())
}

/// podman's options for the agent container's securityContext in the
/// DaemonSet: its capabilities only (not privileged), no seccomp filter.
fn daemonset_security() -> Result<Vec<String>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/daemonset.yaml");
    let ds: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    let sc = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    ensure!(sc["privileged"] == serde_yaml::Value::Bool(false), "{sc:?}");
    ensure!(sc["seccompProfile"]["type"] == "Unconfined", "{sc:?}");
    let caps: Vec<String> = sc["capabilities"]["add"]
        .as_sequence()
        .context("capabilities.add")?
        .iter()
        .filter_map(|c| c.as_str().map(str::to_lowercase))
        .collect();
    ensure!(!caps.is_empty(), "{sc:?}");
    Ok(vec![
        "--cap-drop=all".into(),
        format!("--cap-add={}", caps.join(",")),
        "--security-opt=seccomp=unconfined".into(),
    ])
}

/// `bpfproxy run` in the image, in the sandbox's network namespace, on its
/// bpffs and cgroup (mounted in), reading its manifest directory.
fn start_in_container(sb: &Sandbox, security: &[String]) -> Result<Container> {
    let name = format!("bpfpt-{}-image", std::process::id());
    let (bpffs, source) = (
        sb.bpffs().display().to_string(),
        sb.source_dir().display().to_string(),
    );
    let netns = format!("ns:{}", sb.client_ns().path().display());
    let mut c = podman();
    c.args(["run", "-d", "--rm", "--name", &name, "--network", &netns])
        .args(security)
        .args(run_options())
        .args(["-v", &format!("{bpffs}:{bpffs}")])
        .args(["-v", &format!("{source}:{source}:ro")])
        .args([
            "-v",
            &format!("{}:/host/cgroup", sb.cgroup().path().display()),
        ])
        .arg(image())
        .args([
            "run",
            "--source",
            &source,
            "--cgroup",
            "/host/cgroup",
            "--bpffs",
            &bpffs,
        ])
        .args([
            "--devices=none",
            "--metrics-bind-address=",
            "--healthz-bind-address=",
            "--node-name=img",
        ])
        .stdout(Stdio::null());
    let container = Container { name };
    process::run_with_timeout(&mut c, T).context("starting the agent's container")?;
    Ok(container)
}

/// Until `bpfproxy dump` (the host's binary, reading the shared pins) shows
/// `want` backends for the ClusterIP.
fn wait_for_backends(sb: &Sandbox, want: usize) -> Result<()> {
    let deadline = std::time::Instant::now() + T;
    loop {
        let out = std::process::Command::new(bpfproxy_bin()?)
            .args(["dump", "--json", "--bpffs"])
            .arg(sb.bpffs())
            .output()?;
        if let Ok(dump) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            if agent::backends(&dump, VIP, 80, "TCP").is_some_and(|b| b.len() == want) {
                return Ok(());
            }
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the containerised agent never programmed {VIP}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
