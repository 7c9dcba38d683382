//! plan(desired, actual): the ordered writes from one map state to another.
//!
//! Order is make-before-break, so a program reading the maps at any moment
//! never finds a master entry whose slots or backends are missing:
//! backends, then slots, then revNAT and names, then source ranges, then
//! master entries; then removed masters, stale slots, stale source ranges,
//! orphan revNAT/names, orphan backends.
use proxy_common::{BackendValue, RevNatValue, ServiceKey, ServiceValue};

use super::{MapState, SourceRangeEntry};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    UpsertBackend(u32, BackendValue),
    UpsertService(ServiceKey, ServiceValue),
    UpsertRevNat(u32, RevNatValue),
    UpsertName(u32, String),
    DeleteService(ServiceKey),
    DeleteRevNat(u32),
    DeleteName(u32),
    DeleteBackend(u32),
    UpsertSourceRange(SourceRangeEntry),
    DeleteSourceRange(SourceRangeEntry),
}

pub fn plan(desired: &MapState, actual: &MapState) -> Vec<Op> {
    let mut ops = Vec::new();
    for (id, be) in &desired.backends {
        if actual.backends.get(id) != Some(be) {
            ops.push(Op::UpsertBackend(*id, *be));
        }
    }
    let changed_services = desired
        .services
        .iter()
        .filter(|(k, v)| actual.services.get(k) != Some(v));
    let (masters, slots): (Vec<_>, Vec<_>) = changed_services.partition(|(k, _)| k.slot == 0);
    ops.extend(slots.into_iter().map(|(k, v)| Op::UpsertService(*k, *v)));
    for (id, rn) in &desired.rev_nat {
        if actual.rev_nat.get(id) != Some(rn) {
            ops.push(Op::UpsertRevNat(*id, *rn));
        }
    }
    for (id, name) in &desired.names {
        if actual.names.get(id) != Some(name) {
            ops.push(Op::UpsertName(*id, name.clone()));
        }
    }
    // A frontend's allowed sources exist before its master entry names
    // them (SOURCE_RANGES), and stale ones go after it stopped.
    let new_ranges = desired.source_ranges.difference(&actual.source_ranges);
    ops.extend(new_ranges.map(|r| Op::UpsertSourceRange(*r)));
    ops.extend(masters.into_iter().map(|(k, v)| Op::UpsertService(*k, *v)));

    let stale_services = actual
        .services
        .keys()
        .filter(|k| !desired.services.contains_key(k));
    let (stale_masters, stale_slots): (Vec<&ServiceKey>, Vec<&ServiceKey>) =
        stale_services.partition(|k| k.slot == 0);
    ops.extend(stale_masters.into_iter().map(|k| Op::DeleteService(*k)));
    ops.extend(stale_slots.into_iter().map(|k| Op::DeleteService(*k)));
    let stale_ranges = actual.source_ranges.difference(&desired.source_ranges);
    ops.extend(stale_ranges.map(|r| Op::DeleteSourceRange(*r)));
    for id in actual.rev_nat.keys() {
        if !desired.rev_nat.contains_key(id) {
            ops.push(Op::DeleteRevNat(*id));
        }
    }
    for id in actual.names.keys() {
        if !desired.names.contains_key(id) {
            ops.push(Op::DeleteName(*id));
        }
    }
    for id in actual.backends.keys() {
        if !desired.backends.contains_key(id) {
            ops.push(Op::DeleteBackend(*id));
        }
    }
    ops
}

impl Op {
    /// Applies the op to an in-memory state (the fake maps and the tests).
    pub fn apply_to(&self, state: &mut MapState) {
        match self {
            Op::UpsertBackend(id, v) => {
                state.backends.insert(*id, *v);
            }
            Op::UpsertService(k, v) => {
                state.services.insert(*k, *v);
            }
            Op::UpsertRevNat(id, v) => {
                state.rev_nat.insert(*id, *v);
            }
            Op::UpsertName(id, n) => {
                state.names.insert(*id, n.clone());
            }
            Op::DeleteService(k) => {
                state.services.remove(k);
            }
            Op::DeleteRevNat(id) => {
                state.rev_nat.remove(id);
            }
            Op::DeleteName(id) => {
                state.names.remove(id);
            }
            Op::DeleteBackend(id) => {
                state.backends.remove(id);
            }
            Op::UpsertSourceRange(r) => {
                state.source_ranges.insert(*r);
            }
            Op::DeleteSourceRange(r) => {
                state.source_ranges.remove(r);
            }
        }
    }

    /// Which map the op writes, for logs and metrics labels.
    pub fn map_name(&self) -> &'static str {
        use proxy_common::maps;
        match self {
            Op::UpsertBackend(..) | Op::DeleteBackend(_) => maps::BACKENDS,
            Op::UpsertService(..) | Op::DeleteService(_) => maps::SERVICES,
            Op::UpsertRevNat(..) | Op::DeleteRevNat(_) => maps::REV_NAT,
            Op::UpsertName(..) | Op::DeleteName(_) => maps::SERVICE_NAMES,
            Op::UpsertSourceRange(_) | Op::DeleteSourceRange(_) => maps::SOURCE_RANGES,
        }
    }
}
