//! `cargo xtask bench`: builds release binaries and runs the benchmarks of
//! `bench/`, each comparing its variants side by side in one run.
use std::process::Command;

use anyhow::Result;

use crate::{setup, sh, workspace};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Service counts to measure (pipeline, sync-latency).
    #[arg(long, default_value = "1000,10000")]
    services: String,
    /// Changes measured per count (pipeline, sync-latency).
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Service counts of the kube-proxy-backends comparison.
    #[arg(long, default_value = "1000,10000,50000")]
    kube_proxy_services: String,
}

pub fn run(args: &Args) -> Result<()> {
    setup::run(&setup::Options {
        apt: true,
        ..Default::default()
    })?;
    let root = workspace::root();
    sh::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "proxy-agent",
        "-p",
        "bpfproxy-bench",
        // `probe`: the listener and clients of kube-proxy-backends' sandbox.
        "-p",
        "bpfproxy-tests",
    ]))?;
    sh::run(Command::new("bash").arg(root.join("tests/apiserver/build.sh")))?;
    let bin = workspace::target_dir()?.join("release");
    let rounds = args.rounds.to_string();
    for bench in ["pipeline", "sync-latency"] {
        sh::run(
            Command::new(bin.join("bpfproxy-bench"))
                .args([bench, "--services", &args.services, "--rounds", &rounds])
                .env("BPFPROXY_BIN", bin.join("bpfproxy")),
        )?;
    }
    // Its own defaults: per-packet cost with 10 vs 10k Services, and rounds
    // of packet batches rather than single changes.
    sh::run(Command::new(bin.join("bpfproxy-bench")).arg("tc-datapath"))?;
    // kube-proxy's rulesets next to bpfproxy, with an agent on a real API
    // server at every count.
    sh::run(
        Command::new(bin.join("bpfproxy-bench"))
            .args([
                "kube-proxy-backends",
                "--services",
                &args.kube_proxy_services,
                "--api-services",
                &args.kube_proxy_services,
                "--rounds",
                &rounds,
            ])
            .env("BPFPROXY_BIN", bin.join("bpfproxy")),
    )?;
    Ok(())
}
