//! Which Services changed between two snapshots.
//!
//! Sources hand out shared objects (`Arc`s): the API-server source its
//! reflector's cached objects, which keep their allocation until the object
//! changes. So an object whose pointer was in the last snapshot is the same
//! object, and finding what changed costs one pointer lookup per object,
//! not a comparison. An EndpointSlice's change is its Service's change.
//!
//! Cheaper still: a cache replaces a changed object in place, so from one
//! snapshot to the next the lists keep their order and only the changed
//! positions differ. When the lengths agree, comparing the lists position
//! by position finds the changes without a single lookup; anything else
//! (objects added or deleted) takes a lookup per object.
use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use crate::model::{ServiceObject, ServiceRef, SliceObject};

use super::Snapshot;

/// What changed since the last snapshot.
#[derive(Debug, PartialEq, Eq)]
pub enum Changes {
    /// These Services, or their slices.
    Services(BTreeSet<ServiceRef>),
    /// Something no one Service owns (an unnamed object, a slice without
    /// its Service label, two objects with one name): only a full rebuild
    /// says what it means.
    Everything,
}

/// One object of the last snapshot.
#[derive(Debug)]
struct Seen<K> {
    obj: Arc<K>,
    owner: Option<ServiceRef>,
    /// The update that last saw it.
    epoch: u64,
}

/// The objects of the last snapshot, by pointer and by Service.
#[derive(Debug, Default)]
pub struct Objects {
    epoch: u64,
    services: HashMap<usize, Seen<ServiceObject>>,
    slices: HashMap<usize, Seen<SliceObject>>,
    by_service: HashMap<ServiceRef, Arc<ServiceObject>>,
    slices_of: HashMap<ServiceRef, Vec<Arc<SliceObject>>>,
    /// The pointers of the last snapshot's lists, in their order.
    order: (Vec<usize>, Vec<usize>),
}

fn ptr<K>(obj: &Arc<K>) -> usize {
    Arc::as_ptr(obj) as usize
}

/// Marks `obj` seen by the update `epoch`. An object seen before: None.
/// A new one is recorded with its owner (`owner_of`), which is returned.
fn mark<K>(
    seen: &mut HashMap<usize, Seen<K>>,
    epoch: u64,
    obj: &Arc<K>,
    owner_of: impl FnOnce(&K) -> Option<ServiceRef>,
) -> Option<Option<ServiceRef>> {
    if let Some(s) = seen.get_mut(&ptr(obj)) {
        s.epoch = epoch;
        return None;
    }
    let owner = owner_of(obj);
    let s = Seen {
        obj: obj.clone(),
        owner: owner.clone(),
        epoch,
    };
    seen.insert(ptr(obj), s);
    Some(owner)
}

/// The pointers of the objects the update `epoch` did not see.
fn stale<K>(seen: &HashMap<usize, Seen<K>>, epoch: u64) -> Vec<usize> {
    seen.iter()
        .filter(|(_, s)| s.epoch != epoch)
        .map(|(p, _)| *p)
        .collect()
}

/// The positions where `now` holds another object than `before` did.
fn moved_positions<K>(before: &[usize], now: &[Arc<K>]) -> Vec<usize> {
    before
        .iter()
        .zip(now)
        .enumerate()
        .filter(|(_, (b, n))| **b != ptr(n))
        .map(|(i, _)| i)
        .collect()
}

impl Objects {
    /// Takes in `snap` and says what changed since the last one.
    pub fn update(&mut self, snap: &Snapshot) -> Changes {
        let same_shape = snap.services.len() == self.order.0.len()
            && snap.slices.len() == self.order.1.len()
            && !self.services.is_empty();
        if same_shape {
            return self.update_in_place(snap);
        }
        let changes = self.update_by_lookup(snap);
        self.order = (
            snap.services.iter().map(ptr).collect(),
            snap.slices.iter().map(ptr).collect(),
        );
        changes
    }

