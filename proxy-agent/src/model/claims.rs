//! The desired state assembled from per-Service parts: every Service's
//! [`ServiceBuild`] and, per frontend, the Services that claim it. A change
//! to one Service replaces that Service's build alone
//! ([`Model::replace`]) and names the frontends whose owner may have
//! changed, so the sync after it costs what the Service costs, not what
//! the cluster costs.
//!
//! Conflicts resolve as kube-proxy orders Services, by namespace/name:
//! the first ClusterIP claim of an address wins (a tenant's externalIP must
//! not capture someone else's ClusterIP, the CVE-2020-8554 shape), else the
//! first claim.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use super::{
    build::{build_service, BuildOutput, HealthCheck, ServiceBuild},
    objects::{ServiceObject, SliceObject},
    skip::{skip, SkipReason},
    slices::UsableSlice,
    Frontend, FrontendKind, FrontendState, ModelConfig, Skip,
};

/// `(namespace, name)` of a Service (a missing namespace is `default`).
/// Shared strings: the key is copied into every index and claim, and a
/// copy costs two counter increments instead of two allocations.
pub type ServiceRef = (Arc<str>, Arc<str>);

/// One claim on a frontend: the Service and the index of the frontend in
/// its claims (a Service may claim one address twice).
type Claim = (ServiceRef, usize);

/// The claims on one frontend, sorted (claim order). Almost every frontend
/// has exactly one: a sorted Vec holds it in one small allocation where a
/// BTreeSet would take a whole node (eleven slots); at 10k Services that
/// was a fifth of the agent's heap.
#[derive(Clone, Debug, Default)]
struct Claims(Vec<Claim>);

impl Claims {
    fn insert(&mut self, claim: Claim) {
        if let Err(at) = self.0.binary_search(&claim) {
            // Room for exactly the one claim a frontend usually has (a
            // push would reserve four).
            self.0.reserve_exact(1);
            self.0.insert(at, claim);
        }
    }

    fn remove(&mut self, claim: &Claim) {
        if let Ok(at) = self.0.binary_search(claim) {
            self.0.remove(at);
        }
    }

    fn iter(&self) -> std::slice::Iter<'_, Claim> {
        self.0.iter()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Clone, Debug, Default)]
pub struct Model {
    /// Hashed: looked up once per frontend on every full sync, and nothing
    /// depends on its order.
    builds: HashMap<ServiceRef, ServiceBuild>,
    /// Frontend → its claims in claim order.
    claims: BTreeMap<Frontend, Claims>,
    /// Skips of objects no Service owns: unnamed objects, slices without a
    /// Service label, a second object of the same namespace/name.
    orphan_skips: Vec<Skip>,
    /// The Services with a healthCheckNodePort.
    health: BTreeSet<ServiceRef>,
    /// Sums of the builds' `no_local_endpoints_{internal,external}`.
    no_local: [usize; 2],
}

/// What `svc` (named `key`) asks for given its own slices: the slices'
/// own skips go with the Service.
pub fn build_one(
    key: &ServiceRef,
    svc: &ServiceObject,
    slices: &[&SliceObject],
    config: &ModelConfig,
) -> ServiceBuild {
    let own: Vec<&UsableSlice> = slices.iter().filter_map(|s| s.usable()).collect();
    let mut build = build_service(key, svc, &own, config);
    for slice in slices {
        build.skips.extend_from_slice(slice.skips());
    }
    build
}

