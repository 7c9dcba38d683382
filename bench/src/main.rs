//! bpfproxy benchmarks. Each compares its variants side by side in one run
//! (these machines are noisy: only numbers taken together compare), and
//! writes a report under `target/bench/`.
//!
//! - `pipeline`: CPU cost of one sync after one EndpointSlice change, with
//!   1k and 10k Services (pure pipeline on fake maps).
//! - `sync-latency`: time from an EndpointSlice change at a real API server
//!   to the kernel map update, with 1k and 10k Services, for two agents
//!   running at once with different `--min-sync-period`. Needs root (it
//!   loads BPF programs into a child cgroup and a private bpffs; it sends no
//!   packets).
//! - `tc-datapath`: kernel time per packet of the TC programs, by packet
//!   class (foreign, new NodePort flow, established, reply), with 10 and
//!   10k Services in the maps. Needs root (it loads BPF programs into a
//!   private bpffs and runs them with BPF_PROG_TEST_RUN; it sends no
//!   packets and attaches nothing).
//! - `kube-proxy-backends`: kube-proxy's iptables-legacy, iptables-nft and
//!   nftables rulesets for N Services (full load, one-Service update) next
//!   to bpfproxy's cold sync and one-change latency, the agent's memory, and
//!   connect() latency to the last Service through each vs. the socket LB
//!   vs. direct, with a chart. Needs root (fresh network namespaces, a
//!   sandbox with the agent in a child cgroup, an API server on loopback).
mod datapath;
mod kube_proxy;
mod objects;
mod pipeline;
mod report;
mod sync_latency;
mod tc_classes;
mod tc_datapath;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bpfproxy-bench")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    Pipeline {
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        services: Vec<usize>,
        /// Cold full syncs per count, each by a fresh syncer.
        #[arg(long, default_value_t = 5)]
        cold_rounds: usize,
        #[arg(long, default_value_t = 50)]
        rounds: usize,
    },
    SyncLatency {
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        services: Vec<usize>,
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
    TcDatapath {
        #[arg(long, value_delimiter = ',', default_value = "10,10000")]
        services: Vec<usize>,
        #[arg(long, default_value_t = 100)]
        rounds: usize,
        /// Single runs per packet class, program and round.
        #[arg(long, default_value_t = 300)]
        batch: usize,
        /// Runs per sample of the repeat-timed foreign packet.
        #[arg(long, default_value_t = 20_000)]
        repeat: u32,
        /// Another build of the eBPF object (the file aya-build writes,
        /// e.g. from before a change) to measure next to this one.
        #[arg(long)]
        baseline: Option<std::path::PathBuf>,
    },
    KubeProxyBackends {
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
        services: Vec<usize>,
        /// Service counts that also run a real agent on a real API server.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
        api_services: Vec<usize>,
        /// Full loads per backend and count, each in a fresh namespace.
        #[arg(long, default_value_t = 3)]
        full_rounds: usize,
        /// One-Service updates per backend and count.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// connect() samples per variant.
        #[arg(long, default_value_t = 1000)]
        samples: usize,
        /// Seconds one ruleset load may take (a slower one is reported as
        /// timed out).
        #[arg(long, default_value_t = 300)]
        load_timeout: u64,
        /// Measure bpfproxy only: no kube-proxy ruleset is loaded (their
        /// rows and columns stay empty). For quick runs of the agent's
        /// numbers, e.g. its memory at 10k Services.
        #[arg(long)]
        bpfproxy_only: bool,
    },
    /// Helper run inside a test namespace: times `count` connect() calls.
    #[command(hide = true)]
    ConnectLoop {
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Pipeline {
            services,
            cold_rounds,
            rounds,
        } => pipeline::run(&services, cold_rounds, rounds),
        Bench::SyncLatency { services, rounds } => sync_latency::run(&services, rounds),
        Bench::TcDatapath {
            services,
            rounds,
            batch,
            repeat,
            baseline,
        } => tc_datapath::run(&tc_datapath::Options {
            services,
            rounds,
            batch,
            repeat,
            baseline,
        }),
        Bench::KubeProxyBackends {
            services,
            api_services,
            full_rounds,
            rounds,
            samples,
            load_timeout,
            bpfproxy_only,
        } => kube_proxy::run(&kube_proxy::Options {
            services,
            full_rounds,
            rounds,
            samples,
            api_services,
            load_timeout: std::time::Duration::from_secs(load_timeout),
            bpfproxy_only,
        }),
        Bench::ConnectLoop { to, count } => kube_proxy::connect_loop(&to, count),
    }
}
