//! Stable numeric ids for backends and frontends (revNAT ids).
//!
//! Ids must survive agent restarts (they are restored from the maps) and a
//! freed id must not be handed out again in the same sync: a slot still
//! naming the old backend would briefly lead to the new one. A cursor that
//! only moves forward, wrapping around, gives both.
use std::collections::{BTreeMap, BTreeSet};

use proxy_common::BackendValue;

use crate::model::{Endpoint, Frontend, Protocol};

use super::MapState;

/// A backend is one address+port+protocol, shared by every frontend using it.
pub type BackendIdent = (Endpoint, Protocol);

/// The identity of the backend a map value describes.
pub fn backend_ident(be: &BackendValue) -> Option<BackendIdent> {
    let protocol = Protocol::from_number(be.proto)?;
    let ep = Endpoint {
        ip: be.ip().into(),
        port: be.port(),
    };
    Some((ep, protocol))
}

#[derive(Clone, Debug)]
pub struct Ids {
    backends: IdSpace<BackendIdent>,
    frontends: IdSpace<Frontend>,
}

impl Default for Ids {
    fn default() -> Self {
        Self::restore(&MapState::default())
    }
}

impl Ids {
    /// Ids as the maps hold them (after a restart, the pinned maps).
    pub fn restore(state: &MapState) -> Self {
        let mut ids = Ids {
            backends: IdSpace::new(u32::MAX),
            frontends: IdSpace::new(u16::MAX as u32),
        };
        for (id, be) in &state.backends {
            if let Some(ident) = backend_ident(be) {
                ids.backends.insert(ident, *id);
            }
        }
        for (key, value) in state.masters() {
            if let Some(protocol) = Protocol::from_number(key.proto) {
                let fe = Frontend {
                    ip: key.ip().into(),
                    port: key.port(),
                    protocol,
                };
                ids.frontends.insert(fe, value.rev_nat_id as u32);
            }
        }
        ids
    }

    pub fn backend(&mut self, ident: BackendIdent) -> Option<u32> {
        self.backends.get_or_alloc(ident)
    }

    pub fn frontend(&mut self, fe: Frontend) -> Option<u16> {
        self.frontends.get_or_alloc(fe).map(|id| id as u16)
    }

    /// Forgets ids not in use, so they can be reused once the cursor wraps.
    pub fn retain(
        &mut self,
        backend_used: impl Fn(u32) -> bool,
        frontend_used: impl Fn(&Frontend) -> bool,
    ) {
        self.backends.retain(|_, id| backend_used(id));
        self.frontends.retain(|fe, _| frontend_used(fe));
    }

    /// Forgets the id of a frontend no longer programmed.
    pub fn forget_frontend(&mut self, fe: &Frontend) {
        self.frontends.forget(fe);
    }

    /// Forgets the id of a backend no frontend uses.
    pub fn forget_backend(&mut self, ident: &BackendIdent) {
        self.backends.forget(ident);
    }
}

#[derive(Clone, Debug)]
struct IdSpace<K: Ord> {
    by_key: BTreeMap<K, u32>,
    used: BTreeSet<u32>,
    /// Last id handed out; the next search starts after it.
    cursor: u32,
    max: u32,
}

impl<K: Ord + Clone> IdSpace<K> {
    fn new(max: u32) -> Self {
        Self {
            by_key: BTreeMap::new(),
            used: BTreeSet::new(),
            cursor: 0,
            max,
        }
    }

    fn insert(&mut self, key: K, id: u32) {
        if id == 0 || id > self.max || self.used.contains(&id) {
            return; // 0 is never handed out; a duplicate id is re-allocated.
        }
        self.used.insert(id);
        self.by_key.insert(key, id);
        self.cursor = self.cursor.max(id);
    }

    fn get_or_alloc(&mut self, key: K) -> Option<u32> {
        if let Some(id) = self.by_key.get(&key) {
            return Some(*id);
        }
        if self.used.len() as u64 >= self.max as u64 {
            return None;
        }
        // Next free id after the cursor, wrapping to 1. Terminates because
        // fewer than `max` ids are used.
        let mut id = self.cursor;
        loop {
            id = if id >= self.max { 1 } else { id + 1 };
            if !self.used.contains(&id) {
                break;
            }
        }
        self.cursor = id;
        self.used.insert(id);
        self.by_key.insert(key, id);
        Some(id)
    }

    fn forget(&mut self, key: &K) {
        if let Some(id) = self.by_key.remove(key) {
            self.used.remove(&id);
        }
    }

    fn retain(&mut self, keep: impl Fn(&K, u32) -> bool) {
        let used = &mut self.used;
        self.by_key.retain(|k, id| {
            let kept = keep(k, *id);
            if !kept {
                used.remove(id);
            }
            kept
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_ids_are_not_reused_before_the_cursor_wraps() {
        let mut s: IdSpace<&str> = IdSpace::new(3);
        assert_eq!(s.get_or_alloc("a"), Some(1));
        assert_eq!(s.get_or_alloc("b"), Some(2));
        s.retain(|k, _| *k != "a");
        assert_eq!(s.get_or_alloc("c"), Some(3));
        assert_eq!(s.get_or_alloc("d"), Some(1), "wraps to the freed id");
        assert_eq!(s.get_or_alloc("e"), None, "all ids in use");
        assert_eq!(s.get_or_alloc("b"), Some(2), "existing keys keep their id");
    }
}
