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
mod objects;
mod pipeline;
mod report;
mod sync_latency;

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
        #[arg(long, default_value_t = 50)]
        rounds: usize,
    },
    SyncLatency {
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        services: Vec<usize>,
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Pipeline { services, rounds } => pipeline::run(&services, rounds),
        Bench::SyncLatency { services, rounds } => sync_latency::run(&services, rounds),
    }
}
