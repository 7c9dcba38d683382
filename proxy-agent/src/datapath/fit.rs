//! Fits a rendered state into the maps' capacity, frontend by frontend, so
//! a map that is too small leaves out whole frontends — logged and counted —
//! instead of the writes of many failing half-way (slots written for a
//! frontend whose master entry then finds no room, taking the room other
//! frontends needed).
//!
//! Counting is against what the maps will hold at the fullest moment of
//! the coming writes: the plan writes new entries before it deletes stale
//! ones (make-before-break), so old and new entries live side by side for a
//! moment. A frontend that fits only once the stale entries are gone is
//! deferred, and the sync retries after they are.
use std::collections::{BTreeMap, BTreeSet};

use proxy_common::{maps as names, BackendValue, RevNatValue, ServiceKey, ServiceValue};

use super::{MapState, SourceRangeEntry};
use crate::{maps::sizes::MapSizes, model::Protocol};

/// A frontend that did not fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeftOut {
    pub rev_nat_id: u32,
    /// `namespace/name:port`, as the names map has it.
    pub name: String,
    /// `address:port/protocol`.
    pub frontend: String,
    /// The first map without room for it.
    pub map: &'static str,
    /// An existing frontend that grew: its previous entries stay.
    pub kept_previous: bool,
}

#[derive(Debug, Default)]
pub struct Fitted {
    pub state: MapState,
    pub left_out: Vec<LeftOut>,
    /// Something was left out while stale entries still take room: a
    /// sync after this one's deletions may fit it.
    pub retry: bool,
}

/// Every entry of one frontend (one revNAT id).
#[derive(Debug, Default)]
struct Piece {
    services: BTreeMap<ServiceKey, ServiceValue>,
    backends: BTreeMap<u32, BackendValue>,
    rev_nat: Option<RevNatValue>,
    name: Option<String>,
    ranges: BTreeSet<SourceRangeEntry>,
}

impl Piece {
    /// `address:port/protocol` of the frontend.
    fn frontend(&self) -> String {
        let proto = self
            .services
            .keys()
            .next()
            .and_then(|k| Protocol::from_number(k.proto))
            .map_or_else(|| "?".to_string(), |p| p.to_string());
        match &self.rev_nat {
            Some(rn) => format!("{}:{}/{proto}", rn.ip(), rn.port()),
            None => format!("?/{proto}"),
        }
    }
}

/// `state` split per frontend.
fn pieces(state: &MapState) -> BTreeMap<u32, Piece> {
    let mut out: BTreeMap<u32, Piece> = BTreeMap::new();
    for (k, v) in &state.services {
        let piece = out.entry(u32::from(v.rev_nat_id)).or_default();
        piece.services.insert(*k, *v);
        if k.slot > 0 {
            if let Some(be) = state.backends.get(&v.backend_id) {
                piece.backends.insert(v.backend_id, *be);
            }
        }
    }
    for (id, v) in &state.rev_nat {
        out.entry(*id).or_default().rev_nat = Some(*v);
    }
    for (id, n) in &state.names {
        out.entry(*id).or_default().name = Some(n.clone());
    }
    for r in &state.source_ranges {
        out.entry(r.rev_nat_id).or_default().ranges.insert(*r);
    }
    out
}

/// The keys every map holds at the fullest moment so far.
struct Usage {
    services: BTreeSet<ServiceKey>,
    backends: BTreeSet<u32>,
    rev_nat: BTreeSet<u32>,
    names: BTreeSet<u32>,
    ranges: BTreeSet<SourceRangeEntry>,
}

impl Usage {
    fn of(actual: &MapState) -> Self {
        Self {
            services: actual.services.keys().copied().collect(),
            backends: actual.backends.keys().copied().collect(),
            rev_nat: actual.rev_nat.keys().copied().collect(),
            names: actual.names.keys().copied().collect(),
            ranges: actual.source_ranges.clone(),
        }
    }

