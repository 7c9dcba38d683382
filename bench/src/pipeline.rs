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
    /// Cold full syncs of all Services, each by a fresh syncer into fresh
    /// fake maps; the first in the process also grows the heap.
    pub cold: Vec<Duration>,
    /// Change-driven syncs after one EndpointSlice change each.
    pub cached: Vec<Duration>,
    /// The same with a re-read of the maps (full resync).
    pub full: Vec<Duration>,
}

fn fresh_syncer() -> anyhow::Result<Syncer<FakeMaps>> {
    Ok(Syncer::new(
        FakeMaps::new(1 << 20),
        Arc::new(Metrics::new()),
        ModelConfig::default(),
    )?)
}

/// `cold_rounds` cold syncs of `n` Services, then `rounds` single changes
/// of each kind on the last syncer.
pub fn measure(n: usize, cold_rounds: usize, rounds: usize) -> anyhow::Result<Costs> {
    let mut snap = objects::snapshot(n)?;
    let mut cold = Vec::new();
    let mut syncer = fresh_syncer()?;
    for r in 0..cold_rounds.max(1) {
        if r > 0 {
            syncer = fresh_syncer()?;
        }
        let t = Instant::now();
        syncer.sync(&snap, true)?;
        cold.push(t.elapsed());
    }
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
    Ok(Costs { cold, cached, full })
}

pub fn run(sizes: &[usize], cold_rounds: usize, rounds: usize) -> anyhow::Result<()> {
    let mut body = String::new();
    let _ = writeln!(
        body,
        "{cold_rounds} cold full syncs (each by a fresh syncer into fresh fake maps; the first \
         in the process also grows the heap), then one sync after one EndpointSlice change, \
         {rounds} rounds:\n"
    );
    for &n in sizes {
        let mut c = measure(n, cold_rounds, rounds)?;
        let first = report::ms(c.cold[0]);
        let _ = writeln!(
            body,
            "- {n:>6} Services: first full sync {first:8.2} ms\n    cold full sync:       {}\n    per change:           {}\n    per change + re-read: {}",
            report::summary(&mut c.cold),
            report::summary(&mut c.cached),
            report::summary(&mut c.full)
        );
    }
    report::write("pipeline", "bpfproxy pipeline cost per sync", &body)
}
