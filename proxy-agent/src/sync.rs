//! The sync loop: snapshot → desired state → map contents → plan → apply.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::core::v1::Node;
use tokio::sync::watch;
use tracing::{debug, error, warn};

use crate::{
    ct_sweeper::{Live, LivePairs},
    datapath::{
        apply, fit, plan, render_frontends, ApplyReport, BackendUsers, DumpView, Fitted, Ids,
        LeftOut, MapState,
    },
    maps::sizes,
    maps::{LbMaps, MapsError},
    metrics::{MapLabels, Metrics, PolicyLabels, ReasonLabels, SkipLabels},
    model::{BuildOutput, HealthCheck, Model, ModelConfig, Skip, SkipReason},
    node_addrs::NodeAddrEntries,
    source::Snapshot,
};

mod changes;
mod driver;
mod incremental;
mod node;

use changes::{Changes, Objects};
pub use driver::run;
pub use node::NodeAddrOutcome;

/// The Node label that places it in a zone (topology hints).
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Taint the cluster autoscaler puts on a node it is about to delete.
const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Sync settings (from the command line).
#[derive(Clone, Copy, Debug)]
pub struct SyncConfig {
    /// Minimum time from the end of one sync to the start of the next:
    /// bursts of changes coalesce into one.
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
    /// Of `failed`, the writes a full map refused.
    pub full: usize,
    /// Frontends left out (or kept as they were) for want of map room.
    pub left_out: usize,
    /// Some of `left_out` may fit once this sync's deletions are done.
    pub retry_for_room: bool,
    /// Only the changed Services were rebuilt and written.
    pub incremental: bool,
}

impl SyncOutcome {
    pub fn complete(&self) -> bool {
        self.failed == 0 && self.held_back == 0 && !self.retry_for_room
    }

    /// Whether the proxy is healthy after this sync: every write went in
    /// or was refused for want of room. A full map leaves out the Services
    /// that do not fit (metrics tell), but the node still serves all the
    /// others: turning /healthz 503 would have load balancers drain it and
    /// the liveness probe restart the agent in a loop, for nothing.
    pub fn healthy(&self) -> bool {
        self.failed == self.full
    }
}

pub struct Syncer<M: LbMaps> {
    maps: M,
    ids: Ids,
    metrics: Arc<Metrics>,
    config: ModelConfig,
    /// The objects of the last snapshot, to find what changed.
    objects: Objects,
    /// Every Service's build, kept so a change rebuilds its Service alone.
    model: Model,
    /// Source-level skips of the last snapshot (unreadable documents).
    source_skips: Vec<Skip>,
    /// Skips already reported, so each is logged and counted once, not on
    /// every sync.
    reported: BTreeSet<Skip>,
    /// Trigger times already observed for the network programming latency.
    trigger_times: BTreeMap<String, String>,
    /// What the maps hold after the last complete sync. Reading 10k
    /// Services back from the kernel costs more than computing them, so
    /// only full resyncs (and the sync after a failure) read the maps.
    written: Option<Written>,
    /// healthCheckNodePorts of the last build, for their servers.
    health_checks: BTreeMap<u16, HealthCheck>,
    /// The (revNAT id, backend id) pairs written, for the conntrack sweeper.
    live_pairs: watch::Sender<LivePairs>,
    /// What the node-address map holds after the last complete write.
    node_written: Option<NodeAddrEntries>,
}

/// What the maps hold after a complete sync.
#[derive(Debug)]
struct Written {
    state: MapState,
    /// Who uses each backend of `state`.
    users: BackendUsers,
    /// Everything desired is in the maps (nothing left out for want of
    /// room or ids): a change can then be written alone.
    whole: bool,
}

impl<M: LbMaps> Syncer<M> {
    /// Restores ids from what the maps hold (after a restart: the pinned
    /// maps), so existing entries keep their ids and are not rewritten.
    pub fn new(maps: M, metrics: Arc<Metrics>, config: ModelConfig) -> Result<Self, MapsError> {
        let ids = Ids::restore(&maps.read_all()?);
        metrics.set_capacity(&maps.capacity());
        Ok(Self {
            maps,
            ids,
            metrics,
            config,
            objects: Objects::default(),
            model: Model::default(),
            source_skips: Vec::new(),
            reported: BTreeSet::new(),
            trigger_times: BTreeMap::new(),
            written: None,
            health_checks: BTreeMap::new(),
            live_pairs: watch::Sender::new(None),
            node_written: None,
        })
    }

    /// The (revNAT id, backend id) pairs of every frontend slot after each
    /// sync, for the conntrack sweeper.
    pub fn live_pairs(&self) -> watch::Receiver<LivePairs> {
        self.live_pairs.subscribe()
    }

