//! The sync loop: a thin async driver over [`Runner`], which decides when
//! to run; this only waits for the two inputs (the source's snapshots and
//! the node watch's addresses) or the runner's next deadline, runs, and
//! reports metrics and health.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::watch;
use tracing::{error, info, warn};

use super::{node::NodeAddrOutcome, SyncConfig, SyncOutcome, Syncer};
use crate::{
    maps::LbMaps,
    metrics::unix_now,
    model::HealthCheck,
    node_addrs::NodeAddrEntries,
    runner::{Next, Run, Runner, Timing},
    source::Snapshot,
};

/// How long to wait before retrying after a sync that left work undone.
const RETRY: Duration = Duration::from_secs(1);

/// Runs syncs until the snapshot channel closes. The Service maps are not
/// written before the source's first complete snapshot (restart safety);
/// the node addresses are, as soon as the node watch has read them. See
/// [`Runner`] for when runs happen and which re-read the maps.
pub async fn run<M: LbMaps>(
    mut syncer: Syncer<M>,
    mut rx: watch::Receiver<Option<Snapshot>>,
    mut node_rx: watch::Receiver<Option<NodeAddrEntries>>,
    config: SyncConfig,
    health_checks: watch::Sender<BTreeMap<u16, HealthCheck>>,
) {
    let timing = Timing {
        min_interval: config.min_interval,
        period: config.period,
        retry: RETRY,
    };
    let mut runner = Runner::new(timing, now());
    let mut node_open = true;
    let mut first = true;
    loop {
        let run = match runner.poll(now()) {
            Next::Run(run) => run,
            Next::WaitUntil(when) => {
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() { return }
                        runner.changed();
                    }
                    // Without the node watch the addresses stay as last
                    // published (the agent exits then anyway).
                    changed = node_rx.changed(), if node_open => match changed {
                        Ok(()) => runner.changed(),
                        Err(_) => node_open = false,
                    },
                    () = tokio::time::sleep_until(when.into()) => {}
                }
                continue;
            }
        };
        let snap = rx.borrow_and_update().clone();
        let node = node_rx.borrow_and_update().clone();
        let mut once = Once {
            syncer: &mut syncer,
            health_checks: &health_checks,
            run,
            first: &mut first,
        };
        let complete = once.run(snap.as_ref(), node.as_ref());
        runner.finished(now(), complete);
    }
}

/// Tokio's clock, so tests with paused time drive the loop too.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// One run of the loop.
struct Once<'a, M: LbMaps> {
    syncer: &'a mut Syncer<M>,
    health_checks: &'a watch::Sender<BTreeMap<u16, HealthCheck>>,
    run: Run,
    /// No Service sync has happened yet.
    first: &'a mut bool,
}

impl<M: LbMaps> Once<'_, M> {
    /// The node addresses (once read), then the Services (once the source
    /// has its complete view). Returns whether no work was left undone.
    fn run(&mut self, snap: Option<&Snapshot>, node: Option<&NodeAddrEntries>) -> bool {
        let node = node.map_or_else(NodeAddrOutcome::default, |want| self.node_addrs(want));
        let Some(snap) = snap else {
            self.count_drift(node.ops);
            return node.failed == 0;
        };
        let started = SystemTime::now();
        let clock = Instant::now();
        match self.syncer.sync(snap, self.run.full) {
            Ok(outcome) => {
                self.synced(&outcome, node, started, clock.elapsed());
                outcome.complete() && node.failed == 0
            }
            Err(e) => {
                error!(error = %e, "sync failed; retrying");
                false
            }
        }
    }

    fn node_addrs(&mut self, want: &NodeAddrEntries) -> NodeAddrOutcome {
        match self.syncer.sync_node_addrs(want, self.run.full) {
            Ok(outcome) => outcome,
            Err(e) => {
                error!(error = %e, "syncing the node-address map failed; retrying");
                NodeAddrOutcome { ops: 0, failed: 1 }
            }
        }
    }

    /// Metrics, health and the healthCheckNodePorts after a Service sync.
    fn synced(
        &mut self,
        outcome: &SyncOutcome,
        node: NodeAddrOutcome,
        started: SystemTime,
        took: Duration,
    ) {
        let m = &self.syncer.metrics;
        m.sync_duration.observe(took.as_secs_f64());
        m.last_sync_timestamp.set(unix_now());
        m.changes_applied();
        if outcome.healthy() && node.failed == 0 {
            m.health.updated(started, SystemTime::now());
        }
        self.count_drift(outcome.ops + node.ops);
        let syncer = &*self.syncer;
        self.health_checks.send_if_modified(|hc| {
            let changed = hc != syncer.health_checks();
            if changed {
                hc.clone_from(syncer.health_checks());
            }
            changed
        });
        if *self.first || outcome.ops + node.ops > 0 {
            info!(
                ops = outcome.ops,
                node_addr_ops = node.ops,
                failed = outcome.failed + node.failed,
                held_back = outcome.held_back,
                incremental = outcome.incremental,
                ms = took.as_secs_f64() * 1000.0,
                "synced"
            );
        }
        *self.first = false;
    }

    /// Writes of a run nothing but the period called for mean the maps had
    /// drifted (someone edited them, or a write was lost).
    fn count_drift(&self, ops: usize) {
        if self.run.count_drift && ops > 0 {
            warn!(ops, "periodic resync repaired drift in the maps");
            self.syncer.metrics.drift_repairs.inc_by(ops as u64);
        }
    }
}
