//! `cargo xtask demo`: bpfproxy on a sandbox "cluster" on this machine.
//!
//! A client "pod" (network namespace + cgroup) and backend "pods" (one
//! namespace, one address each) joined by a veth, with no route to anywhere
//! else; `bpfproxy run` on a manifest directory, attached to the client's
//! cgroup only and pinning into a private bpffs; real requests (`curl`, TCP,
//! UDP) to a ClusterIP; the spread over the backends; `bpfproxy dump`.
//! Everything is removed at the end, on error, and on Ctrl-C (the signal only
//! sets a flag; the sandbox's guards do the cleanup as the demo unwinds).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bpfproxy_tests::{interrupt, manifest, process, require_root, Sandbox, SandboxConfig};

use crate::{setup, sh, workspace};

const VIP: &str = "10.96.0.10";
const SERVICE: &str = "demo/web";
/// Upper bound for `--hold`.
const MAX_HOLD_SECS: u64 = 3600;

/// The demo's command-line options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of backend pods.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=20))]
    pub backends: u16,
    /// TCP connections used to show the spread over the backends.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub requests: u32,
    /// Keep the sandbox up for SECS seconds (at most 3600) or until Ctrl-C,
    /// to try it by hand.
    #[arg(long, value_name = "SECS")]
    pub hold: Option<u64>,
    /// Use the binaries already in target/debug (no setup, no build).
    #[arg(long)]
    pub no_build: bool,
}

pub fn run(args: Args) -> Result<()> {
    require_root().context(
        "the demo creates network namespaces, a cgroup and a bpffs mount and loads \
         eBPF programs: run `cargo xtask demo` as root",
    )?;
    interrupt::install()?;
    let result = demo(&args);
    // Every guard has been dropped here: the sandbox is gone either way.
    if interrupt::requested() {
        println!("\ninterrupted: sandbox removed (namespaces, cgroup, bpffs, processes)");
        return Ok(());
    }
    result
}

fn demo(args: &Args) -> Result<()> {
    let backends = usize::from(args.backends);
    let mut step = Steps::new(7);

    step.next("build bpfproxy and the probe client/server");
    let (bpfproxy, probe) = build(args.no_build)?;
    interrupt::check()?;

    step.next("sandbox: client pod, backend pods, veth, cgroup, bpffs");
    let sb = Sandbox::with_config(SandboxConfig {
        backends,
        tcp_ports: vec![8080],
        udp_ports: vec![5353],
        probe_bin: Some(probe),
    })?;
    describe_sandbox(&sb)?;
    interrupt::check()?;

    step.next(&format!(
        "manifest: Service {SERVICE} ({VIP}) and its EndpointSlice"
    ));
    let yaml = demo_manifest(&sb);
    sb.write_manifest("demo-web.yaml", &yaml)?;
    println!(
        "{}/demo-web.yaml:\n{}",
        sb.source_dir().display(),
        indent(&yaml)
    );

    step.next("start bpfproxy and wait for the Service in the kernel maps");
    let mut cfg = sb.agent_config()?;
    cfg.bin = bpfproxy;
    let shown: Vec<String> = cfg
        .run_args()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    println!("$ {} {}", cfg.bin.display(), shown.join(" "));
    println!(
        "  (inside netns {}, log {}/agent.log)",
        sb.client_ns().name(),
        sb.log_dir().display()
    );
    let started = Instant::now();
    let mut agent = bpfproxy_tests::Agent::start(cfg)?;
    agent.wait_for_backends(
        VIP,
        80,
        "TCP",
        &sb.backend_addrs(8080),
        Duration::from_secs(30),
    )?;
    agent.wait_for_backends(
        VIP,
        53,
        "UDP",
        &sb.backend_addrs(5353),
        Duration::from_secs(30),
    )?;
    println!(
        "  {VIP}:80/TCP and {VIP}:53/UDP -> {backends} backends, ready in {:.2?}",
        started.elapsed()
    );
    interrupt::check()?;

    step.next("traffic from the client pod to the ClusterIP");
    curl(&sb)?;
    interrupt::check()?;
    let to = format!("{VIP}:80");
    println!(
        "\n  probe tcp --to {to} --count {}: one new connection each",
        args.requests
    );
    let r = sb.probe_tcp(&to, args.requests)?;
    print_spread(&sb, &r.by_backend, r.ok, r.failed);
    show_errors(&r.errors);
    interrupt::check()?;
    let udp_to = format!("{VIP}:53");
    let n_udp = 100.min(args.requests);
    println!(
        "\n  probe udp --to {udp_to} --count {n_udp}: one unconnected socket, sendto per datagram"
    );
    let u = sb.probe_udp(&udp_to, n_udp)?;
    print_spread(&sb, &u.by_backend, u.ok, u.failed);
    show_errors(&u.errors);
    println!(
        "  replies seen from: {} (the VIP: recvmsg4 rewrites the backend's address)",
        u.sources.join(", ")
    );
    interrupt::check()?;
    outside_cgroup(&sb)?;
    interrupt::check()?;

    step.next("bpfproxy dump (what the kernel maps hold)");
    let mut c = std::process::Command::new(&agent.config().bin);
    c.arg("dump").arg("--bpffs").arg(sb.bpffs());
    println!("$ {}", process::describe(&c));
    println!("{}", indent(&agent.dump_text()?));

    if let Some(secs) = args.hold {
        hold(&sb, &mut agent, secs.min(MAX_HOLD_SECS))?;
    }

    step.next("clean up");
    drop(agent);
    let names = [
        sb.client_ns().name().to_string(),
        sb.backend_ns().name().to_string(),
    ];
    let cgroup = sb.cgroup().path().to_path_buf();
    let bpffs = sb.bpffs().to_path_buf();
    drop(sb);
    let left: Vec<String> = names
        .iter()
        .filter(|n| bpfproxy_tests::netns::exists(n))
        .cloned()
        .chain(cgroup.exists().then(|| cgroup.display().to_string()))
        .chain(bpfproxy_tests::bpffs::is_mounted(&bpffs).then(|| bpffs.display().to_string()))
        .collect();
    if !left.is_empty() {
        bail!("cleanup left {left:?} behind; `cargo xtask sweep` removes leftovers");
    }
    println!(
        "  removed netns {}, cgroup {}, bpffs {}, all processes",
        names.join(" and "),
        cgroup.display(),
        bpffs.display()
    );
    Ok(())
}