impl Model {
    /// Every Service of the snapshot built. Services are taken by
    /// namespace/name; a second object with the same one is skipped.
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a ServiceObject>,
        slices: impl IntoIterator<Item = &'a SliceObject>,
        config: &ModelConfig,
    ) -> Self {
        let mut model = Model::default();
        let mut by_service: HashMap<ServiceRef, Vec<&SliceObject>> = HashMap::new();
        for slice in slices {
            match slice.service() {
                Some(owner) => by_service.entry(owner).or_default().push(slice),
                // Only their skips: they cannot be any Service's.
                None => model.orphan_skips.extend_from_slice(slice.skips()),
            }
        }
        for svc in services {
            let Some(key) = svc.key() else {
                model
                    .orphan_skips
                    .push(skip("Service", "<unnamed>", SkipReason::MissingName, ""));
                continue;
            };
            if model.builds.contains_key(key) {
                let obj = format!("{}/{}", key.0, key.1);
                let why = "a second Service object with this namespace/name";
                model
                    .orphan_skips
                    .push(skip("Service", &obj, SkipReason::DuplicateObject, why));
                continue;
            }
            let own = by_service.get(key).map(Vec::as_slice).unwrap_or_default();
            let build = build_one(key, svc, own, config);
            model.add(key, build);
        }
        model
    }

    /// Puts `build` (None: the Service is gone) in place of `key`'s;
    /// returns the previous build.
    pub fn replace(
        &mut self,
        key: &ServiceRef,
        build: Option<ServiceBuild>,
    ) -> Option<ServiceBuild> {
        let old = self.remove(key);
        if let Some(build) = build {
            self.add(key, build);
        }
        old
    }

    /// Takes `key`'s build and its claims out.
    fn remove(&mut self, key: &ServiceRef) -> Option<ServiceBuild> {
        let old = self.builds.remove(key)?;
        self.no_local[0] -= old.no_local_endpoints_internal;
        self.no_local[1] -= old.no_local_endpoints_external;
        for (i, (fe, _)) in old.claims.iter().enumerate() {
            if let Some(set) = self.claims.get_mut(fe) {
                set.remove(&(key.clone(), i));
                if set.is_empty() {
                    self.claims.remove(fe);
                }
            }
        }
        self.health.remove(key);
        Some(old)
    }

    /// Puts in `build` for `key`, which has none.
    fn add(&mut self, key: &ServiceRef, build: ServiceBuild) {
        for (i, (fe, _)) in build.claims.iter().enumerate() {
            self.claims.entry(*fe).or_default().insert((key.clone(), i));
        }
        self.no_local[0] += build.no_local_endpoints_internal;
        self.no_local[1] += build.no_local_endpoints_external;
        if !build.health_checks.is_empty() {
            self.health.insert(key.clone());
        }
        self.builds.insert(key.clone(), build);
    }

    /// Service ports with a Local traffic policy and endpoints but none on
    /// this node: (internal, external).
    pub fn no_local_endpoints(&self) -> (usize, usize) {
        (self.no_local[0], self.no_local[1])
    }

    /// Whether `key`'s build has a healthCheckNodePort.
    pub fn has_health_check(&self, key: &ServiceRef) -> bool {
        self.health.contains(key)
    }

    pub fn get(&self, key: &ServiceRef) -> Option<&ServiceBuild> {
        self.builds.get(key)
    }

    fn state_of(&self, (owner, i): &Claim) -> Option<&FrontendState> {
        self.builds.get(owner)?.claims.get(*i).map(|(_, s)| s)
    }

    /// The claim that owns `fe`: the first ClusterIP claim, else the first.
    fn winning_claim(&self, fe: &Frontend) -> Option<&Claim> {
        self.winning_of(self.claims.get(fe)?)
    }

    /// The winner among the claims `set` on one frontend.
    fn winning_of<'s>(&self, set: &'s Claims) -> Option<&'s Claim> {
        if let [only] = set.0.as_slice() {
            return Some(only);
        }
        let cluster_ip = |c: &&Claim| {
            self.state_of(c)
                .is_some_and(|s| s.kind == FrontendKind::ClusterIp)
        };
        set.iter().find(cluster_ip).or_else(|| set.iter().next())
    }

    /// What `fe` is programmed with: its owner's state.
    pub fn winner(&self, fe: &Frontend) -> Option<&FrontendState> {
        self.state_of(self.winning_claim(fe)?)
    }

    /// Every frontend with its owner's state.
    pub fn frontends(&self) -> impl Iterator<Item = (&Frontend, &FrontendState)> {
        self.claims
            .iter()
            .filter_map(|(fe, set)| Some((fe, self.state_of(self.winning_of(set)?)?)))
    }

    /// How many Services the model holds.
    pub fn len(&self) -> usize {
        self.builds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.builds.is_empty()
    }

    /// The skips of the claims on `fe` that lost it.
    pub fn duplicate_skips(&self, fe: &Frontend) -> Vec<Skip> {
        let (Some(set), Some(win)) = (self.claims.get(fe), self.winning_claim(fe)) else {
            return Vec::new();
        };
        let Some(owner) = self.state_of(win) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for claim in set.iter().filter(|c| *c != win) {
            let Some(loser) = self.state_of(claim) else {
                continue;
            };
            let pre_empted =
                owner.kind == FrontendKind::ClusterIp && loser.kind.is_external() && claim < win;
            let detail = if pre_empted {
                format!("{fe} is {}'s ClusterIP", owner.name)
            } else {
                format!("{fe} already belongs to {}", owner.name)
            };
            let obj = format!("{}/{}", claim.0 .0, claim.0 .1);
            out.push(skip(
                "Service",
                &obj,
                SkipReason::DuplicateFrontend,
                &detail,
            ));
        }
        out
    }

    /// The healthCheckNodePorts: the first Service (by namespace/name) of
    /// a port names it, with the most local endpoints any of them has.
    pub fn health_checks(&self) -> BTreeMap<u16, HealthCheck> {
        let mut out: BTreeMap<u16, HealthCheck> = BTreeMap::new();
        let builds = self.health.iter().filter_map(|k| self.builds.get(k));
        for (port, hc) in builds.flat_map(|b| &b.health_checks) {
            let e = out.entry(*port).or_insert_with(|| hc.clone());
            e.local_endpoints = e.local_endpoints.max(hc.local_endpoints);
        }
        out
    }

    /// Everything at once, the desired state included.
    pub fn output(&self) -> BuildOutput {
        let mut out = self.summary();
        out.state.frontends = self
            .frontends()
            .map(|(fe, state)| (*fe, state.clone()))
            .collect();
        out
    }

    /// Everything but the desired state (which [`Model::frontends`] lends
    /// without copying): skips, trigger times, health checks, counts.
    pub fn summary(&self) -> BuildOutput {
        let mut out = BuildOutput {
            skips: self.orphan_skips.clone(),
            health_checks: self.health_checks(),
            no_local_endpoints_internal: self.no_local[0],
            no_local_endpoints_external: self.no_local[1],
            ..BuildOutput::default()
        };
        for ((ns, name), b) in &self.builds {
            out.skips.extend(b.skips.iter().cloned());
            if let Some(t) = &b.trigger_time {
                out.trigger_times.insert(format!("{ns}/{name}"), t.clone());
            }
        }
        for (fe, set) in &self.claims {
            if set.len() > 1 {
                out.skips.extend(self.duplicate_skips(fe));
            }
        }
        out.skips.sort();
        out
    }
}
