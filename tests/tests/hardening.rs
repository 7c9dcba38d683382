//! The agent against a hostile node: map sizes from flags (and a restart
//! with another size), pins that disappear under a running agent (a stray
//! `bpfproxy cleanup`, the bpffs unmounted). Real kernel, real agent binary,
//! clients in the sandbox's network namespace (see `bpfproxy_tests::sandbox`).
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use bpfproxy_tests::{bpffs, manifest, process, Agent, Sandbox, SandboxConfig};
use proxy_agent::maps::sizes;
use proxy_common::maps as names;

const VIP: &str = "10.96.0.10";
const WAIT: Duration = Duration::from_secs(20);

fn sandbox() -> Result<Sandbox> {
    Sandbox::with_config(SandboxConfig {
        backends: 2,
        probe_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_probe"))),
        ..SandboxConfig::default()
    })
}

/// Service `default/web` (80→8080/TCP) on both backends; the agent started
/// with `extra` arguments and serving it.
fn start(sb: &Sandbox, extra: &[&str]) -> Result<Agent> {
    let ips = sb.backend_ips();
    let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let docs = manifest::documents(&[
        manifest::service("default/web", VIP, &[("http", 80, 8080, "TCP")]),
        manifest::endpoint_slice("default/web", "web-1", &refs, &[("http", 8080, "TCP")], &[]),
    ]);
    sb.write_manifest("web.yaml", &docs)?;
    let mut cfg = sb.agent_config()?;
    cfg.extra_args.extend(extra.iter().map(|s| s.to_string()));
    let mut agent = Agent::start(cfg)?;
    agent.wait_for_backends(VIP, 80, "TCP", &sb.backend_addrs(8080), WAIT)?;
    Ok(agent)
}

fn serves(sb: &Sandbox) -> Result<()> {
    let r = sb.probe_tcp(&format!("{VIP}:80"), 20)?;
    ensure!(r.ok == 20 && r.failed == 0, "{r:?}");
    Ok(())
}

/// The agent's /metrics (it listens in the client namespace).
fn metrics(sb: &Sandbox) -> Result<String> {
    sb.client(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://127.0.0.1:10249/metrics",
    ])
}

