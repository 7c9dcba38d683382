//! Carries out a plan through [`LbMaps`], keeping the invariant even when
//! writes fail (a full map, a kernel error): a failure only holds back what
//! depends on it, so other Services still get their updates.
use std::collections::BTreeSet;

use proxy_common::ServiceKey;

use super::Op;
use crate::maps::{LbMaps, MapsError};

#[derive(Debug, Default)]
pub struct ApplyReport {
    pub applied: usize,
    /// Ops held back because something they depend on failed.
    pub held_back: usize,
    pub failed: Vec<(Op, MapsError)>,
}

impl ApplyReport {
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.held_back == 0
    }
}

/// Applies `ops` in order. Dependency rules on failure:
/// - a backend that failed to be written: slots naming it are held back;
/// - a slot held back or failed: its frontend's master update and its
///   stale-slot deletions are held back (the old master stays consistent
///   with the old slots);
/// - a master deletion that failed: its slots stay;
/// - any failure: orphan deletions (backends, revNAT, names, source
///   ranges) wait for the next sync, since an old entry may still name
///   them. (A source range that failed to be written leaves its frontend
///   closed to that range: it fails closed, and the next sync retries.)
pub fn apply(ops: &[Op], maps: &mut dyn LbMaps) -> ApplyReport {
    let mut report = ApplyReport::default();
    let mut failed_backends = BTreeSet::new();
    let mut failed_frontends: BTreeSet<ServiceKey> = BTreeSet::new();
    for op in ops {
        let hold = match op {
            Op::UpsertService(k, v) if k.slot > 0 => {
                let hold = failed_backends.contains(&v.backend_id);
                if hold {
                    failed_frontends.insert(master_of(k));
                }
                hold
            }
            Op::UpsertService(k, _) | Op::DeleteService(k) => {
                failed_frontends.contains(&master_of(k))
            }
            Op::DeleteBackend(_)
            | Op::DeleteRevNat(_)
            | Op::DeleteName(_)
            | Op::DeleteSourceRange(_) => !report.failed.is_empty() || report.held_back > 0,
            Op::UpsertBackend(..)
            | Op::UpsertRevNat(..)
            | Op::UpsertName(..)
            | Op::UpsertSourceRange(_) => false,
        };
        if hold {
            report.held_back += 1;
            continue;
        }
        match maps.apply(op) {
            Ok(()) => report.applied += 1,
            Err(e) => {
                match op {
                    Op::UpsertBackend(id, _) => {
                        failed_backends.insert(*id);
                    }
                    Op::UpsertService(k, _) | Op::DeleteService(k) => {
                        failed_frontends.insert(master_of(k));
                    }
                    _ => {}
                }
                report.failed.push((op.clone(), e));
            }
        }
    }
    report
}

fn master_of(k: &ServiceKey) -> ServiceKey {
    ServiceKey { slot: 0, ..*k }
}