    /// The healthCheckNodePorts the last sync found.
    pub fn health_checks(&self) -> &BTreeMap<u16, HealthCheck> {
        &self.health_checks
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// The maps themselves, e.g. to simulate someone else writing them.
    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Makes the maps equal to what `snap` asks for. Only called with a
    /// complete snapshot: pruning on a partial view would delete Services.
    /// `full` re-reads the maps instead of trusting the last write, which
    /// repairs drift (someone else wrote the maps, a write was lost).
    /// Otherwise, when only some Services changed since the last complete
    /// sync, only those are rebuilt and written.
    pub fn sync(&mut self, snap: &Snapshot, full: bool) -> Result<SyncOutcome, MapsError> {
        let config_changed = self.observe_node(snap.node.as_deref());
        let changes = self.objects.update(snap);
        if !full && !config_changed && snap.skips == self.source_skips {
            if let Changes::Services(dirty) = &changes {
                if let Some(outcome) = self.sync_changes(dirty) {
                    return Ok(outcome);
                }
            }
        }
        self.source_skips.clone_from(&snap.skips);
        self.sync_all(snap, full)
    }

    /// Rebuilds everything and writes the difference to what the maps hold.
    fn sync_all(&mut self, snap: &Snapshot, full: bool) -> Result<SyncOutcome, MapsError> {
        let actual = match self.written.take() {
            Some(written) if !full => written.state,
            _ => self.maps.read_all()?,
        };
        let capacity = self.maps.capacity();
        let Desired {
            mut built,
            fitted,
            users,
            dropped,
            model,
        } = desired_maps(snap, &self.config, &mut self.ids, &actual, &capacity);
        self.model = model;
        let room_skips: Vec<Skip> = fitted
            .left_out
            .iter()
            .map(|l| room_skip(l, &capacity))
            .collect();
        self.report_skips(snap.skips.iter().chain(&built.skips).chain(&room_skips));
        let ops = plan(&fitted.state, &actual);
        drop(actual);
        let report = apply(&ops, &mut self.maps);
        self.report_failures(&report);
        self.publish_live(live_backends(&fitted.state));
        self.record_state(&fitted.state);
        self.health_checks = std::mem::take(&mut built.health_checks);
        if report.ok() {
            self.observe_programming_latency(&built);
        }
        if !ops.is_empty() {
            debug!(view = %DumpView::from_state(&fitted.state), "desired maps");
        }
        // After a partial failure the maps are somewhere in between: read
        // them next time.
        let whole = fitted.left_out.is_empty() && dropped == 0;
        let outcome = outcome(ops.len(), &report, &fitted);
        self.written = report.ok().then_some(Written {
            state: fitted.state,
            users,
            whole,
        });
        Ok(outcome)
    }

    fn report_failures(&self, report: &ApplyReport) {
        for (op, e) in &report.failed {
            error!(op = ?op, error = %e, "map write failed; other Services are unaffected, retrying later");
            self.metrics
                .map_write_errors
                .get_or_create(&MapLabels {
                    map: op.map_name().to_string(),
                })
                .inc();
        }
    }

    /// Publishes which backends the frontends hold (for the conntrack
    /// sweeper and the UDP socket closer) and prunes affinity.
    fn publish_live(&mut self, live: Live) {
        self.live_pairs.send_if_modified(|cur| {
            if cur.as_deref() == Some(&live) {
                return false;
            }
            *cur = Some(Arc::new(live));
            true
        });
        self.prune_affinity();
    }

    /// Session-affinity entries must not outlive a backend's membership
    /// in its frontend: those of pairs the maps no longer hold go
    /// (conntrack's go in the sweeper).
    fn prune_affinity(&mut self) {
        let live = self.live_pairs.borrow().clone().unwrap_or_default();
        match self
            .maps
            .prune_affinity(&|rev, be| live.pairs.contains(&(rev, be)))
        {
            Ok(0) => {}
            Ok(n) => debug!(entries = n, "pruned session-affinity entries"),
            Err(e) => warn!(error = %e, "pruning session affinity failed; retrying next sync"),
        }
    }

    /// Zone for topology hints and eligibility for `/healthz`; whether the
    /// zone changed (every Service's topology filter with it).
    fn observe_node(&mut self, node: Option<&Node>) -> bool {
        let Some(node) = node else { return false };
        let zone = node_zone(node);
        let changed = self.config.node.zone != zone;
        self.config.node.zone = zone;
        let deleting = node.metadata.deletion_timestamp.is_some()
            || node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
        self.metrics.health.set_node_eligible(!deleting);
        changed
    }

    fn record_state(&self, state: &MapState) {
        let m = &self.metrics;
        use proxy_common::maps as names;
        for (map, n) in [
            (names::SERVICES, state.services.len()),
            (names::BACKENDS, state.backends.len()),
            (names::REV_NAT, state.rev_nat.len()),
            (names::SERVICE_NAMES, state.names.len()),
            (names::SOURCE_RANGES, state.source_ranges.len()),
        ] {
            m.set_map_gauge(&m.map_entries, map, n as u64);
        }
        let (internal, external) = self.model.no_local_endpoints();
        for (policy, n) in [("internal", internal), ("external", external)] {
            m.no_local_endpoints
                .get_or_create(&PolicyLabels {
                    traffic_policy: policy.to_string(),
                })
                .set(n as i64);
        }
        for (reason, n) in self.maps.counters() {
            m.datapath_events
                .get_or_create(&ReasonLabels { reason })
                .set(n as i64);
        }
    }

    /// kube-proxy's network programming latency: from the EndpointSlice
    /// controller's trigger time to the moment the change is in the maps,
    /// once per new trigger time.
    fn observe_programming_latency(&mut self, built: &BuildOutput) {
        for (svc, t) in &built.trigger_times {
            if self.trigger_times.get(svc) != Some(t) {
                self.observe_trigger(t);
            }
        }
        self.trigger_times = built.trigger_times.clone();
    }

    fn observe_trigger(&self, t: &str) {
        let now = jiff::Timestamp::now();
        if let Ok(ts) = t.parse::<jiff::Timestamp>() {
            let secs = (now - ts).total(jiff::Unit::Second).unwrap_or(0.0);
            if secs >= 0.0 {
                self.metrics.network_programming_duration.observe(secs);
            }
        }
    }

    fn report_skips<'a>(&mut self, skips: impl Iterator<Item = &'a Skip>) {
        let now: BTreeSet<Skip> = skips.cloned().collect();
        for s in now.difference(&self.reported) {
            self.report_skip(s);
        }
        self.reported = now;
    }

