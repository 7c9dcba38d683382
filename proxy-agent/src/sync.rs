//! The sync loop: snapshot → desired state → map contents → plan → apply.
use std::{collections::BTreeSet, sync::Arc, time::Duration};

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::{
    datapath::{apply, plan, render, DumpView, Ids},
    maps::{LbMaps, MapsError},
    metrics::{MapLabels, Metrics, SkipLabels},
    model::{build_desired_state, ModelConfig, Skip},
    source::Snapshot,
};

/// How long to wait before retrying after a sync that left work undone.
const RETRY: Duration = Duration::from_secs(1);

/// Sync settings (from the command line).
#[derive(Clone, Copy, Debug)]
pub struct SyncConfig {
    /// Minimum time between two syncs: bursts of changes coalesce into one.
    pub min_interval: Duration,
    /// Full resync period: re-reads the maps and repairs any drift.
    pub period: Duration,
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncOutcome {
    pub ops: usize,
    pub failed: usize,
    pub held_back: usize,
}

impl SyncOutcome {
    pub fn complete(&self) -> bool {
        self.failed == 0 && self.held_back == 0
    }
}

pub struct Syncer<M: LbMaps> {
    maps: M,
    ids: Ids,
    metrics: Arc<Metrics>,
    config: ModelConfig,
    /// Skips already reported, so each is logged and counted once, not on
    /// every sync.
    reported: BTreeSet<Skip>,
}

impl<M: LbMaps> Syncer<M> {
    /// Restores ids from what the maps hold (after a restart: the pinned
    /// maps), so existing entries keep their ids and are not rewritten.
    pub fn new(maps: M, metrics: Arc<Metrics>, config: ModelConfig) -> Result<Self, MapsError> {
        let ids = Ids::restore(&maps.read_all()?);
        Ok(Self {
            maps,
            ids,
            metrics,
            config,
            reported: BTreeSet::new(),
        })
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// Makes the maps equal to what `snap` asks for. Only called with a
    /// complete snapshot: pruning on a partial view would delete Services.
    pub fn sync(&mut self, snap: &Snapshot) -> Result<SyncOutcome, MapsError> {
        let built = build_desired_state(
            snap.services.iter().map(|s| s.as_ref()),
            snap.slices.iter().map(|s| s.as_ref()),
            &self.config,
        );
        self.report_skips(snap.skips.iter().chain(&built.skips));
        let rendered = render(&built.state, &mut self.ids);
        for fe in &rendered.dropped {
            warn!(frontend = %fe, "no free id for frontend or backend; left out");
        }
        let actual = self.maps.read_all()?;
        let ops = plan(&rendered.state, &actual);
        let report = apply(&ops, &mut self.maps);
        for (op, e) in &report.failed {
            error!(op = ?op, error = %e, "map write failed; other Services are unaffected, retrying later");
            self.metrics
                .map_write_errors
                .get_or_create(&MapLabels {
                    map: op.map_name().to_string(),
                })
                .inc();
        }
        for (map, n) in [
            (proxy_common::maps::SERVICES, rendered.state.services.len()),
            (proxy_common::maps::BACKENDS, rendered.state.backends.len()),
            (proxy_common::maps::REV_NAT, rendered.state.rev_nat.len()),
        ] {
            self.metrics
                .map_entries
                .get_or_create(&MapLabels {
                    map: map.to_string(),
                })
                .set(n as i64);
        }
        if !ops.is_empty() {
            debug!(view = %DumpView::from_state(&rendered.state), "desired maps");
        }
        Ok(SyncOutcome {
            ops: ops.len(),
            failed: report.failed.len(),
            held_back: report.held_back,
        })
    }

    fn report_skips<'a>(&mut self, skips: impl Iterator<Item = &'a Skip>) {
        let now: BTreeSet<Skip> = skips.cloned().collect();
        for s in now.difference(&self.reported) {
            warn!(kind = s.kind, object = %s.object, reason = %s.reason, detail = %s.detail, "{s}");
            self.metrics
                .skipped_objects
                .get_or_create(&SkipLabels {
                    kind: s.kind.to_string(),
                    reason: s.reason.as_str().to_string(),
                })
                .inc();
        }
        self.reported = now;
    }
}

/// Runs syncs until the snapshot channel closes. Nothing is written before
/// the source's first complete snapshot (restart safety).
pub async fn run<M: LbMaps>(
    mut syncer: Syncer<M>,
    mut rx: watch::Receiver<Option<Snapshot>>,
    config: SyncConfig,
) {
    let mut first = true;
    let mut retry = false;
    loop {
        let wait = if retry { RETRY } else { config.period };
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
        let Some(snap) = rx.borrow_and_update().clone() else {
            continue; // not synced yet
        };
        let start = std::time::Instant::now();
        match syncer.sync(&snap) {
            Ok(outcome) => {
                let secs = start.elapsed().as_secs_f64();
                syncer.metrics.sync_duration.observe(secs);
                syncer.metrics.last_sync_timestamp.set(unix_now());
                retry = !outcome.complete();
                if first || outcome.ops > 0 {
                    info!(
                        ops = outcome.ops,
                        failed = outcome.failed,
                        held_back = outcome.held_back,
                        ms = secs * 1000.0,
                        "synced"
                    );
                }
                first = false;
            }
            Err(e) => {
                error!(error = %e, "sync failed; retrying");
                retry = true;
            }
        }
        tokio::time::sleep(config.min_interval).await;
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