    /// [`Self::update`] when both lists kept their lengths: the positions
    /// whose pointer differs hold the changes. The objects they held go
    /// first, so an object that only moved is taken out and put back.
    /// Nothing here allocates in proportion to the cluster (a large
    /// allocation right after a full sync's frees makes the allocator
    /// consolidate its whole heap).
    fn update_in_place(&mut self, snap: &Snapshot) -> Changes {
        let services = moved_positions(&self.order.0, &snap.services);
        let slices = moved_positions(&self.order.1, &snap.slices);
        let mut dirty = BTreeSet::new();
        for i in &services {
            self.forget_service(self.order.0[*i], &mut dirty);
        }
        for i in &slices {
            self.forget_slice(self.order.1[*i], &mut dirty);
        }
        let mut unowned = false;
        for i in services {
            self.order.0[i] = ptr(&snap.services[i]);
            let owner = self.see_service(&snap.services[i]).flatten();
            unowned |= owner.is_none();
            dirty.extend(owner);
        }
        for i in slices {
            self.order.1[i] = ptr(&snap.slices[i]);
            let owner = self.see_slice(&snap.slices[i]).flatten();
            unowned |= owner.is_none();
            dirty.extend(owner);
        }
        self.verdict(unowned, dirty)
    }

    fn verdict(&self, unowned: bool, dirty: BTreeSet<ServiceRef>) -> Changes {
        // Two objects of one name: which one counts is the full build's
        // business.
        if unowned || self.by_service.len() != self.services.len() {
            return Changes::Everything;
        }
        Changes::Services(dirty)
    }

    /// [`Self::update`] by one lookup per object.
    fn update_by_lookup(&mut self, snap: &Snapshot) -> Changes {
        // The first snapshot changes everything: no need to list it.
        let first = self.epoch == 0;
        self.epoch += 1;
        let mut dirty = BTreeSet::new();
        let mut unowned = false;
        let mut note = |owner: Option<ServiceRef>| {
            unowned |= owner.is_none();
            if !first {
                dirty.extend(owner);
            }
        };
        for svc in &snap.services {
            if let Some(owner) = self.see_service(svc) {
                note(owner);
            }
        }
        for slice in &snap.slices {
            if let Some(owner) = self.see_slice(slice) {
                note(owner);
            }
        }
        if first {
            return Changes::Everything;
        }
        self.sweep(&mut dirty);
        self.verdict(unowned, dirty)
    }

    /// Marks `svc` seen; for a new object, its owner (None: unnamed).
    fn see_service(&mut self, svc: &Arc<ServiceObject>) -> Option<Option<ServiceRef>> {
        let owner = mark(&mut self.services, self.epoch, svc, |s| s.key().cloned())?;
        if let Some(key) = &owner {
            self.by_service.insert(key.clone(), svc.clone());
        }
        Some(owner)
    }

    /// Marks `slice` seen; for a new object, its Service (None: unowned).
    fn see_slice(&mut self, slice: &Arc<SliceObject>) -> Option<Option<ServiceRef>> {
        let owner = mark(&mut self.slices, self.epoch, slice, SliceObject::service)?;
        if let Some(key) = &owner {
            self.slices_of
                .entry(key.clone())
                .or_default()
                .push(slice.clone());
        }
        Some(owner)
    }

    /// Drops the objects this update did not see; their Services changed.
    fn sweep(&mut self, dirty: &mut BTreeSet<ServiceRef>) {
        for p in stale(&self.services, self.epoch) {
            self.forget_service(p, dirty);
        }
        for p in stale(&self.slices, self.epoch) {
            self.forget_slice(p, dirty);
        }
    }

    /// Drops the Service object at `p`; its Service changed.
    fn forget_service(&mut self, p: usize, dirty: &mut BTreeSet<ServiceRef>) {
        let Some(seen) = self.services.remove(&p) else {
            return;
        };
        if let Some(key) = seen.owner {
            // A replaced object left its successor in place.
            if self
                .by_service
                .get(&key)
                .is_some_and(|s| Arc::ptr_eq(s, &seen.obj))
            {
                self.by_service.remove(&key);
            }
            dirty.insert(key);
        }
    }

    /// Drops the slice object at `p`; its Service changed.
    fn forget_slice(&mut self, p: usize, dirty: &mut BTreeSet<ServiceRef>) {
        let Some(seen) = self.slices.remove(&p) else {
            return;
        };
        if let Some(key) = seen.owner {
            if let Some(list) = self.slices_of.get_mut(&key) {
                list.retain(|s| !Arc::ptr_eq(s, &seen.obj));
                if list.is_empty() {
                    self.slices_of.remove(&key);
                }
            }
            dirty.insert(key);
        }
    }