/// Setup (nightly rust-src, bpf-linker) and build, unless `no_build`;
/// returns the agent and probe binaries.
fn build(no_build: bool) -> Result<(PathBuf, PathBuf)> {
    let root = workspace::root();
    if !no_build {
        setup::run(&setup::Options { apt: false }).context("setting up the toolchains")?;
        let mut c = sh::cmd(
            "cargo",
            [
                "build",
                "-p",
                "proxy-agent",
                "-p",
                "bpfproxy-tests",
                "--bins",
            ],
        );
        c.current_dir(&root);
        sh::run(&mut c).context("building bpfproxy")?;
    }
    let dir = workspace::target_dir()?.join("debug");
    let bins = (dir.join("bpfproxy"), dir.join("probe"));
    for b in [&bins.0, &bins.1] {
        if !b.is_file() {
            bail!(
                "{} is missing; run the demo without --no-build",
                b.display()
            );
        }
    }
    Ok(bins)
}

fn describe_sandbox(sb: &Sandbox) -> Result<()> {
    println!(
        "  client pod   {}/24   netns {}, cgroup {}",
        sb.client_ip(),
        sb.client_ns().name(),
        sb.cgroup().path().display()
    );
    for i in 1..=sb.backend_count() {
        println!(
            "  {:<12} {}/24   netns {}, answers \"{}\" on TCP 8080 (HTTP) and UDP 5353",
            sb.backend_name(i),
            sb.backend_ip(i),
            sb.backend_ns().name(),
            sb.backend_name(i)
        );
    }
    let routes = sb
        .client_ns()
        .run(&["ip", "-4", "route", "show"], Duration::from_secs(5))?;
    if routes.contains("default") {
        bail!("the client namespace has a default route; refusing to go on:\n{routes}");
    }
    println!(
        "  client routes: {} (no default route: untranslated traffic dies here)",
        routes.trim().replace('\n', "; ")
    );
    println!("  bpffs        {}", sb.bpffs().display());
    Ok(())
}