    /// The first map `piece` (as frontend `id`) would overflow, if any.
    fn overflow(&self, id: u32, piece: &Piece, cap: &MapSizes) -> Option<&'static str> {
        let grows = |have: usize, new: usize, max: u32| have + new > max as usize;
        let new_services = piece
            .services
            .keys()
            .filter(|k| !self.services.contains(k))
            .count();
        let new_backends = piece
            .backends
            .keys()
            .filter(|k| !self.backends.contains(k))
            .count();
        let new_id =
            |set: &BTreeSet<u32>, present: bool| usize::from(present && !set.contains(&id));
        let new_ranges = piece.ranges.difference(&self.ranges).count();
        [
            (
                names::SERVICES,
                self.services.len(),
                new_services,
                cap.services,
            ),
            (
                names::BACKENDS,
                self.backends.len(),
                new_backends,
                cap.backends,
            ),
            (
                names::REV_NAT,
                self.rev_nat.len(),
                new_id(&self.rev_nat, piece.rev_nat.is_some()),
                cap.rev_nat,
            ),
            (
                names::SERVICE_NAMES,
                self.names.len(),
                new_id(&self.names, piece.name.is_some()),
                cap.rev_nat,
            ),
            (
                names::SOURCE_RANGES,
                self.ranges.len(),
                new_ranges,
                cap.source_ranges,
            ),
        ]
        .into_iter()
        .find(|(_, have, new, max)| *new > 0 && grows(*have, *new, *max))
        .map(|(map, ..)| map)
    }

    fn add(&mut self, id: u32, piece: &Piece) {
        self.services.extend(piece.services.keys());
        self.backends.extend(piece.backends.keys());
        if piece.rev_nat.is_some() {
            self.rev_nat.insert(id);
        }
        if piece.name.is_some() {
            self.names.insert(id);
        }
        self.ranges.extend(piece.ranges.iter().copied());
    }
}

fn put(state: &mut MapState, id: u32, piece: Piece) {
    state.services.extend(piece.services);
    state.backends.extend(piece.backends);
    if let Some(rn) = piece.rev_nat {
        state.rev_nat.insert(id, rn);
    }
    if let Some(n) = piece.name {
        state.names.insert(id, n);
    }
    state.source_ranges.extend(piece.ranges);
}

/// The part of `desired` that fits maps of `cap` entries, given that they
/// hold `actual` now. Frontends the maps already hold come first (a new
/// Service never pushes out a served one), then new ones by id (ids grow
/// with age). An existing frontend whose new shape does not fit keeps its
/// previous entries.
pub fn fit(desired: MapState, actual: &MapState, cap: &MapSizes) -> Fitted {
    // The common case, checked without building anything: room for all.
    if fits_whole(&desired, actual, cap) {
        return Fitted {
            state: desired,
            ..Fitted::default()
        };
    }
    let mut usage = Usage::of(actual);
    let mut before = pieces(actual);
    let wanted = pieces(&desired);
    let (existing, new): (Vec<_>, Vec<_>) = wanted
        .into_iter()
        .partition(|(id, _)| before.contains_key(id));
    let mut out = Fitted::default();
    for (id, piece) in existing.into_iter().chain(new) {
        let Some(map) = usage.overflow(id, &piece, cap) else {
            usage.add(id, &piece);
            put(&mut out.state, id, piece);
            continue;
        };
        let previous = before.remove(&id);
        out.left_out.push(LeftOut {
            rev_nat_id: id,
            name: piece.name.clone().unwrap_or_default(),
            frontend: piece.frontend(),
            map,
            kept_previous: previous.is_some(),
        });
        // Already counted in `usage`: the maps hold it.
        if let Some(previous) = previous {
            put(&mut out.state, id, previous);
        }
    }
    out.retry = !out.left_out.is_empty() && has_stale(actual, &out.state);
    out
}

/// Whether old and new entries together fit every map.
fn fits_whole(desired: &MapState, actual: &MapState, cap: &MapSizes) -> bool {
    fn union<K: Ord, V>(want: &BTreeMap<K, V>, have: &BTreeMap<K, V>) -> usize {
        have.len() + want.keys().filter(|k| !have.contains_key(k)).count()
    }
    let ranges = actual.source_ranges.len()
        + desired
            .source_ranges
            .difference(&actual.source_ranges)
            .count();
    union(&desired.services, &actual.services) <= cap.services as usize
        && union(&desired.backends, &actual.backends) <= cap.backends as usize
        && union(&desired.rev_nat, &actual.rev_nat) <= cap.rev_nat as usize
        && union(&desired.names, &actual.names) <= cap.rev_nat as usize
        && ranges <= cap.source_ranges as usize
}

/// Whether `actual` holds entries that `next` drops (deletions that free
/// room).
fn has_stale(actual: &MapState, next: &MapState) -> bool {
    actual
        .services
        .keys()
        .any(|k| !next.services.contains_key(k))
        || actual
            .backends
            .keys()
            .any(|k| !next.backends.contains_key(k))
        || actual.rev_nat.keys().any(|k| !next.rev_nat.contains_key(k))
        || actual.names.keys().any(|k| !next.names.contains_key(k))
        || !actual.source_ranges.is_subset(&next.source_ranges)
}