    /// The Service `key` as the last snapshot had it.
    pub fn service(&self, key: &ServiceRef) -> Option<&Arc<ServiceObject>> {
        self.by_service.get(key)
    }

    /// The slices that name `key` as their Service.
    pub fn slices_of(&self, key: &ServiceRef) -> Vec<&SliceObject> {
        self.slices_of
            .get(key)
            .map(|l| l.iter().map(|s| s.as_ref()).collect())
            .unwrap_or_default()
    }

    /// How many Services the last snapshot had.
    pub fn service_count(&self) -> usize {
        self.by_service.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{
        api::{core::v1::Service, discovery::v1::EndpointSlice},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    fn svc(name: &str) -> Arc<ServiceObject> {
        Arc::new(ServiceObject::new(&Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            ..Default::default()
        }))
    }

    fn slice(name: &str, service: Option<&str>) -> Arc<SliceObject> {
        Arc::new(SliceObject::new(&EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: service
                    .map(|s| [("kubernetes.io/service-name".to_string(), s.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Vec::new(),
            ports: None,
        }))
    }

    fn keys(names: &[&str]) -> Changes {
        Changes::Services(names.iter().map(|n| ("ns".into(), (*n).into())).collect())
    }

    #[test]
    fn only_new_replaced_and_gone_objects_count_as_changes() {
        let (a, b, sa) = (svc("a"), svc("b"), slice("a-1", Some("a")));
        let mut objects = Objects::default();
        let mut snap = Snapshot {
            services: vec![a.clone(), b.clone()],
            slices: vec![sa.clone()],
            ..Snapshot::default()
        };
        assert_eq!(objects.update(&snap), Changes::Everything, "the first");
        assert_eq!(objects.update(&snap), keys(&[]), "same objects");
        // b replaced by a new version, a's slice gone.
        snap.services = vec![a.clone(), svc("b")];
        snap.slices.clear();
        assert_eq!(objects.update(&snap), keys(&["a", "b"]));
        assert!(objects.slices_of(&("ns".into(), "a".into())).is_empty());
        assert!(objects.service(&("ns".into(), "b".into())).is_some());
        snap.services = vec![a];
        assert_eq!(objects.update(&snap), keys(&["b"]), "b deleted");
        assert!(objects.service(&("ns".into(), "b".into())).is_none());
        assert_eq!(objects.service_count(), 1);
    }

    #[test]
    fn lists_of_the_same_length_are_compared_in_place_even_when_reordered() {
        let (a, b, c) = (svc("a"), svc("b"), svc("c"));
        let mut objects = Objects::default();
        let mut snap = Snapshot {
            services: vec![a.clone(), b.clone(), c.clone()],
            ..Snapshot::default()
        };
        objects.update(&snap);
        // a and c swap places, b is replaced: only b changed, but the moved
        // ones are taken out and put back (counted as changed, harmlessly).
        snap.services = vec![c.clone(), svc("b"), a.clone()];
        assert_eq!(objects.update(&snap), keys(&["a", "b", "c"]));
        assert_eq!(objects.service_count(), 3);
        snap.services = vec![c, svc("b2"), a];
        assert_eq!(
            objects.update(&snap),
            keys(&["b", "b2"]),
            "b replaced by b2"
        );
        assert!(objects.service(&("ns".into(), "b".into())).is_none());
        assert_eq!(objects.update(&snap), keys(&[]));
    }

    #[test]
    fn unowned_objects_and_duplicate_names_ask_for_everything() {
        let mut objects = Objects::default();
        let a = svc("a");
        let mut snap = Snapshot {
            services: vec![a.clone()],
            ..Snapshot::default()
        };
        objects.update(&snap);
        snap.slices = vec![slice("x", None)];
        assert_eq!(objects.update(&snap), Changes::Everything);
        snap.slices.clear();
        assert_eq!(objects.update(&snap), keys(&[]), "the unowned slice left");
        let snap = Snapshot {
            services: vec![svc("a"), svc("a")],
            ..Snapshot::default()
        };
        assert_eq!(objects.update(&snap), Changes::Everything);
    }
}
