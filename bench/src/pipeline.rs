//! CPU cost of one sync after one EndpointSlice change: the pure pipeline
//! (build → render → plan → apply) on fake maps, 1k vs 10k Services.
use std::{
    fmt::Write as _,
    sync::Arc,
    time::{Duration, Instant},
};

use proxy_agent::{
    maps::FakeMaps,
    metrics::Metrics,
    model::{ModelConfig, SliceObject},
    sync::Syncer,
};

use crate::{objects, report};

/// The pipeline's times for one Service count.
pub struct Costs {
    /// The first (cold) full sync of all Services.
    pub first: Duration,
    /// Change-driven syncs after one EndpointSlice change each.
    pub cached: Vec<Duration>,
    /// The same with a re-read of the maps (full resync).
    pub full: Vec<Duration>,
}

/// Cold sync of `n` Services, then `rounds` single changes of each kind.
pub fn measure(n: usize, rounds: usize) -> anyhow::Result<Costs> {
    let mut snap = objects::snapshot(n)?;
    let mut syncer = Syncer::new(
        FakeMaps::new(1 << 20),
        Arc::new(Metrics::new()),
        ModelConfig::default(),
    )?;
    let t = Instant::now();
    syncer.sync(&snap, true)?;
    let first = t.elapsed();
    // Alternate change-driven syncs (trust the last write) and full
    // resyncs (re-read the maps) so both see the same conditions.
    let (mut cached, mut full) = (Vec::new(), Vec::new());
    for r in 0..rounds * 2 {
        let i = (r * 7919) % n;
        // Parsed as the sources parse an object they receive, before the
        // sync runs.
        let slice = serde_yaml::from_str(&objects::slice_yaml(i, r + 1))?;
        snap.slices[i] = Arc::new(SliceObject::new(&slice));
        let reread = r % 2 == 1;
        let t = Instant::now();
        let out = syncer.sync(&snap, reread)?;
        let took = t.elapsed();
        anyhow::ensure!(out.ops > 0, "the change must reach the maps");
        if reread {
            full.push(took)
        } else {
            cached.push(took)
        }
    }
    Ok(Costs {
        first,
        cached,
        full,
    })
}

pub fn run(sizes: &[usize], rounds: usize) -> anyhow::Result<()> {
    let mut body = String::new();
    let _ = writeln!(
        body,
        "One sync after one EndpointSlice change (fake maps), {rounds} rounds:\n"
    );
    for &n in sizes {
        let mut c = measure(n, rounds)?;
        let _ = writeln!(
            body,
            "- {n:>6} Services: first full sync {:8.2} ms\n    per change:           {}\n    per change + re-read: {}",
            report::ms(c.first),
            report::summary(&mut c.cached),
            report::summary(&mut c.full)
        );
    }
    report::write("pipeline", "bpfproxy pipeline cost per sync", &body)
}