    fn report_skip(&self, s: &Skip) {
        warn!(kind = s.kind, object = %s.object, reason = %s.reason, detail = %s.detail, "{s}");
        self.metrics
            .skipped_objects
            .get_or_create(&SkipLabels {
                kind: s.kind.to_string(),
                reason: s.reason.as_str().to_string(),
            })
            .inc();
    }
}

/// What a sync did, from its writes' report and what did not fit.
fn outcome(ops: usize, report: &ApplyReport, fitted: &Fitted) -> SyncOutcome {
    SyncOutcome {
        ops,
        failed: report.failed.len(),
        held_back: report.held_back,
        full: report
            .failed
            .iter()
            .filter(|(_, e)| matches!(e, MapsError::Full { .. }))
            .count(),
        left_out: fitted.left_out.len(),
        retry_for_room: fitted.retry,
        incremental: false,
    }
}

/// A frontend the maps had no room for, as a skip: logged once while it
/// lasts and counted under `map_full`.
fn room_skip(l: &LeftOut, capacity: &sizes::MapSizes) -> Skip {
    let size = capacity.of(l.map).unwrap_or_default();
    let flag = sizes::flag_of(l.map).unwrap_or_default();
    let what = if l.kept_previous {
        "its previous entries stay"
    } else {
        "left out"
    };
    Skip {
        kind: "Service",
        object: l.name.clone(),
        reason: SkipReason::MapFull,
        detail: format!(
            "frontend {} does not fit map {} ({size} entries, {flag}); {what}",
            l.frontend, l.map
        ),
    }
}

/// Which backends the frontend slots of `state` hold, by id and by address.
fn live_backends(state: &MapState) -> Live {
    let mut live = Live::default();
    for (k, v) in state.masters() {
        if k.proto != proxy_common::proto::UDP {
            live.not_udp.insert(u32::from(v.rev_nat_id));
        }
    }
    for v in state.services.values().filter(|v| v.backend_id != 0) {
        let rev = u32::from(v.rev_nat_id);
        live.pairs.insert((rev, v.backend_id));
        if let Some(b) = state.backends.get(&v.backend_id) {
            live.endpoints.insert((rev, b.ip(), b.port()));
        }
    }
    live
}

/// The zone label of this node (topology hints).
pub fn node_zone(node: &Node) -> Option<String> {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ZONE_LABEL))
        .cloned()
}

/// What the maps should hold, and how it came about.
pub struct Desired {
    pub built: BuildOutput,
    pub fitted: Fitted,
    /// Who uses each backend the render asked for.
    pub users: BackendUsers,
    /// Frontends left out for want of ids.
    pub dropped: usize,
    /// Every Service's build.
    pub model: Model,
}

/// What the maps should hold for `snap`, given what they hold now
/// (`actual`): the model built, rendered with `ids` and fitted into
/// `capacity`. The sync writes the difference; `dump --check` prints it.
pub fn desired_maps(
    snap: &Snapshot,
    config: &ModelConfig,
    ids: &mut Ids,
    actual: &MapState,
    capacity: &sizes::MapSizes,
) -> Desired {
    let model = Model::build(
        snap.services.iter().map(|s| s.as_ref()),
        snap.slices.iter().map(|s| s.as_ref()),
        config,
    );
    let built = model.summary();
    let rendered = render_frontends(model.frontends(), ids);
    for fe in &rendered.dropped {
        warn!(frontend = %fe, "no free id for frontend or backend; left out");
    }
    let fitted = fit(rendered.state, actual, capacity);
    Desired {
        built,
        fitted,
        users: rendered.users,
        dropped: rendered.dropped.len(),
        model,
    }
}