/// Polls `cond` every 100 ms for up to `within`; fails with `what`.
fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let t0 = Instant::now();
    loop {
        if cond()? {
            return Ok(());
        }
        if t0.elapsed() > within {
            bail!("{what} not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pin_dir(sb: &Sandbox) -> PathBuf {
    proxy_agent::loader::pin_dir(sb.bpffs())
}

/// Every map pin and the socket programs' link pins.
fn expected_pins(sb: &Sandbox) -> Vec<PathBuf> {
    let dir = pin_dir(sb);
    let maps = names::ALL.iter().map(|m| dir.join(m));
    let links = proxy_agent::loader::SOCK_PROGRAMS
        .iter()
        .map(|p| dir.join("links").join(p));
    maps.chain(links).collect()
}

/// The TCX link pins of the client namespace's veth (`--devices` it).
fn tc_pins(sb: &Sandbox) -> Vec<PathBuf> {
    let links = pin_dir(sb).join("links");
    ["ingress", "egress"]
        .iter()
        .map(|d| links.join(format!("tc-{}-{d}", sb.veth().a())))
        .collect()
}

fn all_pinned(sb: &Sandbox) -> bool {
    expected_pins(sb).iter().all(|p| p.exists())
}

fn log(agent: &Agent) -> Result<String> {
    std::fs::read_to_string(agent.log_path()).context("reading the agent log")
}

#[test]
fn a_configured_map_size_is_what_the_kernel_map_has_and_metrics_cover_every_map() -> Result<()> {
    let sb = sandbox()?;
    let mut agent = start(&sb, &["--map-size-services", "64"])?;
    let pinned = sizes::read_pinned(&pin_dir(&sb))?;
    ensure!(pinned[names::SERVICES] == 64, "{pinned:?}");
    ensure!(
        pinned[names::CONNTRACK] == names::CONNTRACK_MAX,
        "{pinned:?}"
    );
    // Unset, the new-flow table's size is a share per possible CPU.
    let cpus = u32::try_from(aya::util::nr_cpus().map_err(|(_, e)| e)?)?;
    ensure!(
        pinned[names::CT_NEW] == cpus * names::CT_NEW_PER_CPU,
        "{cpus} CPUs: {pinned:?}"
    );
    serves(&sb)?;
    let mut text = String::new();
    eventually(Duration::from_secs(10), "metrics of every map", || {
        // The metrics server may still be binding: not yet, not an error.
        let Ok(t) = metrics(&sb) else {
            return Ok(false);
        };
        text = t;
        Ok(names::ALL.iter().all(|m| {
            text.contains(&format!("bpfproxy_map_entries{{map=\"{m}\"}}"))
                && text.contains(&format!("bpfproxy_map_capacity_entries{{map=\"{m}\"}}"))
        }))
    })
    .with_context(|| text.clone())?;
    for needle in [
        r#"bpfproxy_map_capacity_entries{map="bpfp_svc_v1"} 64"#,
        // One ClusterIP port with 2 endpoints: master + 2 slots.
        r#"bpfproxy_map_entries{map="bpfp_svc_v1"} 3"#,
        r#"bpfproxy_map_capacity_entries{map="bpfp_ct_v1"} 262144"#,
    ] {
        ensure!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }

    // Restarted with another size: the pinned map (and its entries) stays,
    // with a warning, and the agent serves instead of crash-looping.
    agent.terminate(Duration::from_secs(10))?;
    let mut cfg = agent.config().clone();
    cfg.extra_args = vec!["--map-size-services".into(), "128".into()];
    drop(agent);
    // A pin an earlier version left: its counter array under an older
    // layout's name (here: the current array pinned a second time).
    let retired = pin_dir(&sb).join(names::RETIRED[4]);
    aya::maps::MapData::from_pin(pin_dir(&sb).join(names::COUNTERS))?.pin(&retired)?;
    ensure!(retired.exists(), "the retired pin was not made");
    let mut agent = Agent::start(cfg)?;
    eventually(Duration::from_secs(10), "the size warning", || {
        agent.check_alive()?;
        Ok(log(&agent)?.contains("takes effect after `bpfproxy cleanup`"))
    })?;
    ensure!(sizes::read_pinned(&pin_dir(&sb))?[names::SERVICES] == 64);
    ensure!(!retired.exists(), "the retired pin is still there");
    ensure!(
        pin_dir(&sb).join(names::COUNTERS).exists(),
        "the current counters' pin went too"
    );
    ensure!(log(&agent)?.contains("removed the pin of a map earlier versions used"));
    agent.wait_for_backends(VIP, 80, "TCP", &sb.backend_addrs(8080), WAIT)?;
    serves(&sb)?;
    eventually(Duration::from_secs(10), "capacity of the kept map", || {
        let text = metrics(&sb).unwrap_or_default();
        Ok(text.contains(r#"bpfproxy_map_capacity_entries{map="bpfp_svc_v1"} 64"#))
    })?;
    agent.check_alive()
}

#[test]
fn pins_removed_under_a_running_agent_come_back_and_a_restart_stays_seamless() -> Result<()> {
    let sb = sandbox()?;
    // TC programs too, on the sandbox's own veth (inside its namespace).
    let devices = format!("--devices={}", sb.veth().a());
    let mut agent = start(&sb, &[devices.as_str()])?;
    let tc = tc_pins(&sb);
    ensure!(all_pinned(&sb), "pinned at start");
    eventually(Duration::from_secs(5), "TC links pinned", || {
        Ok(tc.iter().all(|p| p.exists()))
    })?;
    // What an operator's stray `bpfproxy cleanup` does.
    let mut cleanup = std::process::Command::new(&agent.config().bin);
    cleanup.arg("cleanup").arg("--bpffs").arg(sb.bpffs());
    process::run_with_timeout(&mut cleanup, Duration::from_secs(10))?;
    ensure!(!pin_dir(&sb).exists(), "cleanup removed the pins");
    serves(&sb).context("the links live on while the agent holds them")?;
    let t0 = Instant::now();
    eventually(Duration::from_secs(5), "the pins back", || {
        agent.check_alive()?;
        Ok(all_pinned(&sb) && tc.iter().all(|p| p.exists()))
    })?;
    eprintln!("pins back after {:?}", t0.elapsed());
    serves(&sb)?;
    ensure!(
        log(&agent)?.contains("pinned the maps and links again"),
        "{}",
        agent.log_tail(20)
    );
    ensure!(
        metrics(&sb)?.contains("bpfproxy_repins_total 1"),
        "one re-pin counted"
    );
    // The pins are the real thing: a new agent takes over the links.
    agent.kill()?;
    serves(&sb).context("the re-pinned links outlive the agent")?;
    agent.start_again()?;
    agent.wait_for_backends(VIP, 80, "TCP", &sb.backend_addrs(8080), WAIT)?;
    eventually(
        Duration::from_secs(10),
        "the programs swapped in place",
        || Ok(log(&agent)?.matches("Replaced").count() >= proxy_agent::loader::SOCK_PROGRAMS.len()),
    )?;
    serves(&sb)
}

#[test]
fn an_unmounted_bpffs_is_logged_while_serving_goes_on_and_pins_return_with_it() -> Result<()> {
    let sb = sandbox()?;
    let agent = start(&sb, &[])?;
    let root = sb.bpffs().to_path_buf();
    // Lazily: the agent's lock holds the pin directory open.
    bpffs::umount_lazy(&root)?;
    ensure!(!all_pinned(&sb), "the pins went with the mount");
    let mut agent = agent;
    eventually(
        Duration::from_secs(5),
        "the re-pin error in the log",
        || {
            agent.check_alive()?;
            Ok(log(&agent)?.contains("cannot re-pin the maps and links"))
        },
    )?;
    serves(&sb).context("serving without pins")?;
    bpffs::mount(&root)?;
    eventually(Duration::from_secs(5), "the pins on the new bpffs", || {
        agent.check_alive()?;
        Ok(all_pinned(&sb))
    })?;
    serves(&sb)?;
    ensure!(metrics(&sb)?.contains("bpfproxy_repins_total 1"));
    Ok(())
}
