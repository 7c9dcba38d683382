//! The writes of an incremental sync: the entries some frontends held and
//! will hold, as two small map states. `plan(new, old)` over them gives
//! the same writes a plan over the whole maps would, because every entry
//! but a backend belongs to exactly one frontend, and a backend is kept
//! while any frontend still uses it ([`BackendUsers`]).
use std::collections::BTreeMap;

use proxy_common::BackendValue;

use super::{
    render::{BackendUsers, Piece},
    MapState,
};
use crate::maps::sizes::MapSizes;

#[derive(Debug, Default)]
pub struct Delta {
    /// What the changed frontends hold now (backends with their current
    /// values).
    pub old: MapState,
    /// What they will hold, with every backend they held or will hold
    /// that some frontend still uses.
    pub new: MapState,
    /// Backends no frontend uses any more.
    pub unused_backends: Vec<(u32, BackendValue)>,
}

/// Replaces the pieces `old` by `new` in `users` and says which entries
/// change, given that the maps hold `written`.
pub fn delta(written: &MapState, users: &mut BackendUsers, old: &[Piece], new: &[Piece]) -> Delta {
    let mut d = Delta::default();
    // The value each touched backend has without the local flag.
    let mut bases: BTreeMap<u32, BackendValue> = BTreeMap::new();
    for piece in old {
        piece.put_entries(&mut d.old);
        piece.release(users);
        for slot in piece.slots() {
            bases.insert(slot.backend_id, slot.base);
        }
    }
    for piece in new {
        piece.put_entries(&mut d.new);
        for slot in piece.slots() {
            bases.insert(slot.backend_id, slot.base);
        }
        // Counted after the old pieces are out, so the values below see
        // the users of after the change.
        let mut scratch = MapState::default();
        piece.put(&mut scratch, users);
    }
    for (id, base) in bases {
        // Every touched backend the maps hold, so that an unchanged one
        // is not written again and an unused one is deleted.
        if let Some(v) = written.backends.get(&id) {
            d.old.backends.insert(id, *v);
        }
        match users.value(id, base) {
            Some(v) => {
                d.new.backends.insert(id, v);
            }
            None => d.unused_backends.push((id, base)),
        }
    }
    d
}

impl Delta {
    /// The first map that would overflow `cap` while old and new entries
    /// live side by side (the writes make before they break).
    pub fn overflow(&self, written: &MapState, cap: &MapSizes) -> Option<&'static str> {
        use proxy_common::maps as names;
        fn added<K: Ord, V>(new: &BTreeMap<K, V>, have: &BTreeMap<K, V>) -> usize {
            new.keys().filter(|k| !have.contains_key(k)).count()
        }
        let ranges = self
            .new
            .source_ranges
            .difference(&written.source_ranges)
            .count();
        [
            (
                names::SERVICES,
                written.services.len() + added(&self.new.services, &written.services),
                cap.services,
            ),
            (
                names::BACKENDS,
                written.backends.len() + added(&self.new.backends, &written.backends),
                cap.backends,
            ),
            (
                names::REV_NAT,
                written.rev_nat.len() + added(&self.new.rev_nat, &written.rev_nat),
                cap.rev_nat,
            ),
            (
                names::SERVICE_NAMES,
                written.names.len() + added(&self.new.names, &written.names),
                cap.rev_nat,
            ),
            (
                names::SOURCE_RANGES,
                written.source_ranges.len() + ranges,
                cap.source_ranges,
            ),
        ]
        .into_iter()
        .find(|(_, n, max)| *n > *max as usize)
        .map(|(map, ..)| map)
    }

    /// Makes `written` what the maps hold once the delta's writes are done.
    pub fn commit(&self, written: &mut MapState) {
        for k in self.old.services.keys() {
            written.services.remove(k);
        }
        for k in self.old.backends.keys() {
            written.backends.remove(k);
        }
        for k in self.old.rev_nat.keys() {
            written.rev_nat.remove(k);
        }
        for k in self.old.names.keys() {
            written.names.remove(k);
        }
        for r in &self.old.source_ranges {
            written.source_ranges.remove(r);
        }
        let new = self.new.clone();
        written.services.extend(new.services);
        written.backends.extend(new.backends);
        written.rev_nat.extend(new.rev_nat);
        written.names.extend(new.names);
        written.source_ranges.extend(new.source_ranges);
    }
}
