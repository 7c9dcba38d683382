//! The sync of a change to a few Services: those Services rebuilt, the
//! frontends whose owner's state changed rendered, and the difference
//! written, in work proportional to the change. Whatever this cannot do
//! alone (an id space or a map full, too many Services changed, maps that
//! do not hold the whole desired state) it leaves to the full sync, which
//! reaches the same maps (a property test checks that).
use std::{collections::BTreeSet, net::Ipv4Addr, sync::Arc};

use tracing::debug;

use super::{outcome, LbMaps, SyncOutcome, Syncer, Written};
use crate::{
    ct_sweeper::Live,
    datapath::{apply, backend_ident, delta, plan, render_frontend, Delta, Fitted, Piece},
    model::{build_one, Frontend, FrontendState, ServiceBuild, ServiceRef, Skip},
};

/// Above this many changed Services, and a quarter of them, one full
/// rebuild costs less than the changes one by one.
const MAX_CHANGED: usize = 256;

/// What a change did to the model.
#[derive(Debug, Default)]
struct ModelChange {
    /// Frontends whose owner's state changed: before and after.
    frontends: Vec<(Frontend, Option<FrontendState>, Option<FrontendState>)>,
    skips_before: Vec<Skip>,
    skips_after: Vec<Skip>,
    /// The changed Services' trigger times that changed (None: gone).
    triggers: Vec<(String, Option<String>)>,
    /// Whether a changed Service has or had a healthCheckNodePort.
    health: bool,
}

/// The rendered frontends before and after a change.
#[derive(Debug, Default)]
struct Pieces {
    old: Vec<Piece>,
    new: Vec<Piece>,
    /// Frontends no longer programmed.
    gone: Vec<Frontend>,
}

fn too_many(changed: usize, services: usize) -> bool {
    changed > MAX_CHANGED && changed > services / 4
}

impl<M: LbMaps> Syncer<M> {
    /// Writes the changes of the Services `dirty` alone; None when only a
    /// full sync can.
    pub(super) fn sync_changes(&mut self, dirty: &BTreeSet<ServiceRef>) -> Option<SyncOutcome> {
        if !self.written.as_ref().is_some_and(|w| w.whole) {
            return None;
        }
        if dirty.is_empty() {
            return Some(SyncOutcome {
                incremental: true,
                ..SyncOutcome::default()
            });
        }
        if too_many(dirty.len(), self.objects.service_count()) {
            return None;
        }
        let change = self.rebuild(dirty);
        let pieces = self.render_change(&change)?;
        let mut written = self.written.take()?;
        let d = delta(&written.state, &mut written.users, &pieces.old, &pieces.new);
        if let Some(map) = d.overflow(&written.state, &self.maps.capacity()) {
            debug!(map, "a change does not fit as it is; syncing everything");
            return None;
        }
        let ops = plan(&d.new, &d.old);
        let report = apply(&ops, &mut self.maps);
        self.report_failures(&report);
        self.report_change_skips(&change);
        if report.ok() {
            self.observe_triggers(&change.triggers);
            self.commit(&mut written, &d, &pieces);
            self.record_state(&written.state);
            self.written = Some(written);
        }
        if change.health {
            self.health_checks = self.model.health_checks();
        }
        Some(SyncOutcome {
            incremental: true,
            ..outcome(ops.len(), &report, &Fitted::default())
        })
    }

    /// Rebuilds the Services `dirty` into the model.
    fn rebuild(&mut self, dirty: &BTreeSet<ServiceRef>) -> ModelChange {
        let builds: Vec<(ServiceRef, Option<ServiceBuild>)> = dirty
            .iter()
            .map(|key| {
                let svc = self.objects.service(key);
                let slices = self.objects.slices_of(key);
                let build = svc.map(|svc| build_one(key, svc, &slices, &self.config));
                (key.clone(), build)
            })
            .collect();
        let mut affected = BTreeSet::new();
        let mut change = ModelChange::default();
        for (key, build) in &builds {
            let old = self.model.get(key);
            for b in old.into_iter().chain(build) {
                affected.extend(b.claims.iter().map(|(fe, _)| *fe));
            }
            change.health |= self.model.has_health_check(key);
        }
        let before: Vec<Option<FrontendState>> = affected
            .iter()
            .map(|fe| self.model.winner(fe).cloned())
            .collect();
        for fe in &affected {
            change.skips_before.extend(self.model.duplicate_skips(fe));
        }
        for (key, build) in builds {
            let new_trigger = build.as_ref().and_then(|b| b.trigger_time.clone());
            let old = self.model.replace(&key, build);
            let old_trigger = old.as_ref().and_then(|b| b.trigger_time.clone());
            change
                .skips_before
                .extend(old.into_iter().flat_map(|b| b.skips));
            if old_trigger != new_trigger {
                change
                    .triggers
                    .push((format!("{}/{}", key.0, key.1), new_trigger));
            }
        }
        for key in dirty {
            change.health |= self.model.has_health_check(key);
            if let Some(b) = self.model.get(key) {
                change.skips_after.extend(b.skips.iter().cloned());
            }
        }
        for (fe, before) in affected.into_iter().zip(before) {
            change.skips_after.extend(self.model.duplicate_skips(&fe));
            let after = self.model.winner(&fe).cloned();
            if before != after {
                change.frontends.push((fe, before, after));
            }
        }
        change
    }