fn demo_manifest(sb: &Sandbox) -> String {
    let ips = sb.backend_ips();
    let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    manifest::documents(&[
        manifest::service(
            SERVICE,
            VIP,
            &[("http", 80, 8080, "TCP"), ("dns", 53, 5353, "UDP")],
        ),
        manifest::endpoint_slice(
            SERVICE,
            "web-x7k2p",
            &ip_refs,
            &[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
            &[],
        ),
    ])
}

/// A few requests with a real client.
fn curl(sb: &Sandbox) -> Result<()> {
    if !on_path("curl") {
        println!("  (curl is not installed; skipping the curl requests)");
        return Ok(());
    }
    let url = format!("http://{VIP}/");
    println!("  curl -s {url}   (5 times, from the client pod)");
    for _ in 0..5 {
        let mut c = sb.client_command("curl")?;
        // --noproxy: a proxy from the environment must not take the request.
        c.args(["-sS", "--noproxy", "*", "--max-time", "3", &url]);
        for v in [
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "all_proxy",
        ] {
            c.env_remove(v);
        }
        let body = process::run_with_timeout(&mut c, Duration::from_secs(10))?;
        println!("    -> {}", body.trim());
    }
    Ok(())
}

/// The same connect from the client namespace but outside the cgroup: not
/// translated, so it has no route.
fn outside_cgroup(sb: &Sandbox) -> Result<()> {
    let mut c = sb.client_ns().command(sb.probe_bin())?;
    c.args(["tcp-connect-time", "--to", &format!("{VIP}:80")]);
    let out = process::run_with_timeout(&mut c, Duration::from_secs(10))?;
    let r: bpfproxy_tests::ConnectTimeReport =
        serde_json::from_str(&out).with_context(|| format!("parsing {out}"))?;
    println!(
        "\n  the same connect() from the client netns but outside its cgroup: {}",
        if r.ok {
            "connected (unexpected!)".to_string()
        } else {
            format!(
                "{} (only the cgroup's sockets are translated)",
                r.error.unwrap_or_default()
            )
        }
    );
    Ok(())
}

fn print_spread(sb: &Sandbox, by_backend: &BTreeMap<String, u64>, ok: u64, failed: u64) {
    let total = ok.max(1);
    for name in sb.backend_names() {
        let n = by_backend.get(&name).copied().unwrap_or(0);
        let share = n as f64 / total as f64;
        let bar = "#".repeat((share * 40.0).round() as usize);
        println!("    {name:<10} {n:>6}  {:>5.1}%  {bar}", share * 100.0);
    }
    for (name, n) in by_backend {
        if !sb.backend_names().contains(name) {
            println!("    {name:<10} {n:>6}  (unexpected)");
        }
    }
    println!("    ok {ok}, failed {failed}");
}

fn show_errors(errors: &[String]) {
    for e in errors.iter().take(3) {
        println!("    error: {e}");
    }
}

/// Keeps the sandbox up so it can be tried by hand.
fn hold(sb: &Sandbox, agent: &mut bpfproxy_tests::Agent, secs: u64) -> Result<()> {
    let enter = format!(
        "nsenter --net={} -- sh -c 'echo $$ > {}/cgroup.procs && exec bash'",
        sb.client_ns().path().display(),
        sb.cgroup().path().display()
    );
    println!("\nThe sandbox stays up for {secs}s (Ctrl-C ends it earlier). In another root shell:");
    println!("  {enter}");
    println!("  curl http://{VIP}/          # inside: the client pod, translated by bpfproxy");
    println!(
        "  {} dump --bpffs {}",
        agent.config().bin.display(),
        sb.bpffs().display()
    );
    println!("  (any shell you start there is killed when the demo ends)");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if interrupt::requested() {
            return Ok(());
        }
        agent.check_alive()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Whether `program` is an executable file in a PATH directory.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            dir.join(program)
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Numbered step headers.
struct Steps {
    n: usize,
    total: usize,
}

impl Steps {
    fn new(total: usize) -> Self {
        Steps { n: 0, total }
    }

    fn next(&mut self, what: &str) {
        self.n += 1;
        println!("\n[{}/{}] {what}", self.n, self.total);
    }
}
