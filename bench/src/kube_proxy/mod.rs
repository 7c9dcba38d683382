//! `kube-proxy-backends`: kube-proxy's rulesets for N Services next to
//! bpfproxy. For each N it loads kube-proxy-shaped iptables-legacy,
//! iptables-nft and nftables rulesets (full load, then one-Service partial
//! updates) in fresh network namespaces, takes bpfproxy's cold sync and
//! one-change latency (pipeline on fake maps; a real agent on a real API
//! server for the smaller N), the agent's memory, and connect() latency to
//! the last Service through each ruleset vs. the socket LB vs. direct.
mod chart;
mod connect;
mod iptables;
mod model;
mod nft;
mod restore;
pub mod rss;
mod summary;

use std::time::Duration;

use anyhow::Result;

pub use connect::connect_loop;

use crate::{pipeline, sync_latency};

pub struct Options {
    pub services: Vec<usize>,
    /// Fresh-namespace full loads per backend and N.
    pub full_rounds: usize,
    /// One-Service updates per backend and N (also bpfproxy's changes).
    pub rounds: usize,
    /// connect() samples per variant.
    pub samples: usize,
    /// The Service counts that also run a real agent on a real API server.
    pub api_services: Vec<usize>,
    /// The longest one ruleset load may take; a slower backend is reported
    /// as such and left out at that count.
    pub load_timeout: Duration,
    /// No kube-proxy rulesets: only bpfproxy's rows.
    pub bpfproxy_only: bool,
}

/// Everything measured for one Service count.
pub struct Size {
    pub n: usize,
    pub loads: Vec<(restore::Backend, restore::LoadTimes)>,
    pub pipeline: pipeline::Costs,
    pub api: Option<sync_latency::Single>,
    pub connect: connect::Connect,
}

pub fn run(opts: &Options) -> Result<()> {
    bpfproxy_tests::require_root()?;
    // Ctrl-C stops the harness' waits, and its guards remove the
    // namespaces, cgroups and agents on the way out.
    bpfproxy_tests::interrupt::install()?;
    let mut sizes = Vec::new();
    for &n in &opts.services {
        anyhow::ensure!(n >= 1, "at least one Service");
        sizes.push(measure(opts, n)?);
        // After every count, so a long run that is stopped keeps its
        // results so far.
        summary::write(opts, &sizes)?;
    }
    Ok(())
}

fn measure(opts: &Options, n: usize) -> Result<Size> {
    let mut loads = Vec::new();
    let backends: &[restore::Backend] = if opts.bpfproxy_only {
        &[]
    } else {
        &restore::Backend::ALL
    };
    for &b in backends {
        let t = std::time::Instant::now();
        let rounds = restore::Rounds {
            full: opts.full_rounds,
            partial: opts.rounds,
            timeout: opts.load_timeout,
        };
        let times = restore::measure(b, n, rounds)?;
        eprintln!(
            "{n} Services, {}: {:.1} s",
            b.label(),
            t.elapsed().as_secs_f64()
        );
        loads.push((b, times));
    }
    let pipeline = pipeline::measure(n, opts.full_rounds, opts.rounds)?;
    let api = if opts.api_services.contains(&n) {
        Some(sync_latency::single(n, opts.rounds)?)
    } else {
        None
    };
    eprintln!("{n} Services: connect() latency");
    // Backends not loaded at all (bpfproxy only) or too slow at this count.
    let skip: Vec<restore::Backend> = restore::Backend::ALL
        .into_iter()
        .filter(|b| !loads.iter().any(|(l, t)| l == b && !t.timed_out))
        .collect();
    let connect = connect::measure(n, opts.samples, &skip, opts.load_timeout)?;
    Ok(Size {
        n,
        loads,
        pipeline,
        api,
        connect,
    })
}

fn ms(d: Duration) -> f64 {
    crate::report::ms(d)
}