    /// The pieces the changed frontends had and will have; None when an
    /// id space is full.
    fn render_change(&mut self, change: &ModelChange) -> Option<Pieces> {
        let mut out = Pieces::default();
        for (fe, before, after) in &change.frontends {
            let old = before
                .as_ref()
                .and_then(|fs| render_frontend(fe, fs, &mut self.ids));
            let ipv4 = fe.ip.is_ipv4();
            match after {
                Some(fs) if ipv4 => out.new.push(render_frontend(fe, fs, &mut self.ids)?),
                _ if old.is_some() => out.gone.push(*fe),
                _ => {}
            }
            out.old.extend(old);
        }
        Some(out)
    }

    /// Makes the bookkeeping what the maps now hold: `written`, the live
    /// pairs, the ids no one uses any more.
    fn commit(&mut self, written: &mut Written, d: &Delta, pieces: &Pieces) {
        d.commit(&mut written.state);
        // Changed in place: the sweepers clone the Arc only while they
        // use it, so this costs the change, not a copy of every pair.
        let mut removed = false;
        self.live_pairs.send_modify(|cur| {
            let live = Arc::make_mut(cur.get_or_insert_with(Default::default));
            removed = update_live(live, pieces);
        });
        if removed {
            self.prune_affinity();
        }
        for fe in &pieces.gone {
            self.ids.forget_frontend(fe);
        }
        for (_, base) in &d.unused_backends {
            if let Some(ident) = backend_ident(base) {
                self.ids.forget_backend(&ident);
            }
        }
    }

    /// The network programming latency of the changed Services' new
    /// trigger times, remembered as the full sync remembers them.
    fn observe_triggers(&mut self, triggers: &[(String, Option<String>)]) {
        for (svc, t) in triggers {
            match t {
                Some(t) => {
                    self.observe_trigger(t);
                    self.trigger_times.insert(svc.clone(), t.clone());
                }
                None => {
                    self.trigger_times.remove(svc);
                }
            }
        }
    }

    /// Logs and counts the skips the change brought, once each.
    fn report_change_skips(&mut self, change: &ModelChange) {
        for s in &change.skips_before {
            self.reported.remove(s);
        }
        for s in &change.skips_after {
            if self.reported.insert(s.clone()) {
                self.report_skip(s);
            }
        }
    }
}

/// Replaces the old pieces' pairs by the new ones'; whether a pair went.
fn update_live(live: &mut Live, pieces: &Pieces) -> bool {
    let mut before = BTreeSet::new();
    for p in &pieces.old {
        for (rev, id, ip, port) in pairs(p) {
            live.pairs.remove(&(rev, id));
            live.endpoints.remove(&(rev, ip, port));
            before.insert((rev, id));
        }
        live.not_udp.remove(&p.rev_nat_id);
    }
    for p in &pieces.new {
        for (rev, id, ip, port) in pairs(p) {
            live.pairs.insert((rev, id));
            live.endpoints.insert((rev, ip, port));
            before.remove(&(rev, id));
        }
        let udp = p
            .views
            .first()
            .is_some_and(|v| v.key.proto == proxy_common::proto::UDP);
        if !udp {
            live.not_udp.insert(p.rev_nat_id);
        }
    }
    !before.is_empty()
}

/// (revNAT id, backend id, backend address, port) of every slot of `p`.
fn pairs(p: &Piece) -> impl Iterator<Item = (u32, u32, Ipv4Addr, u16)> + '_ {
    p.slots()
        .map(|s| (p.rev_nat_id, s.backend_id, s.base.ip(), s.base.port()))
}
